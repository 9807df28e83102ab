// The f32 FMA tile family: Q^T, K and V as f32 (converted from bf16/f16 inputs), scores and P V
// on the SIMD f32 GEMM of the selected Highway target (decode groups of few rows: scores as dot
// products, Params::scores_by_dot).
#pragma once

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "common/half.hpp"
#include "cpu/rows.hpp"
#include "cpu/tile_family.hpp"

namespace memattn::detail {

// T: the queries' (and the output's) dtype; Kv: the keys' and values' (a bf16/f16 KV cache read by
// f32 queries converts its rows as it packs them).
template <typename T, typename KvT = T>
class F32Family {
 public:
  using Kv = KvT;
  struct Slices {
    float* qt;     // dim x pad(query_chunk): the query rows, transposed (lanes = queries)
    float* qs;     // query_chunk x dim: the query rows as f32 (only when the scores are dot products)
    float* q_row;  // dim: one query row converted to f32 on its way into qt
    float* k;      // key_chunk x dim: the key chunk as f32, when it cannot be read in place
    float* v;      // key_chunk x pad(dim_v): the value chunk as f32, zero-padded
    float* pvt;    // kValueBlock x pad(query_chunk): value columns of one chunk's P V, transposed
    static Slices carve(const Params& p, Carver& c) {
      const size_t cqp = pad_floats(size_t(p.query_chunk)), ck = size_t(p.key_chunk);
      const size_t d = size_t(p.dim), dv = size_t(p.dim_v), dvp = pad_floats(dv);
      return {c.take<float>(checked_mul(d, cqp)), c.take<float>(p.scores_by_dot ? checked_mul(d, size_t(p.query_chunk)) : 0),
              c.take<float>(d), c.take<float>(checked_mul(ck, d)),
              c.take<float>(checked_mul(ck, dvp)), c.take<float>(checked_mul(std::min(dv, kValueBlock), cqp))};
    }
  };

  F32Family(const Params& p, const FlashSlices& w, const Slices& s)
      : p_(p), w_(w), s_(s), kern_(*p.kernels), d_(size_t(p.dim)), dv_(size_t(p.dim_v)),
        cqp_(pad_floats(size_t(p.query_chunk))), dvp_(pad_floats(dv_)),
        scale_after_dot_(std::fabs(p.scale) > 1.0f), value_copy_pays_(value_copy_pays()),
        dot_scores_(p.scores_by_dot) {}

  // Pre-scaled f32 queries overflow where |scale| > 1 meets |q| > FLT_MAX / |scale| although the
  // scores are finite (scale 1e20, q ~ 1e20, k ~ 1e-38); such a scale multiplies the dot products
  // instead, which are then smaller than the scores. |scale| <= 1 (the common case) pre-scales,
  // which cannot overflow, and stays exact where the unscaled q.k is not a float (scale 1e-38,
  // q ~ 1e30, k ~ 1e9).
  bool scale_after_dot() const { return scale_after_dot_; }

  void load_queries(const Chunk& c) {
    // dot_scores writes the rows' lanes of the scores only; the rest stay 0 for the softmax.
    if (dot_scores_) std::fill_n(w_.st, size_t(p_.key_chunk) * cqp_, 0.0f);
    else std::fill_n(s_.qt, d_ * cqp_, 0.0f);
    const float scale = scale_after_dot_ ? 1.0f : p_.scale;
    for (int64_t r = 0; r < c.rows; ++r) {
      load_row(kern_, p_.q.at<T>(c.b, c.query(r), c.head(r)), p_.q.stride[3], d_, s_.q_row);
      for (size_t k = 0; k < d_; ++k) {
        if (dot_scores_) s_.qs[size_t(r) * d_ + k] = scale * s_.q_row[k];
        else s_.qt[k * cqp_ + size_t(r)] = scale * s_.q_row[k];
      }
    }
  }

  void scores(const Chunk& c) {
    const size_t t0 = size_t(c.t0), keys = size_t(c.t1 - c.t0);
    // In place only with forward rows: the products step rows by an unsigned pitch.
    const bool in_place = kInPlace && c.all_read && c.one_pitch && p_.k.stride[3] == 1 && p_.k.stride[1] >= 0;
    const void* k = s_.k + t0 * d_;
    size_t k_row = d_;
    if (in_place) {
      k = p_.key_row<Kv>(c.b, c.j0 + c.t0, c.g);
      k_row = size_t(p_.k.stride[1]);
    } else {
      for (int64_t t = c.t0; t < c.t1; ++t) {
        float* kt = s_.k + size_t(t) * d_;
        if (c.key_read(t)) load_row(kern_, p_.key_row<Kv>(c.b, c.j0 + t, c.g), p_.k.stride[3], d_, kt);
        else std::fill_n(kt, d_, 0.0f);
      }
    }
    float* st = w_.st + t0 * cqp_;
    if (dot_scores_)
      return kern_.dot_scores({k, k_row, in_place && std::is_same_v<Kv, bf16>, keys, s_.qs, d_, size_t(c.rows), d_, st, cqp_});
    product({k, k_row, 1, s_.qt, cqp_, st, cqp_, keys, cqp_, d_, false}, in_place ? Operand::a : Operand::none);
  }

  // Can the item's heads walk this chunk key by key (Kernels::walk_scores, walk_values; see
  // walk_chunk in flash_forward.cpp)? Scores by dot products, every row sees every key, K and V
  // rows read in place at one pitch, value rows without padding.
  bool key_walk(const Chunk& c) const {
    return dot_scores_ && kInPlace && c.full && c.one_pitch && p_.k.stride[3] == 1 && p_.k.stride[1] >= 0 &&
           p_.v.stride[3] == 1 && p_.v.stride[1] >= 0 && dv_ == dvp_;
  }
  WalkHead walk_head(const Chunk& c) const {
    return {p_.key_row<Kv>(c.b, c.j0, c.g), p_.value_row<Kv>(c.b, c.j0, c.g), s_.qs, w_.st, w_.acc, nullptr, nullptr};
  }

  // Key blocks of P V add into acc in key order as the whole chunk does, which the transposed
  // product (a chunk's sum added at once) does not.
  bool key_blocks(const Chunk& c) const { return !values_transposed(size_t(c.rows), dv_, 0.0); }

  bool accumulate_values(const Chunk& c) {
    const bool transposed = values_transposed(size_t(c.rows), dv_, 0.0);
    // V is copied into the slice, where that pays, even where its rows could be read in place: at
    // a row pitch of a multiple of 2 KiB (BSHD, all heads in a row) a head's rows share a few
    // cache sets, and on a Sapphire Rapids class Xeon (1 thread, n = 4096, d = 128) the P V loop
    // then waited on L3: the copy took the forward from 45-52% to 56-60% of the FMA peak.
    // Copying K as well gained nothing more there (its product runs over the head dim, in rows).
    // Grouped (decode) items read each value row once, so there is no reuse for the copy to
    // protect, and the copy's stores alias the loads of rows at a 4 KiB pitch; nor does the copy
    // pay on every CPU (value_copy_pays). Read in place there, where every row sees every key
    // (NaN and Inf then reach every row, as they should) and the chunk's rows are at one pitch
    // (one page of a paged cache).
    const bool in_place = kInPlace && (p_.grouped || !value_copy_pays_) && c.full && c.one_pitch &&
                          p_.v.stride[3] == 1 && p_.v.stride[1] >= 0 && (transposed || dv_ == dvp_);
    const Kv* v_row = in_place ? p_.value_row<Kv>(c.b, c.j0 + c.t0, c.g) : nullptr;
    const float* v_copy = s_.v + size_t(c.t0) * dvp_;
    const size_t ldv = in_place ? size_t(p_.v.stride[1]) : dvp_;
    const auto v_col = [&](size_t col) -> const void* {
      return in_place ? static_cast<const void*>(v_row + col) : v_copy + col;
    };
    bool finite = true;
    if (!in_place)
      for (int64_t t = c.t0; t < c.t1; ++t) {
        float* vt = s_.v + size_t(t) * dvp_;
        std::fill(vt + dv_, vt + dvp_, 0.0f);
        if (c.key_read(t)) finite &= load_row(kern_, p_.value_row<Kv>(c.b, c.j0 + t, c.g), p_.v.stride[3], dv_, vt);
        else std::fill_n(vt, dv_, 0.0f);
      }
    if (!c.full && !finite) return false;
    const size_t rows = size_t(c.rows), keys = size_t(c.t1 - c.t0);
    if (transposed) {
      accumulate_transposed(kern_, dv_, rows, s_.pvt, cqp_, w_.acc, dvp_, [&](size_t c0, size_t m) {
        product({v_col(c0), 1, ldv, w_.st, cqp_, s_.pvt, cqp_, m, pad_floats(rows), keys, false},
                in_place ? Operand::a : Operand::none);
      });
    } else {
      product({w_.st + size_t(c.t0) * cqp_, 1, cqp_, v_col(0), ldv, w_.acc, dvp_, rows, dvp_, keys, true},
              in_place ? Operand::b : Operand::none);
    }
    return true;
  }

 private:
  // K and V rows read in place where they allow it: f32 rows as they are, bf16 rows widened as the
  // products read them (Kernels::gemm_bf16, the same bits as converted copies); f16 rows are
  // always converted into the slice.
  static constexpr bool kInPlace = std::is_same_v<Kv, float> || std::is_same_v<Kv, bf16>;
  enum class Operand { none, a, b };  // the product's operand read in place from the cache

  void product(const GemmArgs& g, Operand in_place) const {
    if constexpr (std::is_same_v<Kv, bf16>)
      if (in_place != Operand::none)
        return kern_.gemm_bf16(g, in_place == Operand::a ? Bf16Operand::a : Bf16Operand::b);
    kern_.gemm(g);
  }

  const Params& p_;
  const FlashSlices& w_;
  const Slices s_;
  const Kernels& kern_;
  const size_t d_, dv_, cqp_, dvp_;
  const bool scale_after_dot_, value_copy_pays_;
  // Calls of few queries score by dot products (Params::scores_by_dot): their rows would fill few
  // of the GEMM's lanes.
  const bool dot_scores_;
};

}  // namespace memattn::detail
