// The flash backward's AVX-512 BF16 kernels (bf16_dot_backward.hpp), built with target attributes.
#include <algorithm>

#include "cpu/bf16_dot.hpp"
#include "cpu/bf16_dot_backward.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
// GCC 12 warns of uninitialised __Y inside its own AVX-512 headers (_mm512_undefined_*), as there.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#define MEMATTN_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

namespace memattn::detail {
namespace {

// The low min(n, 32) bits set: the lanes of a 32 x 16-bit block that hold one of n values left.
constexpr __mmask32 first_lanes(size_t n) { return n >= 32 ? ~__mmask32(0) : __mmask32((1u << n) - 1); }

// 32 bf16 values from row + c (zeros past n, and for a null row), read through a mask so that
// nothing past the row is touched.
MEMATTN_BF16_TARGET inline __m512i load_block(const uint16_t* row, size_t c, size_t n) {
  if (row == nullptr || c >= n) return _mm512_setzero_si512();
  return _mm512_maskz_loadu_epi16(first_lanes(n - c), row + c);
}

// Lanes of x (16-bit) holding NaN or infinity: all exponent bits set.
MEMATTN_BF16_TARGET inline __mmask32 not_finite(__m512i x) {
  const __m512i exponent = _mm512_set1_epi16(0x7f80);
  return _mm512_cmpeq_epi16_mask(_mm512_and_si512(x, exponent), exponent);
}

// Values 16 * half .. 16 * half + 15 of two 32-value blocks as 16 pairs {a, b}.
MEMATTN_BF16_TARGET inline __m512i interleave(__m512i a, __m512i b, int half) {
  const __m256i a16 = half ? _mm512_extracti64x4_epi64(a, 1) : _mm512_castsi512_si256(a);
  const __m256i b16 = half ? _mm512_extracti64x4_epi64(b, 1) : _mm512_castsi512_si256(b);
  return _mm512_or_si512(_mm512_cvtepu16_epi32(a16), _mm512_slli_epi32(_mm512_cvtepu16_epi32(b16), 16));
}

MEMATTN_BF16_TARGET bool pack_rows(const uint16_t* r0, const uint16_t* r1, size_t n, uint16_t* pairs,
                                   size_t pad, uint16_t* plain0, uint16_t* plain1, size_t width) {
  const size_t end = std::max(pairs ? pad : 0, plain0 || plain1 ? width : 0);
  __mmask32 bad = 0;
  for (size_t c = 0; c < end; c += 32) {
    const __m512i a = load_block(r0, c, n), b = load_block(r1, c, n);
    bad |= not_finite(a) | not_finite(b);
    if (c < width) {
      const __mmask32 out = first_lanes(width - c);
      if (plain0) _mm512_mask_storeu_epi16(plain0 + c, out, a);
      if (plain1) _mm512_mask_storeu_epi16(plain1 + c, out, b);
    }
    if (pairs == nullptr) continue;
    for (int half = 0; half < 2 && c + 16 * size_t(half) < pad; ++half)
      _mm512_storeu_si512(pairs + 2 * (c + 16 * size_t(half)), interleave(a, b, half));
  }
  return bad == 0;
}

MEMATTN_BF16_TARGET float row_dot(const uint16_t* a, const uint16_t* b, size_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (size_t c = 0; c < n; c += 32)
    acc = _mm512_dpbf16_ps(acc, (__m512bh)load_block(a, c, n), (__m512bh)load_block(b, c, n));
  return _mm512_reduce_add_ps(acc);
}

const Bf16BackwardKernels kKernels{&pack_rows, &row_dot};

}  // namespace

// The rest of the build stays baseline x86-64: these are handed out only where
// bf16_dot_kernels() passed its CPUID check.
const Bf16BackwardKernels* bf16_backward_kernels() {
  return bf16_dot_kernels() != nullptr ? &kKernels : nullptr;
}

}  // namespace memattn::detail

#else
namespace memattn::detail {
const Bf16BackwardKernels* bf16_backward_kernels() { return nullptr; }
}  // namespace memattn::detail
#endif
