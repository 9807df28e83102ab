// Chunk bounds: an even split of the queries; keys split evenly, or at the causal diagonal.
#include "dist/layout.hpp"

#include <algorithm>
#include <utility>

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

Coverage coverage(int64_t rows, int64_t keys, int64_t offset, bool causal, int64_t left,
                  int64_t right) {
  if (rows <= 0 || keys <= 0) return Coverage::hidden;
  // Row r sees keys r + offset - left .. r + offset + reach; 128 bits hold every sum exactly.
  using Wide = __int128;
  const bool bounded_right = causal || right >= 0;
  const Wide reach = causal ? 0 : right;  // used only when bounded_right
  // The rows that see a key: r >= -(offset + reach) (else all its keys are left of key 0) and
  // r <= keys - 1 - offset + left (else all are right of the last key).
  Wide first = 0, last = rows - 1;
  if (bounded_right) first = std::max<Wide>(first, -(Wide(offset) + reach));
  if (left >= 0) last = std::min<Wide>(last, Wide(keys) - 1 - offset + left);
  if (first > last) return Coverage::hidden;
  // Every row sees every key when the last row still reaches key 0 and the first the last key.
  const bool all_left = left < 0 || Wide(rows) - 1 + offset - left <= 0;
  const bool all_right = !bounded_right || Wide(offset) + reach >= Wide(keys) - 1;
  return all_left && all_right ? Coverage::full : Coverage::partial;
}

Visibility RingLayout::visibility(int qc, int kc) const {
  const Range q = q_chunk(qc), k = k_chunk(kc);
  // Global query q.start + r meets its diagonal at key q.start + r + diag, local key
  // r + (q.start - k.start + diag) of the pair (bounded by make_layout).
  const int64_t offset = q.start - k.start + diag;
  return {coverage(q.length, k.length, offset, causal, window_left, window_right), offset};
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
  for (const auto& [value, name] : {std::pair{a.window_left, "window_left"},
                                    std::pair{a.window_right, "window_right"}})
    if (value < -1)
      fail(ErrorCode::invalid_argument,
           cat("options.attention.", name, " must be -1 (unbounded) or >= 0, got ", value));
  const int64_t seq_k = o.seq_k < 0 ? o.seq_q : o.seq_k;
  // Every pair's diagonal offset (a difference of chunk starts plus the global diagonal) and the
  // key bounds memattn derives from it must stay far inside int64: seq_q + seq_k + |diagonal|
  // <= 2^60 keeps 4 (max(rows, keys) + |offset|) below 2^63 for every pair.
  constexpr __int128 kReach = __int128(1) << 60;
  const __int128 diag = __int128(a.align == Align::bottom_right ? seq_k - o.seq_q : 0) + a.diagonal_offset;
  if (__int128(o.seq_q) + seq_k + (diag < 0 ? -diag : diag) > kReach)
    fail(ErrorCode::size_overflow,
         cat("options.attention.diagonal_offset ", a.diagonal_offset, " with global seq_q ", o.seq_q,
             " and seq_k ", seq_k, " puts the diagonal too far: seq_q + seq_k + |diagonal| must be <= 2^60"));
  RingLayout l;
  l.ranks = ranks;
  l.per_rank = o.placement == Placement::zigzag ? 2 : 1;
  l.causal = a.causal;
  l.window_left = a.window_left, l.window_right = a.window_right;
  const int n = ranks * l.per_rank;
  l.diag = int64_t(diag);
  l.q_bounds = even_bounds(o.seq_q, n);
  l.k_bounds = even_bounds(seq_k, n);
  if (a.causal) {
    // Key chunk c starts at the diagonal of query chunk c's first row: then keys of earlier chunks
    // are all visible to chunk c's queries (up to the window), keys of later ones all hidden, and
    // only the pair (c, c) is cut by the diagonal.
    for (int c = 1; c < n; ++c)
      l.k_bounds[c] = std::clamp<int64_t>(l.q_bounds[c] + l.diag, 0, seq_k);
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
