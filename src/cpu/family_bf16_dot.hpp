// The bf16 dot-product tile family (CPUs with AVX-512 BF16): Q, K, P and V stay bf16, in the
// pair layouts vdpbf16ps reduces, with f32 accumulation; an odd head dim gets one zero pair in the
// queries and its keys' last element is read alone.
#pragma once

#include <algorithm>
#include <cstring>

#include "common/half.hpp"
#include "cpu/bf16_dot.hpp"
#include "cpu/tile_family.hpp"

namespace memattn::detail {

class Bf16DotFamily {
 public:
  using Kv = bf16;  // keys and values in q's dtype
  // Key blocks of P V add into acc pair by pair in key order as the whole chunk does (blocks start
  // at even keys); the transposed product adds a chunk's sum at once. bf16 decode, seq_q 1, 32768
  // keys, Zen 4, alternating runs: 28.5-33.3 ms per call against 33.0-35.0 without key blocks (1
  // thread), 16.7-17.4 against 18.0-19.4 (2 threads); its V pairing still waits on the loads.
  bool key_blocks(const Chunk& c) const { return !values_transposed(size_t(c.rows), dv_, 0.25); }
  struct Slices {
    uint16_t* qt;       // the query rows as pairs [dim2/2][pad(query_chunk)][2], dim2 = dim rounded up to even
    uint16_t* k;        // key_chunk x dim2: the key chunk, packed
    uint16_t* v;        // value pairs [key_chunk/2 + 1][pad(dim_v)][2]
    uint16_t* p_pairs;  // probabilities as pairs [key_chunk/2 + 1][pad(query_chunk)][2]
    float* pvt;         // kValueBlock x pad(query_chunk): value columns of one chunk's P V, transposed
    static Slices carve(const Params& p, Carver& c) {
      const size_t cqp = pad_floats(size_t(p.query_chunk)), ck = size_t(p.key_chunk);
      const size_t d2 = even(size_t(p.dim)), dv = size_t(p.dim_v), dvp = pad_floats(dv);
      return {c.take<uint16_t>(checked_mul(d2, cqp)), c.take<uint16_t>(checked_mul(ck, d2)),
              c.take<uint16_t>(checked_mul(ck + 2, dvp)), c.take<uint16_t>(checked_mul(ck + 2, cqp)),
              c.take<float>(checked_mul(std::min(dv, kValueBlock), cqp))};
    }
  };

  Bf16DotFamily(const Params& p, const FlashSlices& w, const Slices& s)
      : p_(p), w_(w), s_(s), fkern_(*p.kernels), kern_(*p.kernels->bf16), d_(size_t(p.dim)), d2_(even(d_)),
        dv_(size_t(p.dim_v)), cqp_(pad_floats(size_t(p.query_chunk))), dvp_(pad_floats(dv_)) {}

  // bf16 queries cannot carry the scale exactly: it always multiplies the f32 dot products.
  bool scale_after_dot() const { return true; }

  void load_queries(const Chunk& c) {
    std::fill_n(s_.qt, d2_ * cqp_, uint16_t(0));
    for (int64_t r = 0; r < c.rows; ++r) {
      const bf16* q = p_.q.at<bf16>(c.b, c.query(r), c.head(r));
      for (size_t k = 0; k < d_; ++k)
        s_.qt[((k / 2) * cqp_ + size_t(r)) * 2 + k % 2] = q[int64_t(k) * p_.q.stride[3]].bits;
    }
  }

  // K is packed into contiguous rows even where it could be read in place: BSHD rows at a pitch
  // of a multiple of 2 KiB share a few cache sets, and on a Zen 5 (1 thread, n = 4096) the packed
  // chunk made the forward's vector work per unit of softmax work 16% smaller at d = 64 and at
  // d = 128 (three alternating sampled runs each; the f32 family showed no difference).
  void scores(const Chunk& c) {
    // Grouped (decode) items read each key row once: no reuse for the packed copy to serve, and
    // the copy's loads stalled on memory one row at a time. Read in place there (forward rows at
    // one pitch), the GEMM's loads of six rows at once overlap: bf16 decode, seq_q = 1, 32768
    // keys, 1 thread, Zen 4: 32-33 ms against 47-59 ms per call (three alternating runs).
    const size_t t0 = size_t(c.t0), keys = size_t(c.t1 - c.t0);
    float* st = w_.st + t0 * cqp_;
    if (p_.grouped && c.all_read && c.one_pitch && p_.k.stride[3] == 1 && p_.k.stride[1] >= 0) {
      const auto* k = reinterpret_cast<const uint16_t*>(p_.key_row<bf16>(c.b, c.j0 + c.t0, c.g));
      kern_.gemm(k, size_t(p_.k.stride[1]), 2, s_.qt, 2 * cqp_, st, cqp_, keys, cqp_ / 16, d_, false);
      return;
    }
    for (int64_t t = c.t0; t < c.t1; ++t) {
      uint16_t* kt = s_.k + size_t(t) * d2_;
      if (d2_ > d_) kt[d_] = 0;  // the odd last element's partner
      if (!c.key_read(t)) {
        std::fill_n(kt, d2_, uint16_t(0));
        continue;
      }
      const bf16* src = p_.key_row<bf16>(c.b, c.j0 + t, c.g);
      if (p_.k.stride[3] == 1)
        std::memcpy(kt, src, d_ * sizeof(uint16_t));
      else
        for (size_t e = 0; e < d_; ++e) kt[e] = src[int64_t(e) * p_.k.stride[3]].bits;
    }
    kern_.gemm(s_.k + t0 * d2_, d2_, 2, s_.qt, 2 * cqp_, st, cqp_, keys, cqp_ / 16, d_, false);
  }

  bool accumulate_values(const Chunk& c) {
    // Pair p of the block's keys is keys t0 + 2p, t0 + 2p + 1 (t0 even).
    uint16_t* const p_pairs = s_.p_pairs + size_t(c.t0 / 2) * 2 * cqp_;
    uint16_t* const v_pairs = s_.v + size_t(c.t0 / 2) * 2 * dvp_;
    kern_.pair_rows_f32(w_.st + size_t(c.t0) * cqp_, cqp_, size_t(c.t1 - c.t0), p_pairs);
    bool finite = true;
    for (int64_t t = c.t0; t < c.t1; t += 2) {
      const uint16_t* rows[2] = {nullptr, nullptr};
      for (int64_t u = 0; u < 2; ++u)
        if (t + u < c.t1 && c.key_read(t + u))
          rows[u] = reinterpret_cast<const uint16_t*>(p_.value_row<bf16>(c.b, c.j0 + t + u, c.g));
      finite &= pair_value_rows(&kern_, rows, p_.v.stride[3], dv_, dvp_, s_.v + size_t(t / 2) * 2 * dvp_);
    }
    if (!c.full && !finite) return false;
    const size_t rows = size_t(c.rows), key_pairs = size_t(c.t1 - c.t0 + 1) / 2;
    const bool transposed = values_transposed(rows, dv_, 0.25);
    if (transposed) {
      // V^T's pair p of value column c is v[p][c][0..2): rows 2 apart, pairs 2 * dvp apart.
      accumulate_transposed(fkern_, dv_, rows, s_.pvt, cqp_, w_.acc, dvp_, [&](size_t c0, size_t m) {
        kern_.gemm(s_.v + 2 * c0, 2, 2 * dvp_, s_.p_pairs, 2 * cqp_, s_.pvt, cqp_, m, pad_floats(rows) / 16,
                   2 * key_pairs, false);
      });
    } else {
      kern_.pv(p_pairs, cqp_, v_pairs, dvp_, w_.acc, rows, key_pairs);
    }
    return true;
  }

 private:
  static size_t even(size_t n) { return n + n % 2; }

  const Params& p_;
  const FlashSlices& w_;
  const Slices s_;
  const Kernels& fkern_;
  const Bf16DotKernels& kern_;
  const size_t d_, d2_, dv_, cqp_, dvp_;
};

}  // namespace memattn::detail
