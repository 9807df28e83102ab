// Chooses the algorithm, chunk sizes and workers of a call, and sizes its workspace.
#include "plan/plan.hpp"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iterator>

#include "api/validate.hpp"
#include "common/threads.hpp"
#include "cpu/amx_tiles.hpp"
#include "cpu/bf16_dot_backward.hpp"
#include "cpu/flash_forward.hpp"

namespace memattn::detail {
namespace {

size_t l2_bytes() {
  static const size_t bytes = [] {
    const long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return v > 0 ? size_t(v) : size_t(1) << 20;
  }();
  return bytes;
}

int64_t round_down(int64_t x, int64_t m) { return std::max(m, x / m * m); }

// The largest divisor of n (>= 1) that is at most limit (>= 1).
int64_t largest_divisor_at_most(int64_t n, int64_t limit) {
  for (int64_t d = std::min(n, limit); d > 1; --d)
    if (n % d == 0) return d;
  return 1;
}

// Decode (a few queries against a long cache): one item per (batch, kv head, key split) holding
// every query of the group's heads, so each K/V row is read once per group, not once per query
// head; the keys are split so that one sequence still spreads over the threads. Split lengths
// depend on the shapes only (results are bitwise identical for any thread count): at least 2048
// keys, so that a split's K/V read dwarfs merging its partial, and at most 64 splits.
// A group's rows share one item up to 256 rows (the dense path's tile is 128): beyond that (huge
// MQA groups) the per-worker tiles would grow with the head count.
constexpr int64_t kDecodeQueries = 16, kMaxGroupRows = 256, kMinSplitKeys = 2048, kMaxSplits = 64;

// The most rows of a kv head's group (query heads x queries) that score by dot products
// (scores_by_dot). A dot product costs 3-4 vector operations per score beyond its FMAs (the sum
// of its lanes), which the GEMM saves once its rows fill the lanes: Zen 4, 1 thread, d = 128, 16
// keys in L1, per call: 4 rows 231-330 ns by dot products against 660-750 on the GEMM (4 of 16
// lanes), 16 rows 920-1200 against 630-720.
constexpr int64_t kDotScoreRows = 8;

// Query rows per flash work item. An item sweeps its head's K and V once per key chunk, so its
// rows share every K/V read, every packing of K and V into a family's layout (bf16 pairs, AMX
// tiles) and every pass over them from L3 or DRAM: the more rows, the fewer sweeps. Zen 4, n =
// 4096 and 16384, d = 64 and 128, 1 and 2 threads, no mask, alternating with 128 rows (two runs,
// docs/performance.md): f32 50-68% -> 63-79% of the FMA peak, bf16 39-61% -> 47-64% of the
// bf16-dot peak; the packing of K and the pairing of V fell from 14% to 5% of the bf16 forward's
// samples. Masks that band the scores (causal, windows) compute the diagonal chunks for every row
// of the item, masked or not, about rows / 2 wasted keys per row: such calls keep rows <= 1/32
// of the keys a row sees at most (Zen 4, causal: at n = 4096 512 rows lost up to 10 points
// against 128, at n = 16384 they gained 5-12). The AMX family and cores with 2 MiB of L2
// (Sapphire Rapids class Xeons) measured 256 rows ahead of 128 even there (AMX, 1 thread, n =
// 4096: 8.1% of its peak at 128 rows, 10.1% at 256, causal 7.9% at 256 and 6.9% at 512; f32 d =
// 128 53-57% -> 62%) and keep at least 256 (512 rows are unmeasured on those CPUs). Items stay at
// least four per processor of the machine while the rows can halve; not per thread of the call:
// where dim_v is off a multiple of 16 the rows decide how P V is summed (values_transposed), so
// the thread count would change the bits.
constexpr int64_t kMaxQueryRows = 512;
// Masks under which a row sees a band of the keys, so later query chunks see more of them.
bool banded(const Params& p) { return p.causal || p.window_left >= 0 || p.window_right >= 0; }
int64_t flash_query_rows(const Params& p) {
  const bool amx = p.family == TileFamily::amx_bf16 || p.family == TileFamily::amx_bf16_emulated;
  const int64_t least = amx || l2_bytes() >= (size_t(2) << 20) ? 256 : 128;
  int64_t rows = kMaxQueryRows;
  if (banded(p)) {
    // The most keys a row sees: the window's width where both sides are bounded.
    int64_t span = p.seq_k;
    const int64_t right = p.causal ? 0 : p.window_right;
    if (p.window_left >= 0 && right >= 0) span = std::min(span, p.window_left + right + 1);
    while (rows > least && rows * 32 > span) rows /= 2;
  }
  // In double: batch x heads x tiles may pass int64 for broadcast inputs of huge sequences.
  const auto items = [&](int64_t r) { return double(p.batch) * double(p.heads_q) * double((p.seq_q + r - 1) / r); };
  const double cores = double(machine_processors());
  while (rows > least && items(rows) < 4 * cores) rows /= 2;
  return rows;
}

// The kv heads of one decode item: where K and V keep a key's heads side by side (BSHD caches,
// and pages of them), a chunk of keys read one head at a time touches a new 4 KiB page every row
// (512 B of f32 at d = 128), which the hardware prefetchers do not follow and which costs a page
// walk per row; walking the heads of a key range together reads each page whole. Enough heads for
// 4 KiB of a key's K row, as long as the items still give every thread work. Results do not
// depend on it, so it may look at strides and threads.
int64_t decode_kv_heads_per_item(const Params& p) {
  const int64_t elem = int64_t(dtype_size(p.kv_dtype));
  const bool heads_adjacent = p.k.stride[2] == p.dim && p.v.stride[2] == p.dim_v && p.heads_kv > 1;
  if (!heads_adjacent) return 1;
  int64_t per = std::clamp<int64_t>(4096 / std::max<int64_t>(1, p.dim * elem), 1, std::min<int64_t>(p.heads_kv, kMaxKvHeadsPerItem));
  const auto items = [&](int64_t h) { return p.batch * ((p.heads_kv + h - 1) / h) * p.splits; };
  while (per > 1 && items(per) < p.threads) --per;
  // As many heads in each block as the block count allows (7 of 8 heads would leave a block of 1).
  const int64_t blocks = (p.heads_kv + per - 1) / per;
  return (p.heads_kv + blocks - 1) / blocks;
}

void plan_decode(Params& p) {
  if (p.seq_q > kDecodeQueries || p.group * p.seq_q > kMaxGroupRows) return;
  p.grouped = true;
  p.query_chunk = p.group * p.seq_q;
  const int64_t want = std::max(kMinSplitKeys, (p.seq_k + kMaxSplits - 1) / kMaxSplits);
  p.split_keys = (want + p.key_chunk - 1) / p.key_chunk * p.key_chunk;
  p.splits = std::max<int64_t>(1, (p.seq_k + p.split_keys - 1) / p.split_keys);
  p.kv_heads_per_item = decode_kv_heads_per_item(p);
}

constexpr TileFamily kFamilies[] = {TileFamily::f32_fma, TileFamily::bf16_dot, TileFamily::amx_bf16,
                                    TileFamily::amx_bf16_emulated};

// Can family f run p's flash forward (or backward) on this CPU and its selected kernels? The
// backward's AMX products take whole tiles of the head dims (multiples of 32) and pack their
// operands with the AVX-512 BF16 kernels of the bf16 dot backward.
bool family_runs(TileFamily f, const Params& p, bool backward) {
  const bool amx_backward = p.dim % 32 == 0 && p.dim_v % 32 == 0 && bf16_backward_kernels() != nullptr;
  switch (f) {
    case TileFamily::f32_fma: return true;
    case TileFamily::bf16_dot: return p.dtype == DType::bf16 && p.kernels->bf16 != nullptr;
    case TileFamily::amx_bf16: return p.dtype == DType::bf16 && amx_bf16_usable() && (!backward || amx_backward);
    case TileFamily::amx_bf16_emulated: return p.dtype == DType::bf16 && (!backward || amx_backward);  // tests
    default: return false;
  }
}

}  // namespace

bool scores_by_dot(const Params& p) {
  return p.algorithm == Algorithm::flash && p.group * p.seq_q <= kDotScoreRows && p.dim % int64_t(kPadFloats) == 0;
}

TileFamily choose_family(const Params& p, bool backward) {
  if (const char* forced = std::getenv("MEMATTN_FAMILY"); forced != nullptr && *forced != '\0') {
    const TileFamily* named = std::find_if(std::begin(kFamilies), std::end(kFamilies),
                                           [&](TileFamily f) { return std::strcmp(forced, family_name(f)) == 0; });
    if (named == std::end(kFamilies))
      fail(ErrorCode::invalid_argument,
           cat("MEMATTN_FAMILY: expected f32_fma, bf16_dot, amx_bf16 or amx_bf16_emulated, got ", forced));
    if (family_runs(*named, p, backward)) return *named;
    // An AMX family forced on head dims its backward does not tile takes the default below.
    if (!backward || !family_runs(*named, p, false))
      fail(ErrorCode::unsupported, cat("MEMATTN_FAMILY: ", forced, " cannot run this call (dtype ",
                                       dtype_name(p.dtype), ", target ", p.kernels->name, ")"));
  }
  for (TileFamily f : {TileFamily::amx_bf16, TileFamily::bf16_dot})
    if (family_runs(f, p, backward)) return f;
  return TileFamily::f32_fma;
}

void plan_forward(Params& p, const Options& o) {
  p.algorithm = o.algorithm;
  if (p.algorithm == Algorithm::automatic)
    p.algorithm = p.dtype == DType::f64 ? Algorithm::chunked : Algorithm::flash;
  if (p.algorithm == Algorithm::flash && p.dtype == DType::f64)
    fail(ErrorCode::unsupported,
         "algorithm: flash takes f32, bf16 or f16 inputs, got f64 (use naive, sequential or "
         "chunked for f64)");
  if (p.kv_dtype != p.dtype && p.algorithm != Algorithm::flash)
    fail(ErrorCode::unsupported,
         cat("algorithm: ", algorithm_name(p.algorithm), " takes k and v in q's dtype; f32 queries "
             "against a ", dtype_name(p.kv_dtype), " KV cache run on flash (algorithm auto or flash)"));

  // Bound whatever the algorithm: a target name this build does not run is an error on every
  // path, and no path can reach a flash driver without its kernels.
  p.kernels = &select_kernels(o.target);
  p.family = p.algorithm == Algorithm::flash ? choose_family(p, false) : TileFamily::f32_fma;
  int64_t cq = o.query_chunk, ck = o.key_chunk;
  if (p.algorithm == Algorithm::chunked) {
    // The paper's choice: a constant query chunk (1024) and key chunks of sqrt(n), which keeps
    // sqrt(n) summaries of query_chunk x dim_v each: O(sqrt n) memory.
    if (cq == 0) cq = 1024;
    if (ck == 0) ck = int64_t(std::ceil(std::sqrt(double(std::max<int64_t>(p.seq_k, 1)))));
  } else if (p.algorithm == Algorithm::flash) {
    // K and V chunks (key_chunk x (dim + dim_v)) are reread once per query tile, so they should
    // stay in the per-core L2 with room left for the query rows, the scores and the accumulators:
    // half of L2 for K+V, in steps of 16 keys (one AVX-512 register of scores), and at most 128
    // keys. The cap: K/V rows read in place at a row pitch that is a multiple of 4 KiB (BSHD with
    // H * d * 4 = 4 KiB, H = 8, d = 128) use 1/8 of the cache sets, so the L2-derived chunk
    // (512 keys) fell out to L3 on every query tile on a Sapphire Rapids class Xeon: f32 d = 128
    // went from 34-37% of the FMA peak to 57% with key_chunk 64-128 (../shared/perf-intel.md).
    // On Zen 4 (1 thread, n = 4096, f32) 128 keys are as fast as the L2 size: 60-69% against
    // 60-65% (d = 128) and 58-69% against 62-64% (d = 64). The cap does not look at strides, so
    // every layout of the same data sums in the same order; it is a multiple of 32, a whole AMX
    // tile depth of keys.
    if (cq == 0) cq = flash_query_rows(p);
    if (ck == 0)
      ck = std::clamp<int64_t>(round_down(int64_t(l2_bytes() / 2) / (4 * (p.dim + p.dim_v + 1)), 16),
                               16, 128);
  }
  // Chunks never exceed the sequences, so tiny problems take tiny workspaces.
  p.query_chunk = std::max<int64_t>(1, std::min(cq ? cq : p.seq_q, p.seq_q));
  p.key_chunk = std::max<int64_t>(1, std::min(ck ? ck : p.seq_k, p.seq_k));
  // Paged keys: a chunk within one page has its rows at one pitch, read in place. Chunks start at
  // multiples of key_chunk, so a divisor of the page size keeps every chunk in a page. Below 16
  // keys (one AVX-512 register of scores) the per-chunk work would dominate: tiny pages (or page
  // sizes without such a divisor) keep the planned chunk, whose rows the families gather.
  if (p.page_size > 0) {
    const int64_t in_page = largest_divisor_at_most(p.page_size, p.key_chunk);
    if (in_page >= std::min<int64_t>(16, p.key_chunk)) p.key_chunk = in_page;
  }
  p.threads = o.num_threads > 0 ? o.num_threads : default_threads();
  p.scores_by_dot = scores_by_dot(p);
  if (p.algorithm == Algorithm::flash && o.query_chunk == 0) plan_decode(p);
}

const char* family_name(TileFamily f) {
  switch (f) {
    case TileFamily::bf16_dot: return "bf16_dot";
    case TileFamily::amx_bf16: return "amx_bf16";
    case TileFamily::amx_bf16_emulated: return "amx_bf16_emulated";
    default: return "f32_fma";
  }
}

int64_t work_items(const Params& p) {
  switch (p.algorithm) {
    case Algorithm::flash:
      if (p.grouped) return p.batch * ((p.heads_kv + p.kv_heads_per_item - 1) / p.kv_heads_per_item) * p.splits;
      [[fallthrough]];
    case Algorithm::chunked:
      return p.batch * p.heads_q * ((p.seq_q + p.query_chunk - 1) / p.query_chunk);
    case Algorithm::naive: return p.batch * p.heads_q;
    default: return 1;
  }
}

FlashWorkItem flash_item(const Params& p, int64_t index) {
  if (p.grouped) {
    const int64_t per = p.kv_heads_per_item, blocks = (p.heads_kv + per - 1) / per;
    const int64_t s = index % p.splits, bg = index / p.splits, g = bg % blocks * per;
    return {bg / blocks, g, g * p.group, p.group, 0, p.seq_q, s * p.split_keys,
            std::min(p.seq_k, (s + 1) * p.split_keys), s, std::min(per, p.heads_kv - g)};
  }
  const int64_t cq = p.query_chunk, q_chunks = (p.seq_q + cq - 1) / cq, bh = index / q_chunks;
  // Under causal or window masks later query chunks see more keys: hand them out first so the
  // dynamic schedule ends on light items.
  const int64_t qc = banded(p) ? q_chunks - 1 - index % q_chunks : index % q_chunks;
  const int64_t h = bh % p.heads_q;
  return {bh / p.heads_q, h / p.group, h, 1, qc * cq, std::min(cq, p.seq_q - qc * cq), 0, p.seq_k, 0};
}

size_t flash_partial_bytes(const Params& p) {
  if (p.algorithm != Algorithm::flash || p.splits <= 1) return 0;
  const size_t rows = checked_mul(checked_mul(size_t(p.batch), size_t(p.heads_q)), size_t(p.seq_q));
  return checked_mul(checked_mul(checked_mul(rows, size_t(p.dim_v) + 1), size_t(p.splits)), sizeof(float));
}

namespace {

// 2 * batch * heads_q * seq_q * seq_k * (dim + dim_v): the score and value work of a problem.
double flops(const Params& p) {
  return 2.0 * double(p.batch) * double(p.heads_q) * double(p.seq_q) * double(p.seq_k) * double(p.dim + p.dim_v);
}

// Waking a second thread costs tens of microseconds (far more on a loaded machine): give each
// worker at least ~4 MFLOP of score and value work. The result does not depend on the count.
int workers_for(int threads, int64_t items, double work) {
  // Capped at the thread count before the conversion: huge (stride-0) problems exceed int64.
  const int64_t by_work = std::max<int64_t>(1, int64_t(std::min(work / 4e6, double(threads))));
  return int(std::max<int64_t>(1, std::min({int64_t(threads), items, by_work})));
}

}  // namespace

int workers(const Params& p) { return workers_for(p.threads, work_items(p), flops(p)); }

int64_t flash_items(const Params& p) { return p.empty() || p.seq_k == 0 ? 0 : work_items(p); }

int workers(const Parts& parts) {
  int64_t items = 0;
  double work = 0;
  for (const Params& p : parts) items += flash_items(p), work += flops(p);
  return parts.empty() ? 1 : workers_for(parts.front().threads, items, work);
}

size_t flash_slice_bytes(const Parts& parts) {
  size_t bytes = 0;
  for (const Params& p : parts)
    if (flash_items(p) > 0) bytes = std::max(bytes, flash_forward_slice_bytes(p));
  return bytes;
}

size_t forward_workspace_bytes(const Params& p) {
  if (p.empty() || p.seq_k == 0) return 0;
  Carver c;
  switch (p.algorithm) {
    case Algorithm::naive:
      p.dtype == DType::f64 ? (void)NaiveSlices<double>::carve(p, c) : (void)NaiveSlices<float>::carve(p, c);
      break;
    case Algorithm::sequential:
      p.dtype == DType::f64 ? (void)SequentialSlices<double>::carve(p, c)
                            : (void)SequentialSlices<float>::carve(p, c);
      break;
    case Algorithm::chunked:
      p.dtype == DType::f64 ? (void)ChunkedSlices<double>::carve(p, c)
                            : (void)ChunkedSlices<float>::carve(p, c);
      break;
    default: return forward_workspace_bytes(Parts{p});
  }
  return checked_add(checked_mul(c.used(), size_t(workers(p))), kAlign);
}

size_t forward_workspace_bytes(const Parts& parts) {
  if (parts.empty()) return 0;
  if (parts.front().algorithm != Algorithm::flash) {
    size_t bytes = 0;
    for (const Params& p : parts) bytes = std::max(bytes, forward_workspace_bytes(p));
    return bytes;
  }
  const size_t slice = flash_slice_bytes(parts);
  if (slice == 0) return 0;
  size_t partials = 0;
  for (const Params& p : parts)
    if (flash_items(p) > 0) partials = checked_add(partials, align_up(flash_partial_bytes(p)));
  return checked_add(checked_add(checked_mul(slice, size_t(workers(parts))), partials), kAlign);
}

}  // namespace memattn::detail
