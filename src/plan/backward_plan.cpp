// Chooses the algorithm, chunk sizes and work items of a backward call, and sizes its workspace.
#include "plan/backward_plan.hpp"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "api/validate.hpp"
#include "common/threads.hpp"
#include "cpu/amx_gemm.hpp"
#include "plan/plan.hpp"

namespace memattn::detail {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

void plan_backward(BackwardParams& p, const Options& o) {
  p.algorithm = o.algorithm;
  if (p.algorithm == Algorithm::automatic)
    p.algorithm = p.dtype == DType::f64 ? Algorithm::naive : Algorithm::flash;
  if (p.algorithm != Algorithm::naive && p.algorithm != Algorithm::flash)
    fail(ErrorCode::unsupported,
         std::string("algorithm: backward supports naive and flash (or automatic), got ") +
             algorithm_name(p.algorithm));
  if (p.algorithm == Algorithm::flash && p.dtype == DType::f64)
    fail(ErrorCode::unsupported,
         "algorithm: flash backward takes f32, bf16 or f16 inputs, got f64 (use naive for f64)");

  // Checked whatever the algorithm, as MEMATTN_TARGET is: a misspelt value is an error, not the
  // other way silently.
  if (const char* way = std::getenv("MEMATTN_BACKWARD");
      way != nullptr && *way != '\0' && std::string(way) != "fused" && std::string(way) != "passes")
    fail(ErrorCode::invalid_argument, std::string("MEMATTN_BACKWARD: expected fused or passes, got ") + way);
  // Bound whatever the algorithm, as in plan_forward: an unknown target is an error on every path.
  p.kernels = &select_kernels(o.target);
  p.family = p.algorithm == Algorithm::flash ? choose_family(p, true) : TileFamily::f32_fma;
  p.scores_by_dot = scores_by_dot(p);

  // Pass 1 keeps a key chunk's K^T, V^T, dK and dV (2 x key_chunk x (d + dv) floats) in L2 next
  // to a query tile (query_chunk x (d + dv)) and two query_chunk x key_chunk score tiles: 256 keys
  // and 128 queries at d = dv = 128 make about 900 KB, the 1 MB L2 of the Zen 5 cores this was
  // tuned on; wider heads halve the key chunk. Larger chunks reload each query tile (pass 1) and
  // each key chunk (pass 2) fewer times: 128 x 256 ran about 20% faster than 64 x 128 at
  // n = 2048, d = 128. The sizes never depend on the thread count.
  // The f32 products take twice that (512 keys at d = dv = 128, 1 MB of chunk state, past the
  // L2 of a Zen 4 core, within the 2 MB of a Sapphire Rapids one): on Zen 4, n = 4096, alternating
  // runs, 512 keys gave 40-43% of the f32 peak against 37-39% (d = 64, 1 thread) and 45-47%
  // against 42-43% (d = 128, 1 and 2 threads). The bf16 dot products showed no difference
  // (31-39% either way), so they keep 256.
  const int64_t budget = uses_bf16_backward(p) ? 65536 : 131072;
  int64_t ck_auto = budget / 256;
  while (ck_auto > 32 && p.dim + p.dim_v > budget / ck_auto) ck_auto /= 2;  // no product: huge dims
  const int64_t cq = o.query_chunk ? o.query_chunk : 128;
  const int64_t ck = o.key_chunk ? o.key_chunk : ck_auto;
  p.query_chunk = std::max<int64_t>(1, std::min(cq, p.seq_q));
  p.key_chunk = std::max<int64_t>(1, std::min(ck, p.seq_k));
  p.threads = o.num_threads > 0 ? o.num_threads : default_threads();
}

int64_t lse_items(const BackwardParams& p) {
  return p.batch * p.heads_q * ceil_div(p.seq_q, p.query_chunk);
}

int64_t dkv_items(const BackwardParams& p) {
  return p.batch * p.heads_kv * ceil_div(p.seq_k, p.key_chunk);
}

// Pass 1 sweeps the query tiles past each key chunk, pass 2 the key chunks past each query tile:
// whichever side is swept is reloaded once per item of the other, so each pass wants its items
// wide. Pass 1's key chunk is the larger of the two (f32: 512 keys against 128-row tiles at d =
// 128), and pass 2 takes the same shape transposed. Its key chunks were copied to f32 rows once
// per 128-row tile before, 13% of the backward's samples; Zen 4, n = 4096, d = 128, 1 thread,
// alternating runs: pass 2 1546-1580 ms -> 1257-1292 (docs/performance.md). The gradients do not
// change: each dq element is still summed over its keys in key order by one GEMM accumulation.
BackwardParams dq_pass_params(const BackwardParams& p) {
  BackwardParams q = p;
  if (!p.has_dbias) std::swap(q.query_chunk, q.key_chunk);
  return q;
}

DqOwners dq_owners(const BackwardParams& p) {
  // A broadcast dim is one owner even when its extent is 0: that item still writes the zeros.
  const auto own = [&](int dim, int64_t extent) {
    return p.has_dbias && p.bias_broadcast(dim) ? int64_t(1) : extent;
  };
  return {own(0, p.batch), own(1, p.heads_q), own(2, ceil_div(p.seq_q, p.query_chunk))};
}

int64_t fused_items(const BackwardParams& p) { return p.batch * p.heads_kv; }

bool fused_backward_fits(const BackwardParts& parts) {
  if (const char* forced = std::getenv("MEMATTN_BACKWARD"); forced != nullptr && *forced != '\0')
    return std::string(forced) == "fused";
  int64_t items = 0;
  for (const BackwardParams& p : parts) items += fused_items(p);
  // The fused pass does 5 of the passes' 7 GEMMs, in whole (batch, kv head) items: it is ahead
  // while its rounds of items over the processors take at most 7/5 of the passes' even spread.
  // Zen 4, n = 4096, d = 128, 2 threads: 3 items (2 rounds) 504-525 ms fused against 550-564 in
  // passes, 4 items 491-522 against 686-701. The machine's processors, as the forward's rows
  // rule (plan.cpp), not the call's threads: with NaN or Inf inputs the two ways may differ in
  // the bits of finite elements (their element-wise fallbacks cover different tiles).
  const int64_t cores = machine_processors();
  const int64_t rounds = (items + cores - 1) / cores;
  return double(rounds) * 5.0 <= 7.0 * double(items) / double(cores);
}

int64_t naive_items(const BackwardParams& p) { return p.batch * p.heads_kv; }

int64_t naive_dbias_items(const BackwardParams& p) {
  return p.has_dbias ? p.bias_shape[0] * p.bias_shape[1] : 0;
}

int backward_workers(const BackwardParams& p) {
  const int64_t items = p.algorithm == Algorithm::naive
                            ? std::max(naive_items(p), naive_dbias_items(p))
                            : std::max({lse_items(p), dkv_items(p), dq_owners(dq_pass_params(p)).items()});
  return int(std::max<int64_t>(1, std::min<int64_t>(p.threads, items)));
}

int backward_workers(const BackwardParts& parts) {
  int64_t lse = 0, dkv = 0, dq = 0;
  for (const BackwardParams& p : parts)
    lse += lse_items(p), dkv += dkv_items(p), dq += dq_owners(dq_pass_params(p)).items();
  const int threads = parts.empty() ? 1 : parts.front().threads;
  return int(std::max<int64_t>(1, std::min<int64_t>(threads, std::max({lse, dkv, dq}))));
}

size_t backward_slice_bytes(const BackwardParts& parts) {
  size_t bytes = 0;
  for (const BackwardParams& p : parts) {
    if (dkv_items(p) == 0 && dq_owners(dq_pass_params(p)).items() == 0) continue;
    for (const BackwardParams& pass : {p, dq_pass_params(p)}) {
      Carver c;
      FlashBackwardSlices::carve(pass, c);
      bytes = std::max(bytes, c.used());
    }
  }
  return bytes;
}

FlashBackwardSlices FlashBackwardSlices::carve(const BackwardParams& p, Carver& c) {
  const size_t cq = size_t(p.query_chunk), ck = size_t(p.key_chunk);
  const size_t d = size_t(p.dim), dv = size_t(p.dim_v);
  const size_t cqp = pad_floats(cq), ckp = pad_floats(ck), dp = pad_floats(d), dvp = pad_floats(dv);
  // A slice only the other path's products read is empty.
  const bool bf = uses_bf16_backward(p);
  const auto f32_only = [bf](size_t n) { return bf ? 0 : n; };
  const auto bf16_only = [bf](size_t n) { return bf ? n : 0; };
  FlashBackwardSlices w;
  w.q = c.take<float>(checked_mul(cq, dp));
  w.qt = c.take<float>(f32_only(checked_mul(d, cqp)));
  w.dout = c.take<float>(checked_mul(cq, dvp));
  w.doutt = c.take<float>(f32_only(checked_mul(dv, cqp)));
  w.shift = c.take<float>(cqp);
  w.corr = c.take<float>(cqp);
  w.dsum = c.take<float>(cqp);
  w.row_max = c.take<float>(cqp);
  w.row_sum = c.take<float>(cqp);
  w.alpha = c.take<float>(cqp);
  w.row = c.take<float>(std::max(d, dv));
  w.k = c.take<float>(checked_mul(ck, dp));
  w.v = c.take<float>(f32_only(checked_mul(ck, dvp)));
  w.kt = c.take<float>(f32_only(checked_mul(d, ckp)));
  w.vt = c.take<float>(f32_only(checked_mul(dv, ckp)));
  const size_t tile = std::max(checked_mul(ck, cqp), checked_mul(cq, ckp));
  w.st = c.take<float>(tile);
  w.dpt = c.take<float>(tile);
  w.capd = c.take<float>(p.has_softcap() ? tile : 0);
  w.acc_k = c.take<float>(checked_mul(std::max(ck, cq), dp));
  w.acc_v = c.take<float>(checked_mul(ck, dvp));
  w.acc_q = c.take<float>(f32_only(checked_mul(cq, dp)));
  const size_t rows = p.bias_broadcast(2) ? 1 : cq, cols = p.bias_broadcast(3) ? 1 : size_t(p.seq_k);
  w.dbias = c.take<float>(p.has_dbias ? checked_mul(rows, cols) : 0);
  const size_t side = pad_pairs(std::max(cq, ck)), lanes = std::max(cqp, ckp);
  // The AMX products read the pairs of rows of xp16 and yp16 (their B operands) in whole tile
  // depths of 32 rows, and take the tiles' A operands and a partial C tile from amx_*.
  const bool amx = uses_amx_backward(p);
  const auto amx_only = [amx](size_t n) { return amx ? n : 0; };
  const auto depth = [amx](size_t n) { return amx ? pad_tile_depth(n) : pad_pairs(n); };
  w.x16 = c.take<uint16_t>(bf16_only(checked_mul(side, pad_pairs(d))));
  w.y16 = c.take<uint16_t>(bf16_only(checked_mul(side, pad_pairs(dv))));
  w.xt16 = c.take<uint16_t>(bf16_only(checked_mul(pad_pairs(d), lanes)));
  w.yt16 = c.take<uint16_t>(bf16_only(checked_mul(pad_pairs(dv), lanes)));
  w.xp16 = c.take<uint16_t>(bf16_only(checked_mul(depth(std::max(cq, ck)), dp)));
  w.yp16 = c.take<uint16_t>(bf16_only(checked_mul(depth(cq), dvp)));
  w.tp16 = c.take<uint16_t>(
      bf16_only(std::max(checked_mul(pad_pairs(cq), ckp), checked_mul(pad_pairs(ck), cqp))));
  w.g16 = c.take<uint16_t>(bf16_only(checked_mul(5, std::max(d, dv))));
  w.amx_rows = c.take<uint16_t>(amx_only(checked_mul(lanes, pad_tile_depth(std::max(cq, ck)))));
  w.amx_a = c.take<uint16_t>(amx_only(checked_mul(kAmxTileRows, std::max(d, dv))));
  w.amx_c = c.take<float>(amx_only(kAmxTileRows * kAmxTileRows));
  w.live = c.take<uint8_t>(ck);
  w.packed = c.take<uint8_t>(ck);
  return w;
}

template <typename Acc>
NaiveBackwardSlices<Acc> NaiveBackwardSlices<Acc>::carve(const BackwardParams& p, Carver& c) {
  const size_t sq = size_t(p.seq_q), sk = size_t(p.seq_k);
  NaiveBackwardSlices w;
  w.probs = c.take<Acc>(checked_mul(sq, sk));
  w.ds = c.take<Acc>(sk);
  w.dk = c.take<Acc>(checked_mul(sk, size_t(p.dim)));
  w.dv = c.take<Acc>(checked_mul(sk, size_t(p.dim_v)));
  w.dq = c.take<Acc>(size_t(p.dim));
  w.dbias = c.take<Acc>(p.has_dbias ? checked_mul(size_t(p.bias_shape[2]), size_t(p.bias_shape[3])) : 0);
  w.sink_probs = c.take<Acc>(p.has_sinks ? sq : 0);
  w.dead = c.take<uint8_t>(sq);
  return w;
}

template struct NaiveBackwardSlices<float>;
template struct NaiveBackwardSlices<double>;

size_t backward_workspace_bytes(const BackwardParams& p) {
  if (p.algorithm != Algorithm::naive) return backward_workspace_bytes(BackwardParts{p});
  if (naive_items(p) == 0 && naive_dbias_items(p) == 0) return 0;
  Carver c;
  p.dtype == DType::f64 ? (void)NaiveBackwardSlices<double>::carve(p, c)
                        : (void)NaiveBackwardSlices<float>::carve(p, c);
  return checked_add(checked_mul(c.used(), size_t(backward_workers(p))), kAlign);
}

size_t backward_workspace_bytes(const BackwardParts& parts) {
  if (parts.empty()) return 0;
  if (parts.front().algorithm == Algorithm::naive) {
    size_t bytes = 0;
    for (const BackwardParams& p : parts) bytes = std::max(bytes, backward_workspace_bytes(p));
    return bytes;
  }
  const size_t slice = backward_slice_bytes(parts);
  if (slice == 0) return 0;
  return checked_add(checked_mul(slice, size_t(backward_workers(parts))), kAlign);
}

}  // namespace memattn::detail
