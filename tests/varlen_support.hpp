// Test support for variable-length batches: packed operands built from per-sequence lengths, the
// offsets in i32 or i64, and each sequence cut out as the dense batch-1 problem it stands for.
#pragma once

#include <cstdint>
#include <vector>

#include "support_backward.hpp"

namespace mt {

struct VarlenCase {
  std::vector<int64_t> len_q, len_k;
  int64_t heads_q, heads_kv, dim, dim_v;
  DType dtype;
  Buf q, k, v, out, lse;         // [1, total, heads, dim] packed; lse [1, heads_q, total_q]
  Buf dout, dq, dk, dv;          // the backward's, like out, q, k, v
  std::vector<int32_t> cu_q32, cu_k32;
  std::vector<int64_t> cu_q64, cu_k64;
  Tensor cu_q, cu_k;             // views of the i32 or i64 offsets
  Buf alibi_buf, sinks_buf;      // f32 operands of set_modifiers()
  Tensor alibi_view, sinks_view;
  memattn::Options options;      // cu_seqlens set; the caller adds causal, window, algorithm...
  // [heads_q] each when set_modifiers() gave them; the slopes may also be [sequences, heads_q]
  std::vector<double> alibi_slopes, sinks;

  VarlenCase(std::vector<int64_t> lq, std::vector<int64_t> lk, int64_t hq, int64_t hkv, int64_t d,
             int64_t dv, DType dt, DType offsets = DType::i32, uint64_t seed = 1);
  size_t count() const { return len_q.size(); }
  int64_t first_q(size_t b) const { return cu_q64[b]; }
  int64_t first_k(size_t b) const { return cu_k64[b]; }
  void use_offsets(DType offsets);  // i32 or i64
  // Score modifiers for every sequence: softcap, ALiBi slopes ([heads_q], or [count(), heads_q]
  // row-major: one row per sequence) and sinks ([heads_q]; empty: none), in options and in each
  // dense(b).
  void set_modifiers(double softcap, std::vector<double> slopes, std::vector<double> sink_logits);

  void forward();                 // into out and lse (pre-filled with NaN)
  void backward();                // from out and lse into dq, dk, dv (pre-filled with NaN)

  // Rows [first, first + count) of a packed [1, total, heads, dim] buffer as a dense batch-1 Buf.
  static Buf rows(const Buf& packed, int64_t first, int64_t count);
  // Sequence b as a dense forward (and backward) of its own: same options, no cu_seqlens.
  BackwardCase dense(size_t b) const;
  // Sequence b's problem for Ref64 and Base_dt.
  RefProblem problem(size_t b) const;
  // lse of sequence b, [1, heads_q, len_q[b]], cut out of the packed lse.
  std::vector<double> lse_of(size_t b) const;
};

}  // namespace mt
