// flash backward driver (FlashAttention-2's recomputation from lse, no Nq x Nk matrix), in two
// passes so that every gradient element is summed by one thread in a fixed order:
//   pass 1, per (batch, kv head, key chunk): dK and dV of the chunk over every query row of the
//           group's heads that sees it;
//   pass 2, per (batch, head, query chunk): dQ of the chunk (and the item's dbias rows),
//           recomputing S and dP.
// Pass 2 recomputes two of pass 1's four GEMMs (7 GEMMs instead of 5): that is the price of a
// deterministic, atomic-free reduction of dQ with constant memory. Tiles are transposed as in the
// forward (lanes = query rows), so lse and D = rowsum(dO * O) are per-lane vectors.
#include "cpu/flash_backward.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/rowops.hpp"
#include "plan/backward_plan.hpp"

namespace memattn::detail {
namespace {

constexpr float kPosInf = std::numeric_limits<float>::infinity();

constexpr DType dtype_of(float) { return DType::f32; }
constexpr DType dtype_of(bf16) { return DType::bf16; }
constexpr DType dtype_of(f16) { return DType::f16; }

// One row of n elements at `src` (element stride `stride`) into f32; false if any is not finite.
template <typename T>
bool load_row(const Kernels& kern, const T* src, int64_t stride, size_t n, float* dst) {
  if (stride == 1) return kern.to_f32(src, dtype_of(T{}), dst, n);
  bool finite = true;
  for (size_t c = 0; c < n; ++c) finite &= std::isfinite(dst[c] = Elem<T>::load(src[int64_t(c) * stride]));
  return finite;
}

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

// One worker's state: the planned sizes, its workspace slice and the query tile it holds.
template <typename T>
struct Worker {
  const BackwardParams& p;
  const Kernels& kern;
  const BackwardKernels& bk;
  FlashBackwardSlices w;
  size_t d, dv, dp, dvp, cqp;
  int64_t b = 0, h = 0, i0 = 0, rows = 0;  // the query tile in w.q/qt/dout/doutt/lse/dsum
  bool tile_finite = true;                 // every live row's Q, dO, lse and D is finite

  Worker(const BackwardParams& p_, const BackwardKernels& bk_, char* slice)
      : p(p_), kern(*p_.kernels), bk(bk_) {
    Carver c(slice);
    w = FlashBackwardSlices::carve(p, c);
    d = size_t(p.dim), dv = size_t(p.dim_v);
    dp = pad_floats(d), dvp = pad_floats(dv), cqp = pad_floats(size_t(p.query_chunk));
  }

  bool dead(int64_t r) const { return w.lse[r] == kPosInf; }
  int64_t key_lo(int64_t r, int64_t j0) const { return p.key_begin(i0 + r) - j0; }
  int64_t key_hi(int64_t r, int64_t j0) const { return p.key_end(i0 + r) - j0; }
  bool visible(int64_t r, int64_t j0, int64_t t) const {
    return t >= key_lo(r, j0) && t < key_hi(r, j0) && p.mask_allows(b, h, i0 + r, j0 + t);
  }

  // Loads rows [i0, i0 + rows) of (b, h): scale * Q and dO transposed (and as rows when
  // `with_rows`), lse and D per lane. A fully masked row (lse = -inf) is left all zero with lse
  // +inf, so its P and dS are exactly 0 and nothing it holds can reach a gradient.
  void load_queries(int64_t b_, int64_t h_, int64_t i0_, int64_t rows_, bool with_rows) {
    b = b_, h = h_, i0 = i0_, rows = rows_;
    std::fill_n(w.qt, d * cqp, 0.0f);
    std::fill_n(w.doutt, dv * cqp, 0.0f);
    std::fill_n(w.lse, cqp, kPosInf);
    std::fill_n(w.dsum, cqp, 0.0f);
    if (with_rows) {
      std::fill_n(w.q, size_t(rows) * dp, 0.0f);
      std::fill_n(w.dout, size_t(rows) * dvp, 0.0f);
    }
    tile_finite = true;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = i0 + r;
      const float lse = *p.lse.at<float>(b, h, i);
      if (lse == -kPosInf) continue;
      float* q = with_rows ? w.q + size_t(r) * dp : w.row;
      tile_finite &= load_row(kern, p.q.at<T>(b, i, h), p.q.stride[3], d, q);
      for (size_t c = 0; c < d; ++c) w.qt[c * cqp + size_t(r)] = q[c] *= p.scale;
      float* dout = with_rows ? w.dout + size_t(r) * dvp : w.row;
      tile_finite &= load_row(kern, p.dout.at<T>(b, i, h), p.dout.stride[3], dv, dout);
      const T* o = p.out.at<T>(b, i, h);
      float dsum = 0.0f;
      for (size_t c = 0; c < dv; ++c) {
        w.doutt[c * cqp + size_t(r)] = dout[c];
        dsum += dout[c] * Elem<T>::load(o[int64_t(c) * p.out.stride[3]]);
      }
      w.lse[r] = lse;
      w.dsum[r] = dsum;
      tile_finite &= std::isfinite(lse) && std::isfinite(dsum);
    }
    if (!tile_finite) return;
    for (int64_t r = 0; r < rows; ++r)
      for (size_t c = 0; c < d; ++c) tile_finite &= std::isfinite(w.qt[c * cqp + size_t(r)]);
  }

  // Marks in w.live the keys of [j0, j0 + keys) that some row of the tile sees; returns false if
  // none. Sets `full` when every row sees every key (no per-element masking needed).
  bool find_live(int64_t j0, int64_t keys, bool& full) const {
    const int64_t last = i0 + rows - 1;
    full = !p.has_mask && p.key_begin(last) <= j0 && p.key_end(i0) >= j0 + keys;
    if (full) {
      std::fill_n(w.live, keys, uint8_t(1));
      return true;
    }
    std::fill_n(w.live, keys, uint8_t(0));
    bool any = false;
    for (int64_t r = 0; r < rows; ++r) {
      if (dead(r)) continue;
      for (int64_t t = std::max<int64_t>(key_lo(r, j0), 0); t < std::min(key_hi(r, j0), keys); ++t)
        if (p.mask_allows(b, h, i0 + r, j0 + t)) w.live[t] = 1, any = true;
    }
    return any;
  }

  // Loads key j0 + t into row t of w.k and w.v (zero-padded); false if any value is not finite.
  bool load_key(int64_t g, int64_t j0, int64_t t) const {
    float* k = w.k + size_t(t) * dp;
    float* v = w.v + size_t(t) * dvp;
    std::fill(k + d, k + dp, 0.0f);
    std::fill(v + dv, v + dvp, 0.0f);
    const bool kf = load_row(kern, p.k.at<T>(b, j0 + t, g), p.k.stride[3], d, k);
    return load_row(kern, p.v.at<T>(b, j0 + t, g), p.v.stride[3], dv, v) && kf;
  }

  // S^T = K (scale Q)^T with bias and masks, dP^T = V dO^T, then P^T and dS^T in place.
  void probs_and_dscores(int64_t j0, int64_t keys, bool full) const {
    const size_t kn = size_t(keys);
    kern.gemm({w.k, dp, 1, w.qt, cqp, w.st, cqp, kn, cqp, d, false});
    if (!full || p.has_bias)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t t = 0; t < keys; ++t) {
          float& s = w.st[size_t(t) * cqp + size_t(r)];
          if (!full && !visible(r, j0, t)) s = kNegInf;
          else if (p.has_bias) s += bias_at<float>(p, b, h, i0 + r, j0 + t);
        }
    kern.gemm({w.v, dvp, 1, w.doutt, cqp, w.dpt, cqp, kn, cqp, dv, false});
    bk.probs_dscores(w.st, w.dpt, kn, cqp, w.lse, w.dsum);
  }
};

template <typename T>
void dkv_pass(const BackwardParams& p, const BackwardKernels& bk, void* ws, size_t slice_bytes) {
  const int64_t cq = p.query_chunk, ck = p.key_chunk;
  const int64_t k_chunks = (p.seq_k + ck - 1) / ck;
  parallel_backward_items(dkv_items(p), backward_workers(p), ws, slice_bytes, [&](int64_t item, char* slice) {
    Worker<T> x(p, bk, slice);
    const FlashBackwardSlices& w = x.w;
    const int64_t bg = item / k_chunks, b = bg / p.heads_kv, g = bg % p.heads_kv;
    const int64_t j0 = item % k_chunks * ck, keys = std::min(ck, p.seq_k - j0);
    const size_t kn = size_t(keys);
    std::fill_n(w.k, kn * x.dp, 0.0f);
    std::fill_n(w.v, kn * x.dvp, 0.0f);
    std::fill_n(w.acc_k, kn * x.dp, 0.0f);
    std::fill_n(w.acc_v, kn * x.dvp, 0.0f);
    std::fill_n(w.packed, kn, uint8_t(0));
    bool keys_finite = true;  // over every key loaded so far (zero rows for the others)

    // Rows whose visible range meets the chunk: key bounds are monotone in the row.
    const int64_t i_lo = first_row(p.seq_q, [&](int64_t i) { return p.key_end(i) > j0; });
    const int64_t i_hi = first_row(p.seq_q, [&](int64_t i) { return p.key_begin(i) >= j0 + keys; });
    for (int64_t h = g * p.group; h < (g + 1) * p.group; ++h)
      for (int64_t i0 = i_lo / cq * cq; i0 < i_hi; i0 += cq) {
        x.load_queries(b, h, i0, std::min(cq, p.seq_q - i0), true);
        bool full;
        if (!x.find_live(j0, keys, full)) continue;
        // Keys are loaded the first time a row sees them: keys nobody sees are never read.
        for (int64_t t = 0; t < keys; ++t)
          if (w.live[t] && !w.packed[t]) keys_finite &= x.load_key(g, j0, t), w.packed[t] = 1;
        x.probs_and_dscores(j0, keys, full);
        const size_t rows = size_t(x.rows);
        if (x.tile_finite && keys_finite) {
          x.kern.gemm({w.st, x.cqp, 1, w.dout, x.dvp, w.acc_v, x.dvp, kn, x.dvp, rows, true});
          x.kern.gemm({w.dpt, x.cqp, 1, w.q, x.dp, w.acc_k, x.dp, kn, x.dp, rows, true});
          continue;
        }
        // A NaN/Inf input times a masked pair's zero must not reach the gradient: visible pairs
        // only, as the reference sums them.
        for (int64_t r = 0; r < x.rows; ++r) {
          if (x.dead(r)) continue;
          for (int64_t t = std::max<int64_t>(x.key_lo(r, j0), 0); t < std::min(x.key_hi(r, j0), keys); ++t) {
            if (!p.mask_allows(b, h, i0 + r, j0 + t)) continue;
            const float pv = w.st[size_t(t) * x.cqp + size_t(r)], ds = w.dpt[size_t(t) * x.cqp + size_t(r)];
            for (size_t c = 0; c < x.dv; ++c) w.acc_v[size_t(t) * x.dvp + c] += pv * w.dout[size_t(r) * x.dvp + c];
            for (size_t c = 0; c < x.d; ++c) w.acc_k[size_t(t) * x.dp + c] += ds * w.q[size_t(r) * x.dp + c];
          }
        }
      }
    for (int64_t t = 0; t < keys; ++t) {
      store_grad_row<T>(p.dk, b, j0 + t, g, w.acc_k + size_t(t) * x.dp, p.dim, 1.0f);
      store_grad_row<T>(p.dv, b, j0 + t, g, w.acc_v + size_t(t) * x.dvp, p.dim_v, 1.0f);
    }
  });
}

template <typename T>
void dq_pass(const BackwardParams& p, const BackwardKernels& bk, void* ws, size_t slice_bytes) {
  const int64_t cq = p.query_chunk, ck = p.key_chunk;
  const int64_t q_chunks = (p.seq_q + cq - 1) / cq;
  const DqOwners own = dq_owners(p);
  const bool banded = p.causal || p.window_left >= 0 || p.window_right >= 0;
  // The item's dbias rows: one row (queries broadcast) or its query chunk; one column (keys
  // broadcast) or all keys.
  const bool one_row = p.bias_broadcast(2), one_col = p.bias_broadcast(3);
  const int64_t db_cols = one_col ? 1 : p.seq_k;
  parallel_backward_items(own.items(), backward_workers(p), ws, slice_bytes, [&](int64_t item, char* slice) {
    Worker<T> x(p, bk, slice);
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
          x.load_queries(b, h, i0, std::min(cq, p.seq_q - i0), false);
          const size_t rows = size_t(x.rows);
          std::fill_n(w.acc_k, rows * x.dp, 0.0f);
          const int64_t first = p.key_begin(i0), last = p.key_end(i0 + x.rows - 1);
          for (int64_t j0 = first / ck * ck; j0 < last; j0 += ck) {
            const int64_t keys = std::min(ck, p.seq_k - j0);
            bool full;
            if (!x.find_live(j0, keys, full)) continue;
            bool keys_finite = true;
            for (int64_t t = 0; t < keys; ++t) {
              if (w.live[t]) keys_finite &= x.load_key(g, j0, t);
              else std::fill_n(w.k + size_t(t) * x.dp, x.dp, 0.0f), std::fill_n(w.v + size_t(t) * x.dvp, x.dvp, 0.0f);
            }
            x.probs_and_dscores(j0, keys, full);
            if (x.tile_finite && keys_finite) {
              x.kern.gemm({w.dpt, 1, x.cqp, w.k, x.dp, w.acc_k, x.dp, rows, x.dp, size_t(keys), true});
            } else {
              for (int64_t r = 0; r < x.rows; ++r) {
                if (x.dead(r)) continue;
                for (int64_t t = std::max<int64_t>(x.key_lo(r, j0), 0); t < std::min(x.key_hi(r, j0), keys); ++t) {
                  if (!p.mask_allows(b, h, i0 + r, j0 + t)) continue;
                  const float ds = w.dpt[size_t(t) * x.cqp + size_t(r)];
                  for (size_t c = 0; c < x.d; ++c) w.acc_k[size_t(r) * x.dp + c] += ds * w.k[size_t(t) * x.dp + c];
                }
              }
            }
            if (!p.has_dbias) continue;
            for (int64_t r = 0; r < x.rows; ++r) {
              if (x.dead(r)) continue;
              float* row = w.dbias + size_t((one_row ? 0 : r) * db_cols);
              for (int64_t t = std::max<int64_t>(x.key_lo(r, j0), 0); t < std::min(x.key_hi(r, j0), keys); ++t)
                if (p.mask_allows(b, h, i0 + r, j0 + t)) row[one_col ? 0 : j0 + t] += w.dpt[size_t(t) * x.cqp + size_t(r)];
            }
          }
          for (int64_t r = 0; r < x.rows; ++r)
            store_grad_row<T>(p.dq, b, i0 + r, h, w.acc_k + size_t(r) * x.dp, p.dim, p.scale);
        }
    if (!p.has_dbias) return;
    const int64_t bb = p.bias_broadcast(0) ? 0 : xb, bh = p.bias_broadcast(1) ? 0 : xh;
    for (int64_t r = 0; r < db_rows; ++r)
      for (int64_t j = 0; j < db_cols; ++j)
        store_dbias(p, bb, bh, one_row ? 0 : xq * cq + r, j, w.dbias[size_t(r * db_cols + j)]);
  });
}

}  // namespace

template <typename T>
void flash_backward(const BackwardParams& p, const BackwardKernels& bk, void* workspace) {
  Carver sizer;
  FlashBackwardSlices::carve(p, sizer);
  dkv_pass<T>(p, bk, workspace, sizer.used());
  dq_pass<T>(p, bk, workspace, sizer.used());
}

template void flash_backward<float>(const BackwardParams&, const BackwardKernels&, void*);
template void flash_backward<bf16>(const BackwardParams&, const BackwardKernels&, void*);
template void flash_backward<f16>(const BackwardParams&, const BackwardKernels&, void*);

}  // namespace memattn::detail
