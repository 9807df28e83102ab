// Chunk bounds: an even split of the queries; keys split evenly, or at the causal diagonal.
#include "dist/layout.hpp"

#include <algorithm>

#include "api/validate.hpp"

namespace memattn::dist {

using memattn::detail::cat;
using memattn::detail::fail;

const char* placement_name(Placement p) {
  switch (p) {
    case Placement::contiguous:
      return "contiguous";
    case Placement::zigzag:
      return "zigzag";
  }
  return "?";
}

namespace detail {
namespace {

// n + 1 bounds of `length` split into n chunks whose lengths differ by at most one.
std::vector<int64_t> even_bounds(int64_t length, int n) {
  std::vector<int64_t> b(n + 1);
  for (int c = 0; c <= n; ++c) b[c] = (length / n) * c + std::min<int64_t>(c, length % n);
  return b;
}

}  // namespace

LocalSlices RingLayout::slices(int r) const {
  LocalSlices s;
  s.count = per_rank;
  for (int i = 0; i < per_rank; ++i) {
    s.q[i] = q_chunk(chunk(r, i));
    s.k[i] = k_chunk(chunk(r, i));
    s.seq_q += s.q[i].length;
    s.seq_k += s.k[i].length;
  }
  return s;
}

int64_t RingLayout::max_local_k() const {
  int64_t m = 0;
  for (int r = 0; r < ranks; ++r) m = std::max(m, slices(r).seq_k);
  return m;
}

Visibility RingLayout::visibility(int qc, int kc) const {
  if (q_chunk(qc).length == 0 || k_chunk(kc).length == 0) return Visibility::hidden;
  if (!causal || kc < qc) return Visibility::full;
  return kc == qc ? Visibility::diagonal : Visibility::hidden;
}

RingLayout make_layout(const RingOptions& o, int ranks) {
  if (ranks < 1) fail(ErrorCode::invalid_argument, cat("ranks must be >= 1, got ", ranks));
  if (o.placement != Placement::contiguous && o.placement != Placement::zigzag)
    fail(ErrorCode::invalid_argument,
         cat("options.placement must be contiguous or zigzag, got ", int(o.placement)));
  if (o.seq_q < 0)
    fail(ErrorCode::invalid_argument, cat("options.seq_q (global) must be >= 0, got ", o.seq_q));
  if (o.seq_k < -1)
    fail(ErrorCode::invalid_argument,
         cat("options.seq_k (global) must be >= 0, or -1 for seq_q, got ", o.seq_k));
  const Options& a = o.attention;
  if (a.align != Align::top_left && a.align != Align::bottom_right)
    fail(ErrorCode::invalid_argument,
         cat("options.attention.align must be top_left or bottom_right, got ", int(a.align)));
  RingLayout l;
  l.ranks = ranks;
  l.per_rank = o.placement == Placement::zigzag ? 2 : 1;
  l.causal = a.causal;
  const int n = ranks * l.per_rank;
  const int64_t seq_k = o.seq_k < 0 ? o.seq_q : o.seq_k;
  l.q_bounds = even_bounds(o.seq_q, n);
  l.k_bounds = even_bounds(seq_k, n);
  if (a.causal) {
    // Key chunk c starts at the diagonal of query chunk c's first row: then keys of earlier chunks
    // are all visible to chunk c's queries, keys of later ones all hidden, and the pair (c, c)
    // has the diagonal exactly where options.attention.align puts it.
    const int64_t diag = a.align == Align::bottom_right ? seq_k - o.seq_q : 0;
    for (int c = 1; c < n; ++c) l.k_bounds[c] = std::clamp<int64_t>(l.q_bounds[c] + diag, 0, seq_k);
  }
  return l;
}

}  // namespace detail

LocalSlices local_slices(const RingOptions& options, int ranks, int rank) {
  const detail::RingLayout l = detail::make_layout(options, ranks);
  if (rank < 0 || rank >= ranks)
    fail(ErrorCode::invalid_argument, cat("rank must be in [0, ", ranks, "), got ", rank));
  return l.slices(rank);
}

}  // namespace memattn::dist
