// attention_with_kvcache's checks, and its batch as one dense or paged problem per sequence.
#pragma once

#include <vector>

#include "api/params.hpp"
#include "memattn/types.hpp"

namespace memattn::detail {

// Validates every operand of attention_with_kvcache (out and lse may be null when sizing) and
// returns one batch-1 problem per batch element, not planned: its queries, out and lse rows,
// seq_k = seqlens_k[b], the causal diagonal and window from those lengths, and keys either in
// batch b's rows of a dense cache or behind batch b's row of the block table. Throws
// memattn::Error before anything is written. `whole` (optional) gets the call as one problem with
// no keys, for planning a batch of 0.
std::vector<Params> kvcache_parts(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                  const Tensor& seqlens_k, const Tensor* block_table, const Tensor* out,
                                  const Tensor* lse, const Options& o, Params* whole = nullptr);

}  // namespace memattn::detail
