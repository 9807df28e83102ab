// bf16 micro-kernels on the AVX-512 BF16 dot-product instruction (vdpbf16ps), which Highway 1.0.3
// does not expose: two bf16 products summed into each f32 lane per instruction, exact products.
#pragma once

#include <cstddef>
#include <cstdint>

namespace memattn::detail {

// "Pair" layouts put the two bf16 values one vdpbf16ps lane reduces side by side in 32 bits.
struct Bf16DotKernels {
  // st[t][q] = sum_c k[t][c] * qt_pairs[c/2][q][c%2] for t < keys, q < ld (a multiple of 16);
  // k rows are contiguous bf16 at k + t * k_row; dim is even.
  void (*scores)(const uint16_t* k, size_t k_row, const uint16_t* qt_pairs, size_t ld, float* st,
                 size_t keys, size_t dim);
  // acc[i][c] += sum_t p_pairs[t/2][i][t%2] * v_pairs[t/2][c][t%2] for i < rows, c < ldv (a
  // multiple of 16); p_pairs rows have stride ldp pairs; key_pairs = ceil(keys / 2).
  void (*pv)(const uint16_t* p_pairs, size_t ldp, const uint16_t* v_pairs, size_t ldv, float* acc,
             size_t rows, size_t key_pairs);
  // dst[t/2][c][t%2] = rows t, t+1 of src (f32 st[t][c], ld floats, rounded to bf16 nearest-even)
  // for c < ld, t < keys; a missing odd last row is zero.
  void (*pair_rows_f32)(const float* src, size_t ld, size_t keys, uint16_t* dst);
  // dst[c][0] = r0[c], dst[c][1] = r1 ? r1[c] : 0 for c < n (bf16 bits, 32-bit pairs); returns
  // false if any value is NaN or infinite.
  bool (*pair_two_rows)(const uint16_t* r0, const uint16_t* r1, size_t n, uint16_t* dst);
  // c[i][0..16*nvec) (+)= sum_e A(i, e) B(e, ..) for i < m over `elems` products: A's pair p of
  // row i is the 32 bits at a + i*a_row + p*a_pair (bf16 units), B's the 16*nvec pairs at
  // b + p*b_pair. With odd elems only the first half of A's last pair is read and the second
  // counts as 0 (B's second half there must be finite), so odd-length rows are read in place.
  void (*gemm)(const uint16_t* a, size_t a_row, size_t a_pair, const uint16_t* b, size_t b_pair,
               float* c, size_t ldc, size_t m, size_t nvec, size_t elems, bool accumulate);
};

// Value rows rows[0], rows[1] of n bf16 values at element stride `stride` (null: a key not read,
// zero) as one row of pairs dst[c][0..2), zero-padded to `padded` columns; through
// k->pair_two_rows when the rows are contiguous and k is not null. False if a value read is NaN or
// infinite.
inline bool pair_value_rows(const Bf16DotKernels* k, const uint16_t* const rows[2], int64_t stride, size_t n,
                            size_t padded, uint16_t* dst) {
  for (size_t c = 2 * n; c < 2 * padded; ++c) dst[c] = 0;
  if (k != nullptr && stride == 1 && rows[0] != nullptr) return k->pair_two_rows(rows[0], rows[1], n, dst);
  bool finite = true;
  for (size_t c = 0; c < n; ++c)
    for (int u = 0; u < 2; ++u) {
      dst[2 * c + u] = rows[u] ? rows[u][int64_t(c) * stride] : 0;
      finite &= (dst[2 * c + u] & 0x7f80u) != 0x7f80u;
    }
  return finite;
}

// The kernels when this CPU has AVX-512 BF16, else null.
const Bf16DotKernels* bf16_dot_kernels();

// Does vdpbf16ps (2 products per f32 lane) outpace the f32 FMA on this CPU? Measured by
// `memattn bench --peak`: AMD Zen 4 runs it at 2x the f32 FMA rate (234 against 117 GFLOP/s per
// core), a Sapphire Rapids class Xeon at half (121 against 241), where the bf16 flash forward on
// it is 0.68x the f32 family's on the same bf16 inputs and the backward 0.69x the f32 products'.
// Decided from the vendor, not timed, so that the default target (and the bits it gives) is the
// same on every run: AMD's cores with AVX512_BF16 (Zen 4, Zen 5) double-pump it, Intel's issue it
// on one port.
bool bf16_dot_outpaces_fma();

}  // namespace memattn::detail
