// Variable-length batches (cu_seqlens): their checks, and each sequence as a dense batch-1 problem.
#pragma once

#include <cstdint>
#include <vector>

#include "api/backward_params.hpp"
#include "api/params.hpp"
#include "memattn/types.hpp"

namespace memattn::detail {

// The i32 or i64 element `offset` elements from t.data (offsets, lengths, page indices).
inline int64_t integer_at(const Tensor& t, int64_t offset) {
  return t.dtype == DType::i32 ? int64_t(static_cast<const int32_t*>(t.data)[offset])
                               : static_cast<const int64_t*>(t.data)[offset];
}

inline bool is_varlen(const Options& o) { return o.cu_seqlens_q != nullptr || o.cu_seqlens_k != nullptr; }

// v moved `index` steps along dimension `dim` (a no-op on a dim of stride 0): a sequence's rows of
// a packed operand, or its row of a per-batch one.
View shifted(View v, int dim, int64_t index);

// The checks that need no offset values, run by make_forward_params before its alias checks: both
// cu_seqlens or neither, each 1-D i32/i64 of one length >= 1, max_seqlen >= 0 and only with
// cu_seqlens, q/k/v batch 1, no mask or bias.
void check_sequence_tensors(const Params& whole, const Options& o);

// The row offsets of every sequence (batch + 1 entries each, read as int64), checked: they start
// at 0, never decrease, end at the token totals (whole.seq_q, whole.seq_k), and no sequence is
// longer than a given max_seqlen. O(batch) memory.
struct Sequences {
  std::vector<int64_t> q, k;
  size_t count() const { return q.size() - 1; }
};
Sequences read_sequences(const Params& whole, const Options& o);

// Sequence b of a validated varlen call as a dense batch-1 problem: every view moved to the
// sequence's first row, its own lengths, and the causal diagonal and window resolved from them.
// Not planned (the caller plans it as a dense call of that shape).
Params sequence_params(const Params& whole, const Sequences& s, size_t b, const Options& o);
BackwardParams sequence_params(const BackwardParams& whole, const Sequences& s, size_t b, const Options& o);

// The sub-problems one call runs: {whole} for a dense call, else one per sequence.
template <typename P>
std::vector<P> split_sequences(const P& whole, const Options& o) {
  if (!is_varlen(o)) return {whole};
  const Sequences s = read_sequences(whole, o);
  std::vector<P> parts;
  parts.reserve(s.count());
  for (size_t b = 0; b < s.count(); ++b) parts.push_back(sequence_params(whole, s, b, o));
  return parts;
}

}  // namespace memattn::detail
