// The validated description of one merge() call, and the row kernel behind it, which split-KV
// code can run directly on partials it laid out itself (its views are valid by construction).
#pragma once

#include <cstdint>
#include <span>

#include "memattn/merge.hpp"

namespace memattn::detail {

struct MergeParams {
  int64_t batch = 0, seq_q = 0, heads = 0, dim_v = 0;
  std::span<const Tensor> outs;  // parts, [batch, seq_q, heads, dim_v], one dtype
  std::span<const Tensor> lses;  // f32 [batch, heads, seq_q], one per part
  Tensor out;                    // written; f64 exactly when the parts are f64
  Tensor lse;                    // f32 [batch, heads, seq_q], written when has_lse
  bool has_lse = false;
  int threads = 1;
};

// Checks every argument of merge() (throws memattn::Error naming it) and resolves the threads.
MergeParams make_merge_params(std::span<const Tensor> outs, std::span<const Tensor> lses,
                              const Tensor& out, const Tensor* lse, const MergeOptions& options);

// Writes out (and lse) for every row from the parts, as merge() documents.
void merge_rows(const MergeParams& p);

}  // namespace memattn::detail
