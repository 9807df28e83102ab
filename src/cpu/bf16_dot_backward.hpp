// AVX-512 BF16 kernels of the flash backward's bf16 path: operand packing and D = dO . O.
#pragma once

#include <cstddef>
#include <cstdint>

namespace memattn::detail {

// The products themselves are bf16_dot.hpp's scores and pv; these put the backward's operands into
// their pair layouts and compute D on the same instruction.
struct Bf16BackwardKernels {
  // Rows r0 and r1 of a bf16 operand (contiguous bits, n values each; null: zeros), packed: as
  // 32-bit pairs {r0[c], r1[c]} into pairs[0 .. 2 * pad) when pairs is not null (pad a multiple
  // of 16, zero from n on), and as plain rows into plain0 and plain1 where not null (`width`
  // values each, zero from n on). Returns false if a value read is NaN or infinite.
  bool (*pack_rows)(const uint16_t* r0, const uint16_t* r1, size_t n, uint16_t* pairs, size_t pad,
                    uint16_t* plain0, uint16_t* plain1, size_t width);
  // sum_c a[c] * b[c] over bf16 bits a[0..n), b[0..n): exact products summed in f32, in a fixed
  // order (vdpbf16ps, which reads bf16 subnormals as zero).
  float (*row_dot)(const uint16_t* a, const uint16_t* b, size_t n);
};

// The kernels when this CPU has AVX-512 BF16 (bf16_dot_kernels() is not null), else null.
const Bf16BackwardKernels* bf16_backward_kernels();

}  // namespace memattn::detail
