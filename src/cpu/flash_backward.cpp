// flash backward driver (FlashAttention-2's recomputation from lse, no Nq x Nk matrix), in
// passes so that every gradient element is summed by one thread in a fixed order:
//   lse pass, per (batch, head, query chunk): each row's D = rowsum(dO * O), and, for a row
//           whose f32 lse is too coarse (large |lse|, rare at ordinary scales), its correction to
//           it, from one sweep of S over its keys (about one GEMM of the seven); both parked in
//           the row's dq until pass 2;
//   pass 1, per (batch, kv head, key chunk): dK and dV of the chunk over every query row of the
//           group's heads that sees it;
//   pass 2, per (batch, head, query chunk): dQ of the chunk (and the item's dbias rows),
//           recomputing S and dP, with pass 1's chunk sizes transposed (dq_pass_params).
// Pass 2 recomputes two of pass 1's four GEMMs (S and dP: 7 GEMMs instead of 5). That is the
// price of a deterministic, atomic-free dQ in constant memory; the alternatives were atomics
// (FlashAttention-2 on GPUs: not deterministic) or per-key-chunk dQ partials summed in a fixed
// order (deterministic, but Nq x d x Nk/key_chunk floats: memory growing with n^2). Measured at
// n = 2048, d = 128, B*H = 8, f32, one Zen 5 thread (CPU time): pass 1 (4 GEMMs) 316 ms, pass 2
// (3 GEMMs) 187 ms; the two recomputed GEMMs cost about 125 ms, 25% of the backward.
// Where dq itself can hold each row's running sum (f32 inputs; no lse correction or D parked in
// it; no dbias), the fused pass replaces all three: per (batch, kv head) the key chunks in order,
// 5 GEMMs, the same bits (fused_item). Zen 4, n = 4096, d = 128: 44-47% -> 63-72% of the FMA peak.
// bf16 inputs on the avx512_bf16 target run the same passes with every product on vdpbf16ps
// (flash_backward_tile.hpp), at about twice the f32 GEMM's speed.
#include <type_traits>

#include "common/parallel.hpp"
#include "cpu/flash_backward.hpp"

#include "cpu/flash_backward_tile.hpp"
#include "plan/item_list.hpp"

namespace memattn::detail {
namespace {

// First row i in [0, n) with pred(i) true, for a predicate monotone in i (false ... true).
template <typename Pred>
int64_t first_row(int64_t n, Pred pred) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    pred(mid) ? hi = mid : lo = mid + 1;
  }
  return lo;
}

// Runs pass(p, item, slice) over the items of every part in one parallel loop (parts: the dense
// call, or a varlen call's sequences; `planned`: the parts the workspace was sized for, whose
// workers and slices every pass shares).
template <typename Count, typename Pass>
void run_pass(const BackwardParts& planned, const BackwardParts& parts, void* ws, Count count, Pass pass) {
  const ItemList items(parts, count);
  parallel_for_items(items.size(), backward_workers(planned), ws, backward_slice_bytes(planned),
                     [&](int64_t index, char* slice) {
                       const auto [part, local] = items.locate(index);
                       pass(parts[part], local, slice);
                     });
}

template <typename T>
void lse_item(const BackwardParams& p, const BackwardKernels& bk, int64_t item, char* slice) {
  const int64_t cq = p.query_chunk, q_chunks = (p.seq_q + cq - 1) / cq;
  TileWorker<T> x(p, bk, Lanes::queries, slice);
  const int64_t b = item / (p.heads_q * q_chunks), h = item / q_chunks % p.heads_q;
  const int64_t i0 = item % q_chunks * cq, rows = std::min(cq, p.seq_q - i0);
  if (x.dsums_parkable()) x.park_dsums(b, h, i0, rows);
  if (!x.any_coarse_lse(b, h, i0, rows)) return;
  x.load_queries(b, h, i0, rows);
  x.park_lse_corrections();
}

// The fused pass's running dq sums of the tile x holds (f32 dq rows, exact) in and out of w.acc_q.
template <typename T>
void load_dq_rows(TileWorker<T>& x) {
  for (int64_t r = 0; r < x.rows; ++r) {
    float* acc = x.w.acc_q + size_t(r) * x.dp;
    load_row(x.kern, x.p.dq.template at<T>(x.b, x.i0 + r, x.h), x.p.dq.stride[3], x.d, acc);
    std::fill(acc + x.d, acc + x.dp, 0.0f);
  }
}
template <typename T>
void store_dq_rows(TileWorker<T>& x, float mul) {
  for (int64_t r = 0; r < x.rows; ++r)
    store_grad_row<T>(x.p.dq, x.b, x.i0 + r, x.h, x.w.acc_q + size_t(r) * x.dp, x.p.dim, mul);
}

// dK and dV of keys [j0, j0 + keys) of (b, g), over every query row of the group's heads that sees
// them. With `with_dq` (the fused pass, f32 products) each query tile's dS K is added to its dq
// rows too, which hold the sum over the earlier key chunks: x.key_rows_too keeps K's rows.
template <typename T>
void dkv_chunk(TileWorker<T>& x, int64_t b, int64_t g, int64_t j0, int64_t keys, bool with_dq) {
  const BackwardParams& p = x.p;
  const int64_t cq = p.query_chunk;
  const FlashBackwardSlices& w = x.w;
  const size_t kn = size_t(keys);
  x.clear_lane_side();
  std::fill_n(w.acc_k, kn * x.dp, 0.0f);
  std::fill_n(w.acc_v, kn * x.dvp, 0.0f);
  std::fill_n(w.packed, kn, uint8_t(0));
  if (with_dq) std::fill_n(w.k, kn * x.dp, 0.0f);  // keys no row sees add 0 * 0
  bool keys_finite = true;  // over every key loaded so far (zero columns for the others)

  // Rows whose visible range meets the chunk: key bounds are monotone in the row.
  const int64_t i_lo = first_row(p.seq_q, [&](int64_t i) { return p.key_end(i) > j0; });
  const int64_t i_hi = first_row(p.seq_q, [&](int64_t i) { return p.key_begin(i) >= j0 + keys; });
  for (int64_t h = g * p.group; h < (g + 1) * p.group; ++h)
    for (int64_t i0 = i_lo / cq * cq; i0 < i_hi; i0 += cq) {
      x.load_queries(b, h, i0, std::min(cq, p.seq_q - i0));
      x.read_lse_corrections();
      bool full;
      if (!x.find_live(j0, keys, full)) continue;
      // Keys are loaded the first time a row sees them: keys nobody sees are never read.
      for (int64_t t = 0; t < keys; ++t)
        if (w.live[t] && !w.packed[t]) keys_finite &= x.load_key(g, j0, t), w.packed[t] = 1;
      x.probs_and_dscores(j0, keys, full);
      x.chain_softcap(keys);
      x.scale_tile(w.dpt, keys);
      if (with_dq) load_dq_rows(x);
      if (x.tile_finite && keys_finite) {
        // dV += P^T dO and dK += dS^T Q, P and dS read transposed; dS or Q carries the scale.
        x.lane_gradient(w.st, keys, w.dout, w.yp16, x.dvp, w.acc_v);
        x.lane_gradient(w.dpt, keys, w.q, w.xp16, x.dp, w.acc_k);
        // dQ += dS K: each dq element summed over its keys in order, as pass 2 sums it.
        if (with_dq) x.kern.gemm({w.dpt, x.ld, 1, w.k, x.dp, w.acc_q, x.dp, size_t(x.rows), x.dp, kn, true});
      } else {
        // A NaN/Inf input times a masked pair's zero must not reach the gradient: visible pairs
        // only, as the reference sums them.
        x.load_fallback_operands(g, j0, keys);
        for (int64_t r = 0; r < x.rows; ++r) {
          if (x.dead(r)) continue;
          for (int64_t t = std::max<int64_t>(x.key_lo(r, j0), 0); t < std::min(x.key_hi(r, j0), keys); ++t) {
            if (!p.mask_allows(b, h, i0 + r, j0 + t)) continue;
            const float pv = w.st[x.at(r, t)], ds = w.dpt[x.at(r, t)];
            for (size_t c = 0; c < x.dv; ++c) w.acc_v[size_t(t) * x.dvp + c] += pv * w.dout[size_t(r) * x.dvp + c];
            for (size_t c = 0; c < x.d; ++c) w.acc_k[size_t(t) * x.dp + c] += ds * w.q[size_t(r) * x.dp + c];
            if (with_dq)
              for (size_t c = 0; c < x.d; ++c) w.acc_q[size_t(r) * x.dp + c] += ds * w.k[size_t(t) * x.dp + c];
          }
        }
      }
      if (with_dq) store_dq_rows(x, 1.0f);
    }
  for (int64_t t = 0; t < keys; ++t) {
    store_grad_row<T>(p.dk, b, j0 + t, g, w.acc_k + size_t(t) * x.dp, p.dim, 1.0f);
    store_grad_row<T>(p.dv, b, j0 + t, g, w.acc_v + size_t(t) * x.dvp, p.dim_v, 1.0f);
  }
}

template <typename T>
void dkv_item(const BackwardParams& p, const BackwardKernels& bk, int64_t item, char* slice) {
  const int64_t ck = p.key_chunk, k_chunks = (p.seq_k + ck - 1) / ck;
  TileWorker<T> x(p, bk, Lanes::keys, slice);
  x.read_parked_dsums = x.dsums_parkable();
  const int64_t bg = item / k_chunks, j0 = item % k_chunks * ck;
  dkv_chunk(x, bg / p.heads_kv, bg % p.heads_kv, j0, std::min(ck, p.seq_k - j0), false);
}

// Passes 1 and 2 in one, with FlashAttention-2's loop order (5 GEMMs instead of 7): per (batch, kv
// head), the key chunks in order, each adding its dS K to the dq rows of the query tiles that see
// it. dq itself holds the running sums (f32), so the memory stays constant, and each dq element
// is summed over its keys in key order as pass 2 sums it: the gradients are pass 1 and 2's, bit
// for bit (BackwardDeterminism tests). D is recomputed per tile from O and dO, since nothing can
// be parked in dq; rows with coarse lse, dbias and decode-shaped calls keep the passes.
template <typename T>
void fused_item(const BackwardParams& p, const BackwardKernels& bk, int64_t item, char* slice) {
  TileWorker<T> x(p, bk, Lanes::keys, slice);
  x.key_rows_too = true;
  const int64_t b = item / p.heads_kv, g = item % p.heads_kv, ck = p.key_chunk;
  for (int64_t h = g * p.group; h < (g + 1) * p.group; ++h)
    for (int64_t i = 0; i < p.seq_q; ++i) {
      T* row = const_cast<T*>(p.dq.at<T>(b, i, h));
      for (int64_t c = 0; c < p.dim; ++c) row[c * p.dq.stride[3]] = Elem<T>::store(0.0f);
    }
  for (int64_t j0 = 0; j0 < p.seq_k; j0 += ck) dkv_chunk(x, b, g, j0, std::min(ck, p.seq_k - j0), true);
  const float mul = x.dq_scale();
  if (mul == 1.0f) return;
  for (int64_t h = g * p.group; h < (g + 1) * p.group; ++h)
    for (int64_t i0 = 0; i0 < p.seq_q; i0 += p.query_chunk) {
      x.b = b, x.h = h, x.i0 = i0, x.rows = std::min(p.query_chunk, p.seq_q - i0);
      load_dq_rows(x);
      store_dq_rows(x, mul);
    }
}

template <typename T>
void dq_item(const BackwardParams& p, const BackwardKernels& bk, int64_t item, char* slice) {
  const int64_t cq = p.query_chunk, ck = p.key_chunk;
  const int64_t q_chunks = (p.seq_q + cq - 1) / cq;
  const DqOwners own = dq_owners(p);
  const bool banded = p.causal || p.window_left >= 0 || p.window_right >= 0;
  // The item's dbias rows: one row (queries broadcast) or its query chunk; one column (keys
  // broadcast) or all keys.
  const bool one_row = p.bias_broadcast(2), one_col = p.bias_broadcast(3);
  const int64_t db_cols = one_col ? 1 : p.seq_k;
  TileWorker<T> x(p, bk, Lanes::queries, slice);
  x.read_parked_dsums = x.dsums_parkable();
  const FlashBackwardSlices& w = x.w;
  const int64_t xb = item / (own.heads * own.chunks), xh = item / own.chunks % own.heads;
  // Under causal or window masks later query chunks see more keys: hand them out first.
  const int64_t xq = banded && own.chunks > 1 ? own.chunks - 1 - item % own.chunks : item % own.chunks;
  const bool all_b = own.batch != p.batch, all_h = own.heads != p.heads_q, all_q = own.chunks != q_chunks;
  const int64_t db_rows = one_row ? 1 : std::min(cq, p.seq_q - xq * cq);
  if (p.has_dbias) std::fill_n(w.dbias, size_t(db_rows * db_cols), 0.0f);

  for (int64_t b = all_b ? 0 : xb; b < (all_b ? p.batch : xb + 1); ++b)
    for (int64_t h = all_h ? 0 : xh; h < (all_h ? p.heads_q : xh + 1); ++h)
      for (int64_t qc = all_q ? 0 : xq; qc < (all_q ? q_chunks : xq + 1); ++qc) {
        const int64_t i0 = qc * cq, g = h / p.group;
        x.load_queries(b, h, i0, std::min(cq, p.seq_q - i0));
        x.read_lse_corrections();  // before this item overwrites them with the dq rows
        const size_t rows = size_t(x.rows);
        std::fill_n(w.acc_k, rows * x.dp, 0.0f);
        const int64_t first = p.key_begin(i0), last = p.key_end(i0 + x.rows - 1);
        for (int64_t j0 = first / ck * ck; j0 < last; j0 += ck) {
          const int64_t keys = std::min(ck, p.seq_k - j0);
          bool full;
          if (!x.find_live(j0, keys, full)) continue;
          const bool keys_finite = x.load_key_rows(g, j0, keys, false);
          x.probs_and_dscores(j0, keys, full);
          // dbias is dS itself: summed before dS takes the scale.
          if (p.has_dbias)
            for (int64_t r = 0; r < x.rows; ++r) {
              if (x.dead(r)) continue;
              float* row = w.dbias + size_t((one_row ? 0 : r) * db_cols);
              for (int64_t t = std::max<int64_t>(x.key_lo(r, j0), 0); t < std::min(x.key_hi(r, j0), keys); ++t)
                if (p.mask_allows(b, h, i0 + r, j0 + t)) row[one_col ? 0 : j0 + t] += w.dpt[x.at(r, t)];
            }
          x.chain_softcap(keys);
          x.scale_tile(w.dpt, keys);
          if (x.tile_finite && keys_finite) {
            // dQ += dS K, dS read transposed (the scale in dS, or applied at the store).
            x.lane_gradient(w.dpt, keys, w.k, w.xp16, x.dp, w.acc_k);
            continue;
          }
          x.load_fallback_operands(g, j0, keys);
          for (int64_t r = 0; r < x.rows; ++r) {
            if (x.dead(r)) continue;
            for (int64_t t = std::max<int64_t>(x.key_lo(r, j0), 0); t < std::min(x.key_hi(r, j0), keys); ++t) {
              if (!p.mask_allows(b, h, i0 + r, j0 + t)) continue;
              const float ds = w.dpt[x.at(r, t)];
              for (size_t c = 0; c < x.d; ++c) w.acc_k[size_t(r) * x.dp + c] += ds * w.k[size_t(t) * x.dp + c];
            }
          }
        }
        for (int64_t r = 0; r < x.rows; ++r)
          store_grad_row<T>(p.dq, b, i0 + r, h, w.acc_k + size_t(r) * x.dp, p.dim, x.dq_scale());
      }
  if (!p.has_dbias) return;
  const int64_t bb = p.bias_broadcast(0) ? 0 : xb, bh = p.bias_broadcast(1) ? 0 : xh;
  for (int64_t r = 0; r < db_rows; ++r)
    for (int64_t j = 0; j < db_cols; ++j)
      store_dbias(p, bb, bh, one_row ? 0 : xq * cq + r, j, w.dbias[size_t(r * db_cols + j)]);
}

// dsinks[h] = -sum_{b,i} exp(sink_h - lse) D, with D = rowsum(dO * O) in f64, from forward's lse
// (which holds the sink) plus the correction the lse pass parked in dq for a coarse one, as the
// gradient passes read them: so it runs before pass 2 overwrites dq. One item per head, batches
// and rows summed in order, so deterministic for any thread count; no workspace. Rows with lse
// -inf (none from forward with sinks) add nothing.
template <typename T>
void dsinks_pass(const BackwardParams& p) {
  parallel_for_items(p.heads_q, p.threads, nullptr, 0, [&](int64_t h, char*) {
    const double sink = p.sink(h);
    double sum = 0;
    for (int64_t b = 0; b < p.batch; ++b)
      for (int64_t i = 0; i < p.seq_q; ++i) {
        const float lse32 = *p.lse.at<float>(b, h, i);
        if (lse32 == -kPosInf) continue;
        const double lse =
            double(lse32) + (coarse_lse_row<T>(p, lse32) ? double(Elem<T>::load(*p.dq.at<T>(b, i, h))) : 0.0);
        const T* dout = p.dout.at<T>(b, i, h);
        const T* out = p.out.at<T>(b, i, h);
        double dsum = 0;
        for (int64_t c = 0; c < p.dim_v; ++c)
          dsum += double(Elem<T>::load(dout[c * p.dout.stride[3]])) * double(Elem<T>::load(out[c * p.out.stride[3]]));
        sum += std::exp(sink - lse) * dsum;
      }
    *const_cast<float*>(p.dsinks.at<float>(0, h, 0)) = float(-sum);
  });
}

// Can the fused pass take these parts? f32 dq rows to sum in, GEMM scores, no dbias (pass 2's
// items accumulate it) and no row whose lse gets a correction (parked in dq by the lse pass);
// then the planner's choice (fused_backward_fits).
template <typename T>
bool fused_runs(const BackwardParts& parts) {
  if constexpr (!std::is_same_v<T, float>) return false;
  for (const BackwardParams& p : parts) {
    if (p.has_dbias || p.scores_by_dot) return false;
    for (int64_t b = 0; b < p.batch; ++b)
      for (int64_t h = 0; h < p.heads_q; ++h)
        for (int64_t i = 0; i < p.seq_q; ++i)
          if (coarse_lse_row<T>(p, *p.lse.at<float>(b, h, i))) return false;
  }
  return fused_backward_fits(parts);
}

}  // namespace

// The passes in order, each over every part: a part's dK/dV pass needs its lse pass's parked
// values, its dQ pass reads them back. Or the fused pass alone, where it runs.
template <typename T>
void flash_backward(const BackwardParts& parts, const BackwardKernels& bk, void* workspace) {
  if (fused_runs<T>(parts)) {
    if (parts.front().has_dsinks) dsinks_pass<T>(parts.front());  // reads no dq: no coarse rows
    run_pass(parts, parts, workspace, fused_items, [&](const BackwardParams& p, int64_t item, char* slice) {
      fused_item<T>(p, bk, item, slice);
    });
    return;
  }
  run_pass(parts, parts, workspace, lse_items, [&](const BackwardParams& p, int64_t item, char* slice) {
    lse_item<T>(p, bk, item, slice);
  });
  run_pass(parts, parts, workspace, dkv_items, [&](const BackwardParams& p, int64_t item, char* slice) {
    dkv_item<T>(p, bk, item, slice);
  });
  // dsinks reads the lse corrections the dq pass overwrites; a dense call is one part (varlen
  // calls do not take dsinks, see backward()).
  if (parts.front().has_dsinks) dsinks_pass<T>(parts.front());
  BackwardParts dq_parts;
  for (const BackwardParams& p : parts) dq_parts.push_back(dq_pass_params(p));
  run_pass(parts, dq_parts, workspace, [](const BackwardParams& p) { return dq_owners(p).items(); },
           [&](const BackwardParams& p, int64_t item, char* slice) { dq_item<T>(p, bk, item, slice); });
}

template void flash_backward<float>(const BackwardParts&, const BackwardKernels&, void*);
template void flash_backward<bf16>(const BackwardParts&, const BackwardKernels&, void*);
template void flash_backward<f16>(const BackwardParts&, const BackwardKernels&, void*);

}  // namespace memattn::detail
