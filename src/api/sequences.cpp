// Variable-length batches: the cu_seqlens checks (every message names the entry and its value) and
// the dense batch-1 problem of each sequence.
#include "api/sequences.hpp"

#include <algorithm>
#include <utility>

#include "api/validate.hpp"

namespace memattn::detail {
namespace {

// The offsets of one side, checked against its token total and its max_seqlen (0: not given).
std::vector<int64_t> read_offsets(const Tensor& t, const char* name, int64_t total, const char* total_name,
                                  int64_t max_seqlen, const char* max_name) {
  std::vector<int64_t> offsets(size_t(t.shape[0]));
  for (int64_t i = 0; i < t.shape[0]; ++i) offsets[size_t(i)] = integer_at(t, i * t.strides[0]);
  if (offsets[0] != 0) fail(ErrorCode::invalid_argument, cat(name, "[0]=", offsets[0], " must be 0"));
  int64_t longest = 0, longest_at = 0;
  for (size_t i = 1; i < offsets.size(); ++i) {
    if (offsets[i] < offsets[i - 1])
      fail(ErrorCode::invalid_argument, cat(name, "[", i, "]=", offsets[i], " < ", name, "[", i - 1, "]=",
                                            offsets[i - 1], "; offsets must be non-decreasing"));
    if (offsets[i] - offsets[i - 1] > longest) longest = offsets[i] - offsets[i - 1], longest_at = int64_t(i - 1);
  }
  if (offsets.back() != total)
    fail(ErrorCode::invalid_argument,
         cat(name, "[", offsets.size() - 1, "]=", offsets.back(), " (the last entry) must equal the ",
             total_name, " ", total));
  if (max_seqlen != 0 && max_seqlen < longest)
    fail(ErrorCode::invalid_argument,
         cat(max_name, "=", max_seqlen, " is smaller than sequence ", longest_at, "'s length ", longest, " (",
             name, "[", longest_at + 1, "] - ", name, "[", longest_at, "]); pass 0 to let memattn compute it"));
  return offsets;
}

}  // namespace

View shifted(View v, int dim, int64_t index) {
  v.data = static_cast<const char*>(v.data) + index * v.stride[dim] * int64_t(dtype_size(v.dtype));
  return v;
}

void check_sequence_tensors(const Params& whole, const Options& o) {
  const std::pair<int64_t, const char*> maxes[] = {{o.max_seqlen_q, "max_seqlen_q"}, {o.max_seqlen_k, "max_seqlen_k"}};
  for (const auto& [value, name] : maxes) {
    if (value < 0) fail(ErrorCode::invalid_argument, cat(name, " must be >= 0 (0: computed), got ", value));
    if (value != 0 && !is_varlen(o))
      fail(ErrorCode::invalid_argument,
           cat(name, "=", value, " is given but cu_seqlens_q and cu_seqlens_k are null; it applies to varlen calls only"));
  }
  if (!is_varlen(o)) return;
  if (!o.cu_seqlens_q || !o.cu_seqlens_k)
    fail(ErrorCode::invalid_argument,
         cat(o.cu_seqlens_q ? "cu_seqlens_q is set but cu_seqlens_k is null" : "cu_seqlens_k is set but cu_seqlens_q is null",
             "; a varlen call needs both"));
  const std::pair<const Tensor*, const char*> offsets[] = {{o.cu_seqlens_q, "cu_seqlens_q"}, {o.cu_seqlens_k, "cu_seqlens_k"}};
  for (const auto& [t, name] : offsets) {
    check_tensor(*t, name, 1);
    if (t->dtype != DType::i32 && t->dtype != DType::i64)
      fail(ErrorCode::wrong_dtype, cat(name, ": dtype must be i32 or i64, got ", dtype_name(t->dtype)));
    if (t->shape[0] < 1)
      fail(ErrorCode::invalid_argument, cat(name, ": expected batch + 1 >= 1 entries, got 0"));
  }
  if (o.cu_seqlens_q->shape[0] != o.cu_seqlens_k->shape[0])
    fail(ErrorCode::invalid_argument,
         cat("cu_seqlens_q has ", o.cu_seqlens_q->shape[0], " entries but cu_seqlens_k has ", o.cu_seqlens_k->shape[0],
             "; both must be batch + 1 long"));
  if (whole.batch != 1)
    fail(ErrorCode::invalid_argument,
         cat("q, k, v: batch must be 1 with cu_seqlens (sequences are packed along dim 1), got ", whole.batch));
  for (const auto& [t, name] : {std::pair{o.mask, "mask"}, std::pair{o.bias, "bias"}})
    if (t)
      fail(ErrorCode::unsupported,
           cat(name, ": not supported with cu_seqlens (varlen); use causal/window, or a dense call per sequence"));
}

Sequences read_sequences(const Params& whole, const Options& o) {
  return {read_offsets(*o.cu_seqlens_q, "cu_seqlens_q", whole.seq_q, "query total q.shape[1]", o.max_seqlen_q,
                       "max_seqlen_q"),
          read_offsets(*o.cu_seqlens_k, "cu_seqlens_k", whole.seq_k, "key total k.shape[1]", o.max_seqlen_k,
                       "max_seqlen_k")};
}

Params sequence_params(const Params& whole, const Sequences& s, size_t b, const Options& o) {
  Params p = whole;
  const int64_t q0 = s.q[b], k0 = s.k[b];
  p.seq_q = s.q[b + 1] - q0;
  p.seq_k = s.k[b + 1] - k0;
  p.q = shifted(whole.q, 1, q0);
  p.out = shifted(whole.out, 1, q0);
  p.lse = shifted(whole.lse, 2, q0);
  p.k = shifted(whole.k, 1, k0);
  p.v = shifted(whole.v, 1, k0);
  if (p.has_alibi) p.alibi = shifted(whole.alibi, 0, int64_t(b));  // [sequences, heads_q] slopes
  resolve_diagonal(p, o);
  return p;
}

BackwardParams sequence_params(const BackwardParams& whole, const Sequences& s, size_t b, const Options& o) {
  BackwardParams p = whole;
  static_cast<Params&>(p) = sequence_params(static_cast<const Params&>(whole), s, b, o);
  p.dout = shifted(whole.dout, 1, s.q[b]);
  p.dq = shifted(whole.dq, 1, s.q[b]);
  p.dk = shifted(whole.dk, 1, s.k[b]);
  p.dv = shifted(whole.dv, 1, s.k[b]);
  return p;
}

}  // namespace memattn::detail
