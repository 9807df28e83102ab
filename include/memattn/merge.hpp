// memattn::merge: the exact attention result over a union of disjoint key sets from each set's
// (out, lse) pair, as split-KV decoding and distributed attention combine their partial results.
#pragma once

#include <span>

#include "memattn/types.hpp"

namespace memattn {

struct MergeOptions {
  int num_threads = 0;  // 0: all that OpenMP offers; results are bitwise the same for any count
};

// For each row (b, h, i), with parts p = 0 .. n-1 in the order given and L_p = lses[p][b, h, i]:
//   lse = log sum_p exp(L_p)                    (as m + log sum_p exp(L_p - m), m = max_p L_p)
//   out[b, i, h, :] = sum_p exp(L_p - lse) * outs[p][b, i, h, :]
// which is attention over the union of the parts' key sets when each (outs[p], lses[p]) is
// forward()'s (out, lse) over its own keys. Weights are computed in f64, sums run over the parts
// in order in f32 (f64 for f64 parts), so results never depend on the thread count.
//
// outs[p]: [batch, seq_q, heads, head_dim_v], all parts of one dtype (f32, bf16, f16 or f64).
// lses[p]: f32 [batch, heads, seq_q]. out: the parts' shape, any float dtype for f32/bf16/f16
// parts (keep partials in f32 and write bf16 or f16 once, at the end), f64 for f64 parts.
// lse (optional): f32 [batch, heads, seq_q]. Any strides, as for forward().
//
// A part with L_p = -inf (no visible key) contributes nothing and its out row is not read (it may
// hold NaN). A row where every part is -inf, and every row when there are no parts, gives
// out = +0 and lse = -inf. NaN in any L_p, or in the out row of a part with finite L_p, gives NaN;
// L_p = +inf gives NaN (exp(inf - inf)), as the formula does in IEEE arithmetic.
//
// In place: out may be the very same view (data, dtype, shape, strides) as one or more parts, and
// lse the same view as one or more lses (accumulating into a running result); each element is
// written after every element it depends on has been read. Any other overlap of an output with an
// input, or of out with lse, is ErrorCode::aliasing. Every argument is checked before anything is
// written; on error out and lse are untouched.
void merge(std::span<const Tensor> outs, std::span<const Tensor> lses, const Tensor& out,
           const Tensor* lse, const MergeOptions& options = {});

}  // namespace memattn
