// One attention call on strided views, run whole or as per-(batch element, kv head) pieces.
#pragma once

#include <optional>
#include <vector>

#include "memattn/types.hpp"
#include "progress.hpp"

namespace memattn::tool {

struct Gradients {
  Tensor dout, dq, dk, dv;  // dout: input; dq, dk, dv: outputs
};

// forward() (and backward() when `grads` is set) on these views, or attention_with_kvcache() when
// `seqlens_k` is set (k and v are then the caches, paged with `block_table`). The tensor pointers
// of `options` (mask, bias, alibi_slopes, sinks, cu_seqlens) are ignored: the views here are used.
struct AttentionCall {
  Tensor q, k, v, out;
  std::optional<Tensor> lse, mask, bias, alibi_slopes, sinks, cu_seqlens_q, cu_seqlens_k;
  std::optional<Tensor> seqlens_k, block_table;
  std::optional<Gradients> grads;
  Options options;

  // The library's checks of the whole call and, with `with_backward`, of its backward (the workspace
  // queries validate everything but the outputs), so that they fail before any output exists.
  void validate(bool with_backward) const;
  void forward() const;
  void backward() const;  // needs lse and grads

  // The sub-call of batch element b and kv head g (with the query heads that read it): every view
  // cut to that batch element and group of heads (ALiBi slopes and sinks too); mask and bias dims
  // of size 1 stay broadcast. A varlen call has one batch element and keeps its offsets whole; a
  // paged cache keeps all its pages (the block table's row b names the element's).
  AttentionCall piece(int64_t b, int64_t g) const;
};

// The forward pieces of every (batch element, kv head), then, with grads, the backward ones. Run in
// that order they write bitwise what call.forward() and call.backward() write: the planner's chunk
// sizes do not depend on batch or heads (a cache call plans each sequence alone), each output
// element is computed by one work item, and the dk, dv of a kv head sum over its own group of query
// heads only.
std::vector<Piece> pieces_by_kv_head(const AttentionCall& call);

}  // namespace memattn::tool
