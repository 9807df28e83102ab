// Whole and per-(batch element, kv head) attention calls on sliced views.
#include "attention_call.hpp"

#include "memattn/memattn.hpp"

namespace memattn::tool {
namespace {

// t restricted to [start, start + len) along dim (no copy: a pointer offset and a shape).
Tensor slice(Tensor t, int dim, int64_t start, int64_t len) {
  if (t.data) t.data = static_cast<char*>(t.data) + start * t.strides[size_t(dim)] * int64_t(dtype_size(t.dtype));
  t.shape[size_t(dim)] = len;
  return t;
}

// The same for a mask or bias, whose size-1 dims broadcast over the whole range and stay as they are.
std::optional<Tensor> slice_broadcast(const std::optional<Tensor>& t, int dim, int64_t start, int64_t len) {
  if (!t || t->shape[size_t(dim)] == 1) return t;
  return slice(*t, dim, start, len);
}

// The call's options pointing at its own views.
Options with_views(const AttentionCall& c) {
  Options o = c.options;
  o.mask = c.mask ? &*c.mask : nullptr;
  o.bias = c.bias ? &*c.bias : nullptr;
  o.alibi_slopes = c.alibi_slopes ? &*c.alibi_slopes : nullptr;
  o.sinks = c.sinks ? &*c.sinks : nullptr;
  o.cu_seqlens_q = c.cu_seqlens_q ? &*c.cu_seqlens_q : nullptr;
  o.cu_seqlens_k = c.cu_seqlens_k ? &*c.cu_seqlens_k : nullptr;
  return o;
}

}  // namespace

void AttentionCall::validate(bool with_backward) const {
  const Options o = with_views(*this);
  if (seqlens_k) {
    kvcache_workspace_bytes(q, k, v, *seqlens_k, block_table ? &*block_table : nullptr, o);
    return;
  }
  workspace_bytes(q, k, v, o);
  if (with_backward) backward_workspace_bytes(q, k, v, o);
}

void AttentionCall::forward() const {
  const Options o = with_views(*this);
  if (seqlens_k)
    attention_with_kvcache(q, k, v, *seqlens_k, block_table ? &*block_table : nullptr, out, lse ? &*lse : nullptr, o);
  else
    memattn::forward(q, k, v, out, lse ? &*lse : nullptr, o);
}

void AttentionCall::backward() const {
  const Options o = with_views(*this);
  memattn::backward(q, k, v, out, grads->dout, *lse, grads->dq, grads->dk, grads->dv, o);
}

AttentionCall AttentionCall::piece(int64_t b, int64_t g) const {
  const int64_t group = q.shape[2] / k.shape[2], h0 = g * group;
  // q-like views are [batch, seq, heads, dim]; lse [batch, heads, seq]; mask, bias [batch, heads, ...].
  const auto q_like = [&](const Tensor& t) { return slice(slice(t, 0, b, 1), 2, h0, group); };
  const auto kv_like = [&](const Tensor& t) { return slice(slice(t, 0, b, 1), 2, g, 1); };
  AttentionCall p = *this;
  p.q = q_like(q), p.out = q_like(out);
  if (block_table) {
    p.k = slice(k, 2, g, 1), p.v = slice(v, 2, g, 1);
    p.block_table = slice(*block_table, 0, b, 1);
  } else {
    p.k = kv_like(k), p.v = kv_like(v);
  }
  if (seqlens_k) p.seqlens_k = slice(*seqlens_k, 0, b, 1);
  if (lse) p.lse = slice(slice(*lse, 0, b, 1), 1, h0, group);
  p.mask = slice_broadcast(slice_broadcast(mask, 0, b, 1), 1, h0, group);
  p.bias = slice_broadcast(slice_broadcast(bias, 0, b, 1), 1, h0, group);
  // Slopes [heads_q] or [batch, heads_q], sinks [heads_q]: the piece's heads (and batch element).
  if (alibi_slopes)
    p.alibi_slopes = alibi_slopes->ndim == 1 ? slice(*alibi_slopes, 0, h0, group)
                                             : slice(slice(*alibi_slopes, 0, b, 1), 1, h0, group);
  if (sinks) p.sinks = slice(*sinks, 0, h0, group);
  if (grads) p.grads = Gradients{q_like(grads->dout), q_like(grads->dq), kv_like(grads->dk), kv_like(grads->dv)};
  return p;
}

std::vector<Piece> pieces_by_kv_head(const AttentionCall& call) {
  std::vector<Piece> pieces;
  const int64_t batch = call.q.shape[0], kv_heads = call.k.shape[2];
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t g = 0; g < kv_heads; ++g) pieces.push_back({"forward", [p = call.piece(b, g)] { p.forward(); }});
  if (call.grads)
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t g = 0; g < kv_heads; ++g)
        pieces.push_back({"backward", [p = call.piece(b, g)] { p.backward(); }});
  return pieces;
}

}  // namespace memattn::tool
