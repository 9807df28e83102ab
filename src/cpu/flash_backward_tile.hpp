// The flash backward's per-worker tile state: one query tile (Q, pre-scaled when |scale| <= 1; dO,
// the softmax shift and D = rowsum(dO * O)) against one key chunk, and the recomputation of P and
// dS on it.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "common/rowops.hpp"
#include "cpu/flash_backward_kernels.hpp"
#include "cpu/rows.hpp"
#include "plan/backward_plan.hpp"

namespace memattn::detail {

constexpr float kPosInf = std::numeric_limits<float>::infinity();

// An f32 lse L is off by up to |L| u (u = 2^-24), and P = exp(s - lse) inherits that as one
// relative error shared by the whole row; the naive backward's P is off by a few u. Past
// |L| = 16 (8 u) a row is given a correction c = L - lse, from one sweep over its keys before
// the gradient passes: in 40 seeds of issue 10's example (|L| up to 235) dV's error was up to 48x
// the naive backward's (median 7x) without it, and 1x (median) with it.
// The threshold scales with the dtype's own rounding, which P's error is measured against: bf16
// and f16 rows need the correction only from |L| = 2^20 and 2^17 (bf16 q = k = v = 133120 puts
// L near 7e10, where log(sum) vanishes from the lse entirely and P would come out 8x too large).
template <typename T>
constexpr float kCoarseLse =
    std::is_same_v<T, bf16> ? 0x1p20f : std::is_same_v<T, f16> ? 0x1p17f : 16.0f;

// What the SIMD lanes of the score tiles hold. Pass 1 (one key chunk, many query tiles) keeps
// keys in the lanes: S = Q K^T against K^T packed once per item, so a query tile is loaded as
// plain rows. Pass 2 (one query tile, many key chunks) keeps queries in the lanes: S^T = K Q^T,
// with Q^T packed once and each key chunk loaded as plain rows.
enum class Lanes { keys, queries };

template <typename T>
struct TileWorker {
  const BackwardParams& p;
  const Kernels& kern;
  const BackwardKernels& bk;
  const Lanes lanes;
  FlashBackwardSlices w;
  size_t d, dv, dp, dvp, cqp, ckp;
  int64_t b = 0, h = 0, i0 = 0, rows = 0;  // the query tile held
  bool tile_finite = true;                 // every live row's Q, dO, lse and D is finite
  // Where the scale enters, by the forward's rule (flash_forward.cpp's scale_after_dot_): with
  // |scale| <= 1 the queries are pre-scaled, which cannot overflow (S = (scale Q) K^T,
  // dK += dS^T (scale Q), dQ = scale (dS K) at the store). With |scale| > 1, scale * q may
  // overflow where the scores are finite (scale 1e20, q ~ 1e20, k ~ 1e-38), so the queries stay
  // unscaled and the scale multiplies two tiles instead: S after Q K^T (smaller than the scores),
  // and dS before dK += dS^T Q and dQ += dS K, as Base_f32 does. Every term of those sums is then
  // a term of the gradient itself, finite where it is, and scale * dS is no smaller than dS;
  // scaling dS K at the store instead would first drop dq to f32 subnormals (dS * 1e-38 there).
  const bool scale_after_dot;

  TileWorker(const BackwardParams& p_, const BackwardKernels& bk_, Lanes lanes_, char* slice)
      : p(p_), kern(*p_.kernels), bk(bk_), lanes(lanes_),
        scale_after_dot(std::fabs(p_.scale) > 1.0f) {
    Carver c(slice);
    w = FlashBackwardSlices::carve(p, c);
    d = size_t(p.dim), dv = size_t(p.dim_v);
    dp = pad_floats(d), dvp = pad_floats(dv);
    cqp = pad_floats(size_t(p.query_chunk)), ckp = pad_floats(size_t(p.key_chunk));
  }

  // Index of (query row r, key t) in a score tile of layout l.
  size_t at(Lanes l, int64_t r, int64_t t) const {
    return l == Lanes::queries ? size_t(t) * cqp + size_t(r) : size_t(r) * ckp + size_t(t);
  }
  size_t at(int64_t r, int64_t t) const { return at(lanes, r, t); }
  bool dead(int64_t r) const { return w.shift[r] == kPosInf; }
  int64_t key_lo(int64_t r, int64_t j0) const { return p.key_begin(i0 + r) - j0; }
  int64_t key_hi(int64_t r, int64_t j0) const { return p.key_end(i0 + r) - j0; }
  bool visible(int64_t r, int64_t j0, int64_t t) const {
    return t >= key_lo(r, j0) && t < key_hi(r, j0) && p.mask_allows(b, h, i0 + r, j0 + t);
  }

  // Loads rows [i0, i0 + rows) of (b, h): Q (times the scale unless it comes after the dot
  // products) and dO (rows, or transposed when queries are the lanes), the softmax shift (lse, with
  // correction 0) and D. A fully masked row (lse = -inf) stays all zero with shift +inf, so its P
  // and dS are exactly 0 and nothing it holds can reach a gradient.
  void load_queries(int64_t b_, int64_t h_, int64_t i0_, int64_t rows_) {
    b = b_, h = h_, i0 = i0_, rows = rows_;
    const bool transposed = lanes == Lanes::queries;
    if (transposed) {
      std::fill_n(w.qt, d * cqp, 0.0f);
      std::fill_n(w.doutt, dv * cqp, 0.0f);
    } else {
      std::fill_n(w.q, size_t(rows) * dp, 0.0f);
      std::fill_n(w.dout, size_t(rows) * dvp, 0.0f);
    }
    std::fill_n(w.shift, cqp, kPosInf);
    std::fill_n(w.corr, cqp, 0.0f);
    std::fill_n(w.dsum, cqp, 0.0f);
    tile_finite = true;
    const float q_scale = scale_after_dot ? 1.0f : p.scale;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = i0 + r;
      const float lse = *p.lse.at<float>(b, h, i);
      if (lse == -kPosInf) continue;
      float* q = transposed ? w.row : w.q + size_t(r) * dp;
      tile_finite &= load_row(kern, p.q.at<T>(b, i, h), p.q.stride[3], d, q);
      for (size_t c = 0; c < d; ++c) {
        q[c] *= q_scale;
        tile_finite &= std::isfinite(q[c]);
        if (transposed) w.qt[c * cqp + size_t(r)] = q[c];
      }
      float* dout = transposed ? w.row : w.dout + size_t(r) * dvp;
      tile_finite &= load_row(kern, p.dout.at<T>(b, i, h), p.dout.stride[3], dv, dout);
      const T* o = p.out.at<T>(b, i, h);
      float dsum = 0.0f;
      for (size_t c = 0; c < dv; ++c) {
        if (transposed) w.doutt[c * cqp + size_t(r)] = dout[c];
        dsum += dout[c] * Elem<T>::load(o[int64_t(c) * p.out.stride[3]]);
      }
      w.shift[r] = lse;
      w.dsum[r] = dsum;
      tile_finite &= std::isfinite(lse) && std::isfinite(dsum);
    }
  }

  // Does a row with this lse get a correction? It is parked in the row's first dq element (dq is
  // written only by the last pass), so that its memory stays constant in n: with dim = 0 there is
  // nowhere to park it.
  bool coarse_lse(float lse) const {
    return p.dim > 0 && std::fabs(lse) > kCoarseLse<T> && std::isfinite(lse);
  }
  T* parked_correction(int64_t r) const { return const_cast<T*>(p.dq.at<T>(b, i0 + r, h)); }

  // Whether any row of the tile (b, h, [i0, i0 + rows)) gets a correction.
  bool any_coarse_lse(int64_t b_, int64_t h_, int64_t i0_, int64_t rows_) const {
    for (int64_t i = i0_; i < i0_ + rows_; ++i)
      if (coarse_lse(*p.lse.at<float>(b_, h_, i))) return true;
    return false;
  }

  // The gradient passes: the corrections parked by the lse pass, for the tile loaded.
  void read_lse_corrections() const {
    for (int64_t r = 0; r < rows; ++r)
      if (coarse_lse(w.shift[r])) w.corr[r] = Elem<T>::load(*parked_correction(r));
  }

  // The lse pass (queries in the lanes), on the tile loaded: c = L - lse, L the row's log-sum-exp
  // over the scores this backward computes, for every row that gets one, parked in its dq row.
  // One online-softmax sweep (the forward's softmax step) with the running max started at the
  // lse: then c = (max(lse, max s) - lse) + log(sum exp(s - max)), both terms near 0 where the lse
  // is merely rounded (no cancellation of two terms of size log Sk), and nothing overflows where
  // it is far off. The scores come from the GEMM pass 2 uses, so the corrected probabilities of a
  // row sum to 1 within the sum's own rounding, whatever rounding the forward's scores had.
  // Rounded to T when parked: for bf16 and f16 that adds at most |c| u_T, below the rounding of a
  // score of magnitude past their threshold. A correction that is not finite (NaN scores, or an
  // lse above every score by more than exp's range, which no forward gives) is 0: the lse as given.
  void park_lse_corrections() const {
    std::copy_n(w.shift, cqp, w.row_max);
    std::fill_n(w.row_sum, cqp, 0.0f);
    const int64_t ck = p.key_chunk, g = h / p.group;
    for (int64_t j0 = p.key_begin(i0) / ck * ck; j0 < p.key_end(i0 + rows - 1); j0 += ck) {
      const int64_t keys = std::min(ck, p.seq_k - j0);
      bool full;
      if (!find_live(j0, keys, full)) continue;
      for (int64_t t = 0; t < keys; ++t) {
        float* k = w.k + size_t(t) * dp;
        if (w.live[t]) load_row(kern, p.k.at<T>(b, j0 + t, g), p.k.stride[3], d, k);
        else std::fill_n(k, dp, 0.0f);
      }
      kern.gemm({w.k, dp, 1, w.qt, cqp, w.st, cqp, size_t(keys), cqp, d, false});
      scale_tile(w.st, keys);
      mask_and_bias(Lanes::queries, j0, keys, full);
      kern.softmax_step(w.st, size_t(keys), cqp, 1.0f, w.row_max, w.row_sum, w.alpha);
    }
    for (int64_t r = 0; r < rows; ++r) {
      if (!coarse_lse(w.shift[r])) continue;
      const float c = (w.row_max[r] - w.shift[r]) + std::log(w.row_sum[r]);
      *parked_correction(r) = Elem<T>::store(std::isfinite(c) ? c : 0.0f);
    }
  }

  // Marks in w.live the keys of [j0, j0 + keys) that some live row of the tile sees; returns
  // false if none. Sets `full` when every row sees every key (no per-element masking needed).
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

  // Loads key j0 + t of kv head g: as row t of w.k and w.v (queries in the lanes) or as column t
  // of w.kt and w.vt (keys in the lanes). False if any value is not finite.
  bool load_key(int64_t g, int64_t j0, int64_t t) const {
    const bool rows_out = lanes == Lanes::queries;
    float* k = rows_out ? w.k + size_t(t) * dp : w.row;
    bool finite = load_row(kern, p.k.at<T>(b, j0 + t, g), p.k.stride[3], d, k);
    if (!rows_out)
      for (size_t c = 0; c < d; ++c) w.kt[c * ckp + size_t(t)] = k[c];
    float* v = rows_out ? w.v + size_t(t) * dvp : w.row;
    finite &= load_row(kern, p.v.at<T>(b, j0 + t, g), p.v.stride[3], dv, v);
    if (!rows_out)
      for (size_t c = 0; c < dv; ++c) w.vt[c * ckp + size_t(t)] = v[c];
    return finite;
  }

  // The scale applied after the dot products (see scale_after_dot), to a tile of the worker's
  // layout over `keys` keys: the scores before the bias is added, or dS.
  void scale_tile(float* t, int64_t keys) const {
    if (!scale_after_dot) return;
    const size_t n = lanes == Lanes::queries ? size_t(keys) * cqp : size_t(rows) * ckp;
    for (size_t i = 0; i < n; ++i) t[i] *= p.scale;
  }

  // What dS K is multiplied by when dQ is stored.
  float dq_scale() const { return scale_after_dot ? 1.0f : p.scale; }

  // Adds the bias to a score tile of layout l and sets masked pairs to -inf.
  void mask_and_bias(Lanes l, int64_t j0, int64_t keys, bool full) const {
    if (full && !p.has_bias) return;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t t = 0; t < keys; ++t) {
        float& s = w.st[at(l, r, t)];
        if (!full && !visible(r, j0, t)) s = kNegInf;
        else if (p.has_bias) s += bias_at<float>(p, b, h, i0 + r, j0 + t);
      }
  }

  // Scores with bias and masks, dP = dO V^T, then P and dS in place (w.st, w.dpt); dS does not
  // carry the scale yet.
  void probs_and_dscores(int64_t j0, int64_t keys, bool full) const {
    const size_t kn = size_t(keys), rn = size_t(rows);
    if (lanes == Lanes::queries) {
      kern.gemm({w.k, dp, 1, w.qt, cqp, w.st, cqp, kn, cqp, d, false});
      scale_tile(w.st, keys);
      mask_and_bias(lanes, j0, keys, full);
      kern.gemm({w.v, dvp, 1, w.doutt, cqp, w.dpt, cqp, kn, cqp, dv, false});
      bk.probs_dscores(w.st, w.dpt, kn, cqp, w.shift, w.corr, w.dsum);
    } else {
      kern.gemm({w.q, dp, 1, w.kt, ckp, w.st, ckp, rn, ckp, d, false});
      scale_tile(w.st, keys);
      mask_and_bias(lanes, j0, keys, full);
      kern.gemm({w.dout, dvp, 1, w.vt, ckp, w.dpt, ckp, rn, ckp, dv, false});
      bk.probs_dscores_rows(w.st, w.dpt, rn, ckp, w.shift, w.corr, w.dsum);
    }
  }
};

}  // namespace memattn::detail
