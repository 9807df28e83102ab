// The chunk bounds of a ring: which global rows every rank holds and how each block pair is masked.
#pragma once

#include <vector>

#include "memattn/dist.hpp"

namespace memattn::dist::detail {

// How much of a (query chunk, key chunk) pair the ring's causal and window masks leave visible.
enum class Coverage { hidden, full, partial };

// What a pair contributes. Hidden pairs are skipped (their block still travels on); the others are
// computed with top_left alignment and this diagonal offset, the global diagonal as the pair sees
// it (q start - k start + global diagonal), which also keeps ALiBi's distances global; partial
// pairs keep the causal and window masks, full ones drop them.
struct Visibility {
  Coverage coverage = Coverage::full;
  int64_t diagonal_offset = 0;
};

// The coverage of `rows` queries against `keys` keys where row r's diagonal is key r + offset,
// under causal (keys <= diagonal) and the window (diagonal - left .. diagonal + right, -1
// unbounded); no rows or no keys: hidden.
Coverage coverage(int64_t rows, int64_t keys, int64_t offset, bool causal, int64_t left, int64_t right);

// A visible (query chunk, key chunk) pair: rows of the query rank's local q from q_offset, keys of
// the owner's local k from k_offset, which are global keys from k_start (the mask and bias
// columns).
struct BlockPair {
  int64_t q_offset = 0, rows = 0, k_offset = 0, keys = 0, k_start = 0;
  Visibility visibility;
};

struct RingLayout {
  int ranks = 1;
  int per_rank = 1;  // chunks each rank holds
  bool causal = false;
  int64_t window_left = -1, window_right = -1;
  // Key index of global query 0's diagonal: the alignment's plus options.attention.diagonal_offset.
  int64_t diag = 0;
  std::vector<int64_t> q_bounds, k_bounds;  // chunk c spans [bounds[c], bounds[c + 1])

  // The global chunk index of the i-th chunk rank r holds.
  int chunk(int r, int i) const { return i == 0 ? r : 2 * ranks - 1 - r; }
  Range q_chunk(int c) const { return {q_bounds[c], q_bounds[c + 1] - q_bounds[c]}; }
  Range k_chunk(int c) const { return {k_bounds[c], k_bounds[c + 1] - k_bounds[c]}; }
  // Rank r's slices: global ranges and where each starts in the rank's local tensors.
  LocalSlices slices(int r) const;
  int64_t local_q_offset(int r, int i) const { return i == 0 ? 0 : q_chunk(chunk(r, 0)).length; }
  int64_t local_k_offset(int r, int i) const { return i == 0 ? 0 : k_chunk(chunk(r, 0)).length; }
  // The longest local key slice of any rank: the size of a travelling block buffer.
  int64_t max_local_k() const;
  Visibility visibility(int q_chunk_index, int k_chunk_index) const;
  // fn(BlockPair) for every visible pair of rank's query chunks with owner's key chunks, in one
  // fixed order (rank's chunks, then owner's): the order of the merges and gradient sums.
  template <typename Fn>
  void for_each_visible_pair(int rank, int owner, Fn&& fn) const {
    for (int i = 0; i < per_rank; ++i)
      for (int j = 0; j < per_rank; ++j) {
        const int qc = chunk(rank, i), kc = chunk(owner, j);
        const Visibility vis = visibility(qc, kc);
        if (vis.coverage != Coverage::hidden)
          fn(BlockPair{local_q_offset(rank, i), q_chunk(qc).length, local_k_offset(owner, j),
                       k_chunk(kc).length, k_chunk(kc).start, vis});
      }
  }
};

// Validates the options' ring fields and the communicator size, and computes the bounds.
RingLayout make_layout(const RingOptions& options, int ranks);

}  // namespace memattn::dist::detail
