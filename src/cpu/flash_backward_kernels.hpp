// The element-wise SIMD kernels of the flash backward, one table per Highway target; the GEMM
// tiles (S^T = K Q^T, dP^T = V dO^T, dV += P^T dO, dK += dS^T Q, dQ += dS K) are the forward's
// Kernels::gemm, or its vdpbf16ps kernels for bf16 inputs.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu/kernels.hpp"

namespace memattn::detail {

struct BackwardKernels {
  int64_t hwy_target;
  // FlashAttention-2's recomputation on a transposed tile pair (lanes = query rows, ld a multiple
  // of kPadFloats): for t < keys and every lane r, p = exp((st[t][r] - shift[r]) - corr[r]) (NaN
  // kept; -inf and anything below exp's range give 0), st[t][r] <- p and
  // dpt[t][r] <- p * (dpt[t][r] - dsum[r]). shift is the lse, corr the row's correction to it
  // (0 unless the lse is too coarse), so that exp's argument loses nothing to the lse's rounding.
  void (*probs_dscores)(float* st, float* dpt, size_t keys, size_t ld, const float* shift,
                        const float* corr, const float* dsum);
  // The same on an untransposed tile pair (lanes = keys): for r < rows and every lane t,
  // p = exp((s[r][t] - shift[r]) - corr[r]), s[r][t] <- p, dp[r][t] <- p * (dp[r][t] - dsum[r]).
  void (*probs_dscores_rows)(float* s, float* dp, size_t rows, size_t ld, const float* shift,
                             const float* corr, const float* dsum);
  // x[0..n) *= s, n a multiple of kPadFloats (a score tile: S, or dS, times the scale).
  void (*scale)(float* x, size_t n, float s);
};

// The table compiled for the same Highway target as `forward`.
const BackwardKernels& backward_kernels(const Kernels& forward);

}  // namespace memattn::detail
