// vdpbf16ps micro-kernels (see bf16_dot.hpp), compiled for AVX-512 BF16 through function target
// attributes so the rest of the build stays baseline x86-64; used only after a CPUID check.

#include <algorithm>
#include <array>
#include <utility>
#include <cstring>

#include "cpu/bf16_dot.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
// GCC 12 warns of uninitialised __Y inside its own AVX-512 headers when they are used from target
// attribute functions (a known false positive of _mm512_undefined_*).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#define MEMATTN_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

namespace memattn::detail {
namespace {

// Register blocking as the f32 tiles: kMR broadcast rows x kNV vectors of 16 lanes.
constexpr size_t kMR = 6, kNV = 4;

// C[i][0..16*NV) (+)= sum_e A(i, e) B(e, 0..16*NV) over `elems` bf16 products per lane, A pairs
// broadcast as 32 bits. An odd last element is broadcast alone (its pair's second half zero, never
// read), so a row of odd length is read in place without touching the element past its end.
template <size_t MR, size_t NV, bool kHalf>
MEMATTN_BF16_TARGET __attribute__((always_inline)) inline void dot_step(__m512 (&acc)[MR][NV],
                                                                        const uint16_t* a, size_t a_row,
                                                                        const uint16_t* b) {
  __m512i bv[NV];
  for (size_t j = 0; j < NV; ++j) bv[j] = _mm512_loadu_si512(b + 32 * j);
  for (size_t i = 0; i < MR; ++i) {
    int32_t pair = a[i * a_row];
    if (!kHalf) std::memcpy(&pair, a + i * a_row, 4);
    const __m512i ai = _mm512_set1_epi32(pair);
    for (size_t j = 0; j < NV; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)ai, (__m512bh)bv[j]);
  }
}

template <size_t MR, size_t NV>
MEMATTN_BF16_TARGET inline void dot_tile(const uint16_t* a, size_t a_row, size_t a_pair,
                                         const uint16_t* b, size_t b_pair, float* c, size_t ldc,
                                         size_t elems, bool accumulate) {
  __m512 acc[MR][NV];
  for (size_t i = 0; i < MR; ++i)
    for (size_t j = 0; j < NV; ++j)
      acc[i][j] = accumulate ? _mm512_loadu_ps(c + i * ldc + 16 * j) : _mm512_setzero_ps();
  const size_t pairs = elems / 2;
  for (size_t p = 0; p < pairs; ++p) dot_step<MR, NV, false>(acc, a + p * a_pair, a_row, b + p * b_pair);
  if (elems % 2 != 0) dot_step<MR, NV, true>(acc, a + pairs * a_pair, a_row, b + pairs * b_pair);
  for (size_t i = 0; i < MR; ++i)
    for (size_t j = 0; j < NV; ++j) _mm512_storeu_ps(c + i * ldc + 16 * j, acc[i][j]);
}

using TileFn = void (*)(const uint16_t*, size_t, size_t, const uint16_t*, size_t, float*, size_t,
                        size_t, bool);
template <size_t MR, size_t... J>
constexpr std::array<TileFn, kNV> tile_col(std::index_sequence<J...>) {
  return {&dot_tile<MR, J + 1>...};
}
template <size_t... I>
constexpr std::array<std::array<TileFn, kNV>, kMR> tile_table(std::index_sequence<I...>) {
  return {tile_col<I + 1>(std::make_index_sequence<kNV>())...};
}
constexpr auto kTiles = tile_table(std::make_index_sequence<kMR>());

// C[m x 16*nvec] (+)= A B; A element pairs at a + i*a_row + p*a_pair, B pairs at b + p*b_pair.
MEMATTN_BF16_TARGET void dot_gemm(const uint16_t* a, size_t a_row, size_t a_pair, const uint16_t* b,
                                  size_t b_pair, float* c, size_t ldc, size_t m, size_t nvec,
                                  size_t elems, bool accumulate) {
  for (size_t jv = 0; jv < nvec; jv += kNV) {
    const size_t nv = std::min(kNV, nvec - jv);
    size_t i = 0;
    for (; i + kMR <= m; i += kMR)
      kTiles[kMR - 1][nv - 1](a + i * a_row, a_row, a_pair, b + 32 * jv, b_pair, c + i * ldc + 16 * jv,
                              ldc, elems, accumulate);
    if (i < m)
      kTiles[m - i - 1][nv - 1](a + i * a_row, a_row, a_pair, b + 32 * jv, b_pair,
                                c + i * ldc + 16 * jv, ldc, elems, accumulate);
  }
}

MEMATTN_BF16_TARGET void scores(const uint16_t* k, size_t k_row, const uint16_t* qt_pairs, size_t ld,
                                float* st, size_t keys, size_t dim) {
  dot_gemm(k, k_row, 2, qt_pairs, 2 * ld, st, ld, keys, ld / 16, dim, false);
}

MEMATTN_BF16_TARGET void pv(const uint16_t* p_pairs, size_t ldp, const uint16_t* v_pairs, size_t ldv,
                            float* acc, size_t rows, size_t key_pairs) {
  dot_gemm(p_pairs, 2, 2 * ldp, v_pairs, 2 * ldv, acc, ldv, rows, ldv / 16, 2 * key_pairs, true);
}

MEMATTN_BF16_TARGET void pair_rows_f32(const float* src, size_t ld, size_t keys, uint16_t* dst) {
  for (size_t t = 0; t < keys; t += 2)
    for (size_t c = 0; c < ld; c += 16) {
      const __m512 r0 = _mm512_loadu_ps(src + t * ld + c);
      const __m512 r1 = t + 1 < keys ? _mm512_loadu_ps(src + (t + 1) * ld + c) : _mm512_setzero_ps();
      const __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(r0));
      const __m512i hi = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(r1));
      _mm512_storeu_si512(dst + (t / 2) * 2 * ld + 2 * c, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
    }
}

// 32 columns per step: one two-source permutation per 16 pairs puts r0[c], r1[c] side by side
// (the earlier zero-extend, shift and OR took 25% of the bf16 forward on a Zen 5, d = 128, since
// every query tile pairs its value chunk again). NaN and infinity are the magnitudes at or above
// 0x7f80, so one running unsigned maximum of the magnitudes, compared once, finds them.
MEMATTN_BF16_TARGET bool pair_two_rows(const uint16_t* r0, const uint16_t* r1, size_t n, uint16_t* dst) {
  alignas(64) static constexpr uint16_t kLow[32] = {0, 32, 1, 33, 2,  34, 3,  35, 4,  36, 5,  37, 6,  38, 7,  39,
                                                    8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  const __m512i low = _mm512_load_si512(kLow);
  const __m512i high = _mm512_add_epi16(low, _mm512_set1_epi16(16));
  const __m512i magnitude = _mm512_set1_epi16(0x7fff);
  __m512i largest = _mm512_setzero_si512();
  // Masked loads and stores take the last n % 32 columns (masked-off elements are never touched).
  for (size_t c = 0; c < n; c += 32) {
    const size_t left = n - c;
    const __mmask32 m = left >= 32 ? __mmask32(~0u) : __mmask32((1u << left) - 1);
    const __m512i a = _mm512_maskz_loadu_epi16(m, r0 + c);
    const __m512i b = r1 ? _mm512_maskz_loadu_epi16(m, r1 + c) : _mm512_setzero_si512();
    largest = _mm512_max_epu16(largest, _mm512_and_si512(a, magnitude));
    largest = _mm512_max_epu16(largest, _mm512_and_si512(b, magnitude));
    const size_t low_pairs = std::min<size_t>(left, 16), high_pairs = left > 16 ? std::min<size_t>(left - 16, 16) : 0;
    _mm512_mask_storeu_epi32(dst + 2 * c, __mmask16((1u << low_pairs) - 1), _mm512_permutex2var_epi16(a, low, b));
    if (high_pairs != 0)
      _mm512_mask_storeu_epi32(dst + 2 * c + 32, __mmask16((1u << high_pairs) - 1),
                               _mm512_permutex2var_epi16(a, high, b));
  }
  return _mm512_cmpge_epu16_mask(largest, _mm512_set1_epi16(0x7f80)) == 0;
}

const Bf16DotKernels kKernels{&scores, &pv, &pair_rows_f32, &pair_two_rows, &dot_gemm};

}  // namespace

const Bf16DotKernels* bf16_dot_kernels() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && [] {
    // CPUID.(EAX=7, ECX=1):EAX bit 5 is AVX512_BF16 (GCC 12's __builtin_cpu_supports lacks it).
    unsigned a, b, c, d;
    __asm__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(1));
    return (a >> 5) & 1u;
  }();
  return has ? &kKernels : nullptr;
}

bool bf16_dot_outpaces_fma() {
  static const bool amd = __builtin_cpu_is("amd");
  return bf16_dot_kernels() != nullptr && amd;
}

}  // namespace memattn::detail

#else
namespace memattn::detail {
const Bf16DotKernels* bf16_dot_kernels() { return nullptr; }
bool bf16_dot_outpaces_fma() { return false; }
}  // namespace memattn::detail
#endif
