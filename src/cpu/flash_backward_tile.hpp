// The flash backward's per-worker tile state: one query tile (Q, pre-scaled when |scale| <= 1; dO,
// the softmax shift and D = rowsum(dO * O)) against one key chunk, the recomputation of P and dS
// on it, and the tile's products, on the f32 GEMM or (bf16 path) on vdpbf16ps.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "common/rowops.hpp"
#include "cpu/amx_backward.hpp"
#include "cpu/amx_tiles.hpp"
#include "cpu/bf16_dot.hpp"
#include "cpu/bf16_dot_backward.hpp"
#include "cpu/flash_backward_kernels.hpp"
#include "cpu/rows.hpp"
#include "cpu/score_modifiers.hpp"
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

// Does a row with this lse get a correction? It is parked in the row's first dq element (dq is
// written only by the last pass), so that its memory stays constant in n: with dim = 0 there is
// nowhere to park it.
template <typename T>
bool coarse_lse_row(const Params& p, float lse) {
  return p.dim > 0 && std::fabs(lse) > kCoarseLse<T> && std::isfinite(lse);
}

// What the SIMD lanes of the score tiles hold. Pass 1 (one key chunk, many query tiles) keeps
// keys in the lanes: S = Q K^T against K^T packed once per item, so a query tile is loaded as
// plain rows. Pass 2 (one query tile, many key chunks) keeps queries in the lanes: S^T = K Q^T,
// with Q^T packed once and each key chunk loaded as plain rows. Either way a tile's products are
// S = X_rows X_lanes^T and dP = Y_rows Y_lanes^T (X: q or k, Y: dO or v), and the gradients of
// the lane side sum over the row side: dV += P^T dO, dK += dS^T Q (pass 1), dQ += dS K (pass 2).
enum class Lanes { keys, queries };

// Does a strided row of v have its elements side by side, rows at increasing addresses (what the
// dot kernels read in place)?
inline bool contiguous_rows(const View& v) { return v.stride[3] == 1 && v.stride[1] >= 0; }

template <typename T>
struct TileWorker {
  const BackwardParams& p;
  const Kernels& kern;
  const BackwardKernels& bk;
  const Lanes lanes;
  // The bf16 path's kernels (uses_bf16_backward), else null. Its products take bf16 operands (the
  // inputs exactly; P and dS rounded to nearest even) and sum in f32 on vdpbf16ps, or on AMX tiles
  // (uses_amx_backward: the same operands, AMX's A operands from amx_*); Q, dO, K and V go from
  // their bf16 bits straight into the products' layouts, and f32 copies are made only for the
  // element-wise fallback of tiles with non-finite values.
  const Bf16DotKernels* const dot16;
  const Bf16BackwardKernels* const pack16;
  const TileFamily family;
  const AmxTileScope tiles;
  FlashBackwardSlices w;
  size_t d, dv, dp, dvp, cqp, ckp;
  size_t ld;       // the score tiles' row length: ckp (keys in the lanes) or cqp
  size_t de, dve;  // d and dv rounded up to whole pairs: the bf16 rows' lengths
  int64_t b = 0, h = 0, i0 = 0, rows = 0;  // the query tile held
  bool tile_finite = true;                 // every live row's Q, dO, lse and D is finite
  // bf16 path: the first operands of S and dP (rows of x and y, see Lanes), packed in x16 and y16
  // or a key chunk read in place, with their row strides; whether the query tile's f32 rows are
  // loaded (the fallback loads them on first use).
  const uint16_t* x_rows = nullptr;
  const uint16_t* y_rows = nullptr;
  size_t x_stride = 0, y_stride = 0;
  bool f32_query_rows = false;
  // Where the scale enters, by the forward's rule (flash_forward.cpp's scale_after_dot_): with
  // |scale| <= 1 the queries are pre-scaled, which cannot overflow (S = (scale Q) K^T,
  // dK += dS^T (scale Q), dQ = scale (dS K) at the store). With |scale| > 1, scale * q may
  // overflow where the scores are finite (scale 1e20, q ~ 1e20, k ~ 1e-38), so the queries stay
  // unscaled and the scale multiplies two tiles instead: S after Q K^T (smaller than the scores),
  // and dS before dK += dS^T Q and dQ += dS K, as Base_f32 does. Every term of those sums is then
  // a term of the gradient itself, finite where it is, and scale * dS is no smaller than dS;
  // scaling dS K at the store instead would first drop dq to f32 subnormals (dS * 1e-38 there).
  // The bf16 path always scales after, as the forward's does: Q enters the products as its exact
  // input values, and the scores are the forward's bit for bit.
  const bool scale_after_dot;
  // The f32 products score by dot products where the forward does (Params::scores_by_dot), with
  // the lane side of S (w.qt or w.kt) as plain rows of d floats.
  const bool dot_scores;

  TileWorker(const BackwardParams& p_, const BackwardKernels& bk_, Lanes lanes_, char* slice)
      : p(p_), kern(*p_.kernels), bk(bk_), lanes(lanes_),
        dot16(std::is_same_v<T, bf16> && uses_bf16_backward(p_) ? bf16_dot_kernels() : nullptr),
        pack16(dot16 ? bf16_backward_kernels() : nullptr),
        family(dot16 ? p_.family : TileFamily::f32_fma), tiles(family),
        scale_after_dot(dot16 != nullptr || std::fabs(p_.scale) > 1.0f),
        dot_scores(dot16 == nullptr && p_.scores_by_dot) {
    Carver c(slice);
    w = FlashBackwardSlices::carve(p, c);
    d = size_t(p.dim), dv = size_t(p.dim_v);
    dp = pad_floats(d), dvp = pad_floats(dv);
    cqp = pad_floats(size_t(p.query_chunk)), ckp = pad_floats(size_t(p.key_chunk));
    ld = lanes == Lanes::keys ? ckp : cqp;
    de = pad_pairs(d), dve = pad_pairs(dv);
  }

  // Index of (query row r, key t) in a score tile of layout l.
  size_t at(Lanes l, int64_t r, int64_t t) const {
    return l == Lanes::queries ? size_t(t) * cqp + size_t(r) : size_t(r) * ckp + size_t(t);
  }
  size_t at(int64_t r, int64_t t) const { return at(lanes, r, t); }
  bool dead(int64_t r) const { return w.shift[r] == kPosInf; }
  int64_t key_lo(int64_t r, int64_t j0) const { return p.key_begin(i0 + r) - j0; }
  int64_t key_hi(int64_t r, int64_t j0) const { return p.key_end(i0 + r) - j0; }

  // Loads rows [i0, i0 + rows) of (b, h): Q (times the scale unless it comes after the dot
  // products) and dO (rows, or transposed when queries are the lanes), the softmax shift (lse, with
  // correction 0) and D. A fully masked row (lse = -inf) stays all zero with shift +inf, so its P
  // and dS are exactly 0 and nothing it holds can reach a gradient.
  void load_queries(int64_t b_, int64_t h_, int64_t i0_, int64_t rows_) {
    b = b_, h = h_, i0 = i0_, rows = rows_;
    std::fill_n(w.shift, cqp, kPosInf);
    std::fill_n(w.corr, cqp, 0.0f);
    std::fill_n(w.dsum, cqp, 0.0f);
    tile_finite = true;
    for (int64_t r = 0; r < rows; ++r) {
      const float lse = *p.lse.at<float>(b, h, i0 + r);
      if (lse == -kPosInf) continue;
      w.shift[r] = lse;
      tile_finite &= std::isfinite(lse);
    }
    if (lanes == Lanes::queries) clear_lane_side();
    if (dot16) return load_queries16();
    tile_finite &= load_f32_query_rows();
    for (int64_t r = 0; r < rows; ++r) {
      if (dead(r)) continue;
      const float* dout = w.dout + size_t(r) * dvp;
      if (lanes == Lanes::queries) {
        put_score_lane(w.q + size_t(r) * dp, size_t(r), w.qt);
        put_lane(dout, dv, size_t(r), w.doutt);
      }
      w.dsum[r] = read_parked_dsums ? parked_dsum(i0 + r) : row_dsum(i0 + r, dout, nullptr);
      tile_finite &= std::isfinite(w.dsum[r]);
    }
  }

  // The live rows' Q (scaled as load_queries says) and dO into w.q and w.dout, dead rows zero;
  // false if any is not finite.
  bool load_f32_query_rows() {
    std::fill_n(w.q, size_t(rows) * dp, 0.0f);
    std::fill_n(w.dout, size_t(rows) * dvp, 0.0f);
    const float q_scale = scale_after_dot ? 1.0f : p.scale;
    bool finite = true;
    for (int64_t r = 0; r < rows; ++r) {
      if (dead(r)) continue;
      float* q = w.q + size_t(r) * dp;
      finite &= load_row(kern, p.q.at<T>(b, i0 + r, h), p.q.stride[3], d, q);
      for (size_t c = 0; c < d; ++c) {
        q[c] *= q_scale;
        finite &= std::isfinite(q[c]);
      }
      finite &= load_row(kern, p.dout.at<T>(b, i0 + r, h), p.dout.stride[3], dv, w.dout + size_t(r) * dvp);
    }
    f32_query_rows = true;
    return finite;
  }

  // Row (b_, i, h_) of a bf16 operand as contiguous bits: in place, or gathered into scratch row
  // `slot` of w.g16 when its elements are strided.
  const uint16_t* bits_row(const View& v, int64_t b_, int64_t i, int64_t h_, size_t n, int slot) const {
    const uint16_t* src = reinterpret_cast<const uint16_t*>(v.at<T>(b_, i, h_));
    if (v.stride[3] == 1) return src;
    uint16_t* row = w.g16 + size_t(slot) * std::max(d, dv);
    for (size_t c = 0; c < n; ++c) row[c] = src[int64_t(c) * v.stride[3]];
    return row;
  }

  // load_queries on the bf16 path, by pairs of rows (the pairs of rows of xp16 and yp16 want
  // both): D from the bf16 rows of dO and O, Q and dO into the lane side's pairs (queries in the
  // lanes) or into x16, y16 and the pairs of rows xp16, yp16 (keys in the lanes).
  void load_queries16() {
    const bool transposed = lanes == Lanes::queries;
    for (int64_t r = 0; r < rows; r += 2) {
      const uint16_t* q[2] = {nullptr, nullptr};
      const uint16_t* dout[2] = {nullptr, nullptr};
      for (int64_t u = 0; u < 2 && r + u < rows; ++u) {
        if (dead(r + u)) continue;
        const int64_t i = i0 + r + u;
        q[u] = bits_row(p.q, b, i, h, d, int(2 * u));
        dout[u] = bits_row(p.dout, b, i, h, dv, int(2 * u + 1));
        const float dsum = read_parked_dsums ? parked_dsum(i) : row_dsum(i, nullptr, dout[u]);
        w.dsum[r + u] = dsum;
        tile_finite &= std::isfinite(dsum);
        if (transposed) {
          tile_finite &= put_lane16(q[u], d, size_t(r + u), w.xt16);
          tile_finite &= put_lane16(dout[u], dv, size_t(r + u), w.yt16);
        }
      }
      if (transposed) continue;
      const size_t pr = size_t(r / 2);
      tile_finite &= pack16->pack_rows(q[0], q[1], d, w.xp16 + pr * 2 * dp, dp, w.x16 + size_t(r) * de,
                                       w.x16 + size_t(r + 1) * de, de);
      tile_finite &= pack16->pack_rows(dout[0], dout[1], dv, w.yp16 + pr * 2 * dvp, dvp,
                                       w.y16 + size_t(r) * dve, w.y16 + size_t(r + 1) * dve, dve);
    }
    f32_query_rows = false;
    if (!transposed) x_rows = w.x16, x_stride = de, y_rows = w.y16, y_stride = dve;
  }

  // The lane side's transposed operands (f32 tiles or bf16 pairs) all zero: lanes no live row or
  // key fills stay zero.
  void clear_lane_side() const {
    const bool keys = lanes == Lanes::keys;
    if (dot16) {
      std::fill_n(w.xt16, de * ld, uint16_t(0));
      std::fill_n(w.yt16, dve * ld, uint16_t(0));
    } else {
      std::fill_n(keys ? w.kt : w.qt, d * ld, 0.0f);
      std::fill_n(keys ? w.vt : w.doutt, dv * ld, 0.0f);
    }
  }

  // Lane l of a lane-side f32 operand t32 (n x ld) from the row src[0..n).
  void put_lane(const float* src, size_t n, size_t l, float* t32) const {
    for (size_t c = 0; c < n; ++c) t32[c * ld + l] = src[c];
  }

  // Lane l of the lane side of S (w.qt or w.kt, d x ld) from the row src[0..d): transposed, or
  // row l for dot_scores.
  void put_score_lane(const float* src, size_t l, float* t32) const {
    if (dot_scores) std::copy_n(src, d, t32 + l * d);
    else put_lane(src, d, l, t32);
  }

  // Lane l of a lane-side bf16 operand t16 (pad_pairs(n) / 2 x ld pairs) from the bf16 bits
  // src[0..n); false if any is NaN or infinite (all exponent bits set).
  bool put_lane16(const uint16_t* src, size_t n, size_t l, uint16_t* t16) const {
    bool finite = true;
    for (size_t c = 0; c < n; ++c) {
      t16[((c / 2) * ld + l) * 2 + c % 2] = src[c];
      finite &= (src[c] & 0x7f80u) != 0x7f80u;
    }
    return finite;
  }

  // D = rowsum(dO * O) of query row i of the tile's (b, h), as the products see dO: on the bf16
  // path from its bf16 bits (`dout16`, contiguous, vdpbf16ps), else from dO converted to f32
  // (`dout`, dv floats).
  float row_dsum(int64_t i, const float* dout, const uint16_t* dout16) const {
    if (dot16) return pack16->row_dot(dout16, bits_row(p.out, b, i, h, dv, 4), dv);
    const T* o = p.out.at<T>(b, i, h);
    float dsum = 0.0f;
    for (size_t c = 0; c < dv; ++c) dsum += dout[c] * Elem<T>::load(o[int64_t(c) * p.out.stride[3]]);
    return dsum;
  }

  // D is computed once per row, by the lse pass, and parked as its f32 bits in the row's dq
  // elements 1 .. kDsumSlots (dq is written only by the last pass; element 0 holds the lse
  // correction): the gradient passes load a query tile once per key chunk, and recomputing D on
  // each load (reading O's rows again) took 11% of the AMX backward (d = 128, n = 4096, Sapphire
  // Rapids class Xeon). Heads too narrow to hold it (dim <= kDsumSlots) recompute it.
  static constexpr int64_t kDsumSlots = int64_t(sizeof(float) / sizeof(T));
  bool dsums_parkable() const { return p.dim > kDsumSlots; }
  bool read_parked_dsums = false;  // set by the gradient passes when dsums_parkable()
  bool key_rows_too = false;       // the fused pass: load_key also keeps K's rows in w.k (f32)

  // Parks D of the live rows of (b_, h_, [i0_, i0_ + rows_)).
  void park_dsums(int64_t b_, int64_t h_, int64_t i0_, int64_t rows_) {
    b = b_, h = h_, i0 = i0_, rows = rows_;
    for (int64_t i = i0; i < i0 + rows; ++i) {
      if (*p.lse.at<float>(b, h, i) == -kPosInf) continue;  // a dead row's D is never read
      const uint16_t* dout16 = dot16 ? bits_row(p.dout, b, i, h, dv, 1) : nullptr;
      if (!dot16) load_row(kern, p.dout.at<T>(b, i, h), p.dout.stride[3], dv, w.row);
      const float dsum = row_dsum(i, w.row, dout16);
      uint32_t bits;
      std::memcpy(&bits, &dsum, sizeof bits);
      for (int64_t s = 0; s < kDsumSlots; ++s) {
        const auto part = static_cast<std::conditional_t<sizeof(T) == 4, uint32_t, uint16_t>>(bits >> (16 * s));
        std::memcpy(dq_element(i, 1 + s), &part, sizeof(T));
      }
    }
  }
  float parked_dsum(int64_t i) const {
    uint32_t bits = 0;
    for (int64_t s = 0; s < kDsumSlots; ++s) {
      std::conditional_t<sizeof(T) == 4, uint32_t, uint16_t> part;
      std::memcpy(&part, dq_element(i, 1 + s), sizeof(T));
      bits |= uint32_t(part) << (16 * s);
    }
    float dsum;
    std::memcpy(&dsum, &bits, sizeof dsum);
    return dsum;
  }
  T* dq_element(int64_t i, int64_t c) const { return const_cast<T*>(p.dq.at<T>(b, i, h, c)); }

  bool coarse_lse(float lse) const { return coarse_lse_row<T>(p, lse); }
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
  // it is far off. The scores come from the products pass 2 uses, so the corrected probabilities
  // of a row sum to 1 within the sum's own rounding, whatever rounding the forward's scores had.
  // Rounded to T when parked: for bf16 and f16 that adds at most |c| u_T, below the rounding of a
  // score of magnitude past their threshold. A correction that is not finite (NaN scores, or an
  // lse above every score by more than exp's range, which no forward gives) is 0: the lse as given.
  void park_lse_corrections() {
    std::copy_n(w.shift, cqp, w.row_max);
    std::fill_n(w.row_sum, cqp, 0.0f);
    const int64_t ck = p.key_chunk, g = h / p.group;
    for (int64_t j0 = p.key_begin(i0) / ck * ck; j0 < p.key_end(i0 + rows - 1); j0 += ck) {
      const int64_t keys = std::min(ck, p.seq_k - j0);
      bool full;
      if (!find_live(j0, keys, full)) continue;
      load_key_rows(g, j0, keys, true);
      scores(keys);
      mask_and_bias(Lanes::queries, j0, keys, full);
      kern.softmax_step(w.st, size_t(keys), cqp, 1.0f, w.row_max, w.row_sum, w.alpha);
    }
    // The forward's lse holds the sink too (row_max >= lse >= sink: no overflow).
    if (p.has_sinks)
      for (int64_t r = 0; r < rows; ++r) w.row_sum[r] += std::exp(p.sink(h) - w.row_max[r]);
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
      const int64_t lo = std::max<int64_t>(key_lo(r, j0), 0), hi = std::min(key_hi(r, j0), keys);
      if (dead(r) || lo >= hi) continue;
      if (!p.has_mask) {
        std::fill(w.live + lo, w.live + hi, uint8_t(1));
        any = true;
        continue;
      }
      for (int64_t t = lo; t < hi; ++t)
        if (p.mask_allows(b, h, i0 + r, j0 + t)) w.live[t] = 1, any = true;
    }
    return any;
  }

  // Keys in the lanes: loads key j0 + t of kv head g as lane t of the lane side (w.kt and w.vt,
  // or their bf16 pairs). False if any value is not finite.
  bool load_key(int64_t g, int64_t j0, int64_t t) const {
    if (dot16)
      return put_lane16(bits_row(p.k, b, j0 + t, g, d, 0), d, size_t(t), w.xt16) &
             put_lane16(bits_row(p.v, b, j0 + t, g, dv, 1), dv, size_t(t), w.yt16);
    bool finite = load_row(kern, p.k.at<T>(b, j0 + t, g), p.k.stride[3], d, w.row);
    put_score_lane(w.row, size_t(t), w.kt);
    if (key_rows_too) std::copy_n(w.row, d, w.k + size_t(t) * dp);
    finite &= load_row(kern, p.v.at<T>(b, j0 + t, g), p.v.stride[3], dv, w.row);
    put_lane(w.row, dv, size_t(t), w.vt);
    return finite;
  }

  // Queries in the lanes: the chunk's keys as the row side (their values too unless `keys_only`),
  // live ones loaded and the others zero (never read). False if a loaded value is not finite.
  bool load_key_rows(int64_t g, int64_t j0, int64_t keys, bool keys_only) {
    if (dot16) return load_key_rows16(g, j0, keys, keys_only);
    bool finite = true;
    for (int64_t t = 0; t < keys; ++t) {
      float* k = w.k + size_t(t) * dp;
      float* v = w.v + size_t(t) * dvp;
      if (!w.live[t]) {
        std::fill_n(k, dp, 0.0f);
        std::fill_n(v, dvp, 0.0f);
        continue;
      }
      finite &= load_row(kern, p.k.at<T>(b, j0 + t, g), p.k.stride[3], d, k);
      if (!keys_only) finite &= load_row(kern, p.v.at<T>(b, j0 + t, g), p.v.stride[3], dv, v);
    }
    return finite;
  }

  // load_key_rows on the bf16 path, by pairs of keys: K into the pairs of rows of xp16 (dQ's
  // second operand), K and V rows read in place by S^T and dP^T where the chunk's rows are
  // contiguous, of even length and all live (keys nobody sees are never read), else packed into
  // x16 and y16.
  bool load_key_rows16(int64_t g, int64_t j0, int64_t keys, bool keys_only) {
    const bool all_live = std::all_of(w.live, w.live + keys, [](uint8_t l) { return l != 0; });
    const bool k_in_place = all_live && contiguous_rows(p.k) && d % 2 == 0;
    const bool v_in_place = all_live && contiguous_rows(p.v) && dv % 2 == 0;
    x_rows = k_in_place ? reinterpret_cast<const uint16_t*>(p.k.at<T>(b, j0, g)) : w.x16;
    x_stride = k_in_place ? size_t(p.k.stride[1]) : de;
    y_rows = v_in_place ? reinterpret_cast<const uint16_t*>(p.v.at<T>(b, j0, g)) : w.y16;
    y_stride = v_in_place ? size_t(p.v.stride[1]) : dve;
    bool finite = true;
    for (int64_t t = 0; t < keys; t += 2) {
      const uint16_t* k[2] = {nullptr, nullptr};
      const uint16_t* v[2] = {nullptr, nullptr};
      for (int64_t u = 0; u < 2 && t + u < keys; ++u) {
        if (!w.live[t + u]) continue;
        k[u] = bits_row(p.k, b, j0 + t + u, g, d, int(u));
        if (!keys_only) v[u] = bits_row(p.v, b, j0 + t + u, g, dv, int(2 + u));
      }
      uint16_t* const x16 = k_in_place ? nullptr : w.x16 + size_t(t) * de;
      finite &= pack16->pack_rows(k[0], k[1], d, w.xp16 + size_t(t / 2) * 2 * dp, dp, x16,
                                  x16 ? x16 + de : nullptr, de);
      if (keys_only) continue;
      uint16_t* const y16 = v_in_place ? nullptr : w.y16 + size_t(t) * dve;
      finite &= pack16->pack_rows(v[0], v[1], dv, nullptr, 0, y16, y16 ? y16 + dve : nullptr, dve);
    }
    return finite;
  }

  // The f32 operands the element-wise fallback reads, which the bf16 path's products do not: the
  // query tile's rows (keys in the lanes; once per tile) or the chunk's live key rows.
  void load_fallback_operands(int64_t g, int64_t j0, int64_t keys) {
    if (!dot16) return;
    if (lanes == Lanes::keys) {
      if (!f32_query_rows) load_f32_query_rows();
      return;
    }
    for (int64_t t = 0; t < keys; ++t)
      if (w.live[t]) load_row(kern, p.k.at<T>(b, j0 + t, g), p.k.stride[3], d, w.k + size_t(t) * dp);
  }

  // The scale applied after the dot products (see scale_after_dot), to a tile of the worker's
  // layout over `keys` keys: the scores before the bias is added, or dS.
  void scale_tile(float* t, int64_t keys) const {
    if (scale_after_dot) bk.scale(t, row_count(keys) * ld, p.scale);
  }

  // What dS K is multiplied by when dQ is stored.
  float dq_scale() const { return scale_after_dot ? 1.0f : p.scale; }

  // The score tile's rows and lanes in use against `keys` keys: (rows, keys) in pass 1, (keys,
  // rows) with queries in the lanes.
  size_t row_count(int64_t keys) const { return size_t(lanes == Lanes::keys ? rows : keys); }
  size_t lane_count(int64_t keys) const { return size_t(lanes == Lanes::keys ? keys : rows); }

  // The score modifiers on a (scaled) score tile of layout l, in the forward's order: the softcap
  // (keeping 1 - tanh^2 in w.capd for the chain rule), ALiBi and the bias, then -inf on masked
  // pairs: per row, the keys outside its causal/window interval, then the boolean mask's zeros
  // inside it. Each modifier present is its own pass over the tile.
  void mask_and_bias(Lanes l, int64_t j0, int64_t keys, bool full) const {
    if (p.has_softcap()) cap_scores(l, keys);
    if (p.has_alibi)
      for (int64_t r = 0; r < rows; ++r) {
        const float slope = p.slope(b, h);
        for (int64_t t = 0; t < keys; ++t) w.st[at(l, r, t)] -= slope * float(p.alibi_distance(i0 + r, j0 + t));
      }
    if (full && !p.has_bias) return;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t lo = full ? 0 : std::clamp<int64_t>(key_lo(r, j0), 0, keys);
      const int64_t hi = full ? keys : std::clamp<int64_t>(key_hi(r, j0), lo, keys);
      for (int64_t t = 0; t < lo; ++t) w.st[at(l, r, t)] = kNegInf;
      for (int64_t t = hi; t < keys; ++t) w.st[at(l, r, t)] = kNegInf;
      for (int64_t t = lo; t < hi; ++t) {
        float& s = w.st[at(l, r, t)];
        if (!full && !p.mask_allows(b, h, i0 + r, j0 + t)) s = kNegInf;
        else if (p.has_bias) s += bias_at<float>(p, b, h, i0 + r, j0 + t);
      }
    }
  }

  // s <- softcap * tanh(s / softcap) over the tile's rows and keys in layout l (as the forward
  // computes it), and w.capd <- 1 - tanh^2, ds/ds_raw. The tile's row side is contiguous lanes.
  void cap_scores(Lanes l, int64_t keys) const {
    const size_t ldl = l == Lanes::queries ? cqp : ckp;
    const size_t n = size_t(l == Lanes::queries ? keys : rows), lanes_n = size_t(l == Lanes::queries ? rows : keys);
    for (size_t i = 0; i < n; ++i) softcap_in_place(w.st + i * ldl, lanes_n, p.softcap, w.capd + i * ldl);
  }

  // dS (w.dpt) back through the softcap: times 1 - tanh^2 of its score. After dbias took dS (the
  // bias is added after the cap), before the scale.
  void chain_softcap(int64_t keys) const {
    if (!p.has_softcap()) return;
    const size_t lanes_n = lane_count(keys);
    for (size_t i = 0; i < row_count(keys); ++i)
      for (size_t t = 0; t < lanes_n; ++t) w.dpt[i * ld + t] *= w.capd[i * ld + t];
  }

  // The scores S = X_rows X_lanes^T into w.st (see Lanes), times the scale where it comes after
  // the dot products.
  void scores(int64_t keys) const {
    const size_t n = row_count(keys);
    const bool keys_in_lanes = lanes == Lanes::keys;
    const float* x = keys_in_lanes ? w.q : w.k;
    const float* x_lanes = keys_in_lanes ? w.kt : w.qt;
    if (dot16) rows_times_pairs(x_rows, x_stride, w.xt16, w.st, n, de);
    else if (dot_scores) kern.dot_scores({x, dp, false, n, x_lanes, d, ld, d, w.st, ld});
    else kern.gemm({x, dp, 1, x_lanes, ld, w.st, ld, n, ld, d, false});
    scale_tile(w.st, keys);
  }

  // dP = Y_rows Y_lanes^T into w.dpt (see Lanes).
  void dprobs(int64_t keys) const {
    const size_t n = row_count(keys);
    const bool keys_in_lanes = lanes == Lanes::keys;
    if (dot16) rows_times_pairs(y_rows, y_stride, w.yt16, w.dpt, n, dve);
    else kern.gemm({keys_in_lanes ? w.dout : w.v, dvp, 1, keys_in_lanes ? w.vt : w.doutt, ld, w.dpt, ld, n, ld, dv, false});
  }

  // Scores with bias and masks, dP, then P and dS in place (w.st, w.dpt); dS does not carry the
  // scale yet.
  void probs_and_dscores(int64_t j0, int64_t keys, bool full) const {
    scores(keys);
    mask_and_bias(lanes, j0, keys, full);
    dprobs(keys);
    if (lanes == Lanes::queries) bk.probs_dscores(w.st, w.dpt, size_t(keys), ld, w.shift, w.corr, w.dsum);
    else bk.probs_dscores_rows(w.st, w.dpt, size_t(rows), ld, w.shift, w.corr, w.dsum);
  }

  // A gradient of the lane side: acc[l][c] += sum over the row side's i of tile[i][l] r[i][c], for
  // the tile's lanes l (dV += P^T dO and dK += dS^T Q in pass 1, dQ += dS K in pass 2). r is the
  // row side's operand: f32 rows of ldr floats, or on the bf16 path r16's pairs of rows (ldr
  // pairs a row), against the tile rounded to bf16 pairs of rows.
  void lane_gradient(const float* tile, int64_t keys, const float* r, uint16_t* r16, size_t ldr, float* acc) const {
    const size_t n = row_count(keys), lanes_n = lane_count(keys);
    if (!dot16) return kern.gemm({tile, 1, ld, r, ldr, acc, ldr, lanes_n, ldr, n, true});
    const AmxBackwardScratch amx{w.amx_rows, w.amx_a, w.amx_c};
    if (family == TileFamily::amx_bf16) return amx_lane_gradient<AmxHardware>(tile, ld, n, lanes_n, r16, ldr, acc, amx);
    if (family == TileFamily::amx_bf16_emulated)
      return amx_lane_gradient<AmxEmulated>(tile, ld, n, lanes_n, r16, ldr, acc, amx);
    dot16->pair_rows_f32(tile, ld, n, w.tp16);
    dot16->pv(w.tp16, ld, r16, ldr, acc, lanes_n, (n + 1) / 2);
  }

  // The bf16 path's S or dP: c (n x ld) = the n rows of a (depth bf16 each, a_row apart) times the
  // lane side's pairs b.
  void rows_times_pairs(const uint16_t* a, size_t a_row, const uint16_t* b, float* c, size_t n, size_t depth) const {
    const AmxBackwardScratch amx{w.amx_rows, w.amx_a, w.amx_c};
    if (family == TileFamily::amx_bf16) return amx_rows_times_pairs<AmxHardware>(a, a_row, b, ld, c, n, depth, amx);
    if (family == TileFamily::amx_bf16_emulated)
      return amx_rows_times_pairs<AmxEmulated>(a, a_row, b, ld, c, n, depth, amx);
    dot16->scores(a, a_row, b, ld, c, n, depth);
  }
};

}  // namespace memattn::detail
