// The element-wise SIMD kernels of the flash backward, one table per Highway target; the GEMM
// tiles (S^T = K Q^T, dP^T = V dO^T, dV += P^T dO, dK += dS^T Q, dQ += dS K) are the forward's
// Kernels::gemm.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu/kernels.hpp"

namespace memattn::detail {

struct BackwardKernels {
  int64_t hwy_target;
  // FlashAttention-2's recomputation on a transposed tile pair (lanes = query rows, ld a multiple
  // of kPadFloats): for t < keys and every lane r, p = exp(st[t][r] - lse[r]) (NaN kept, -inf and
  // anything below exp's range give 0), st[t][r] <- p and dpt[t][r] <- p * (dpt[t][r] - dsum[r]).
  void (*probs_dscores)(float* st, float* dpt, size_t keys, size_t ld, const float* lse,
                        const float* dsum);
};

// The table compiled for the same Highway target as `forward`.
const BackwardKernels& backward_kernels(const Kernels& forward);

}  // namespace memattn::detail
