// flash forward driver: per (batch, head, query chunk), walks the key chunks that the causal and
// window masks leave visible; each chunk's scores S^T = K Q^T come from a SIMD GEMM tile with
// queries in the lanes, so the online softmax runs down the columns and P V reads P transposed in
// place. Chunks every row fully sees run the steady state (no mask work; K and V read in place when
// their rows are contiguous); boundary chunks are packed and masked. bf16 inputs on CPUs with the
// AVX-512 bf16 dot product keep Q, K, P and V in bf16 pairs (vdpbf16ps), everything else in f32.
#include "cpu/flash_forward.hpp"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "common/half.hpp"
#include "common/parallel.hpp"
#include "common/rowops.hpp"
#include "cpu/bf16_dot.hpp"
#include "cpu/kernels.hpp"
#include "cpu/rows.hpp"

namespace memattn::detail {
namespace {

// One bf16 row into contiguous bits (copy, or gather when strided); false if any is NaN or Inf.
bool copy_bf16_row(const bf16* src, int64_t stride, size_t n, uint16_t* dst) {
  bool finite = true;
  for (size_t c = 0; c < n; ++c) {
    dst[c] = src[int64_t(c) * stride].bits;
    finite &= (dst[c] & 0x7f80u) != 0x7f80u;
  }
  return finite;
}

// The chunk being processed: query rows [i0, i0 + rows) of (b, h) against keys [j0, j0 + keys).
struct Chunk {
  int64_t b, h, g, i0, rows, j0, keys;
  bool full;      // every row sees every key: no mask work
  bool all_read;  // every key is seen by some row: K and V can be read in place
};

template <typename T>
class FlashItem {
 public:
  FlashItem(const Params& p, const FlashSlices& w)
      : p_(p), w_(w), kern_(*p.kernels), d_(size_t(p.dim)), dv_(size_t(p.dim_v)),
        cqp_(pad_floats(size_t(p.query_chunk))), dvp_(pad_floats(dv_)), bf16_dot_(uses_bf16_dot(p)),
        scale_after_dot_(bf16_dot_ || std::fabs(p.scale) > 1.0f) {}

  void run(int64_t b, int64_t h, int64_t i0, int64_t rows) {
    Chunk c{b, h, h / p_.group, i0, rows, 0, 0, false, false};
    load_queries(c);
    std::fill_n(w_.row_max, cqp_, kNegInf);
    std::fill_n(w_.row_sum, cqp_, 0.0f);
    std::fill_n(w_.acc, size_t(rows) * dvp_, 0.0f);
    // Key bounds are monotone in the row, so the rows see at most [first, last); chunks start at
    // multiples of key_chunk so every row sums its keys in the same order whatever its chunk.
    const int64_t i_last = i0 + rows - 1, ck = p_.key_chunk;
    const int64_t first = p_.key_begin(i0), last = p_.key_end(i_last);
    // Without a boolean mask each row sees one interval of keys and the intervals move right
    // together, so the rows see [first, last) without gaps once row i0 sees anything.
    const bool contiguous = !p_.has_mask && p_.key_end(i0) > p_.key_begin(i0);
    for (c.j0 = first / ck * ck; c.j0 < last; c.j0 += ck) {
      c.keys = std::min({ck, p_.seq_k - c.j0, last - c.j0});  // no row sees keys past `last`
      c.full = !p_.has_mask && p_.key_begin(i_last) <= c.j0 && p_.key_end(i0) >= c.j0 + c.keys;
      c.all_read = c.full || (contiguous && first <= c.j0);
      if (!c.all_read && !mark_live_keys(c)) continue;
      scores(c);
      kern_.softmax_step(w_.st, size_t(c.keys), cqp_, scale_in_softmax(c) ? p_.scale : 1.0f,
                         w_.row_max, w_.row_sum, w_.alpha);
      kern_.scale_rows(w_.acc, dvp_, size_t(rows), dvp_, w_.alpha);
      accumulate_values(c);
    }
    for (int64_t r = 0; r < rows; ++r)
      store_row<T>(p_, b, h, i0 + r, w_.acc + size_t(r) * dvp_, 1, w_.row_max[r], w_.row_sum[r]);
  }

 private:
  bool visible(const Chunk& c, int64_t r, int64_t t) const {
    const int64_t i = c.i0 + r, j = c.j0 + t;
    return j >= p_.key_begin(i) && j < p_.key_end(i) && p_.mask_allows(c.b, c.h, i, j);
  }
  float& st(int64_t t, int64_t r) const { return w_.st[size_t(t) * cqp_ + size_t(r)]; }
  // Scores multiplied by scale after the GEMM (see scale_after_dot_): fused into the softmax step
  // in the steady state, before bias and masking (-inf must stay -inf) otherwise.
  bool scale_in_softmax(const Chunk& c) const { return scale_after_dot_ && c.full && !p_.has_bias; }

  // Q^T with queries in the lanes: f32 rows, times scale unless it comes after the dot product,
  // or (bf16 path) unscaled bf16 pairs.
  void load_queries(const Chunk& c) {
    std::fill_n(w_.qt, d_ * cqp_, 0.0f);
    uint16_t* pairs = reinterpret_cast<uint16_t*>(w_.qt);
    for (int64_t r = 0; r < c.rows; ++r) {
      const T* q = p_.q.at<T>(c.b, c.i0 + r, c.h);
      if constexpr (std::is_same_v<T, bf16>)
        if (bf16_dot_) {
          for (size_t k = 0; k < d_; ++k) pairs[((k / 2) * cqp_ + size_t(r)) * 2 + k % 2] = q[int64_t(k) * p_.q.stride[3]].bits;
          continue;
        }
      load_row(kern_, q, p_.q.stride[3], d_, w_.q_row);
      const float scale = scale_after_dot_ ? 1.0f : p_.scale;
      for (size_t k = 0; k < d_; ++k) w_.qt[k * cqp_ + size_t(r)] = scale * w_.q_row[k];
    }
  }

  // live[t]: some row sees key t. Returns false when no row sees any key of the chunk.
  bool mark_live_keys(const Chunk& c) {
    std::fill_n(w_.live, c.keys, uint8_t(0));
    bool any = false;
    for (int64_t r = 0; r < c.rows; ++r) {
      const int64_t lo = std::max<int64_t>(p_.key_begin(c.i0 + r) - c.j0, 0);
      const int64_t hi = std::min<int64_t>(p_.key_end(c.i0 + r) - c.j0, c.keys);
      for (int64_t t = lo; t < hi; ++t)
        if (p_.mask_allows(c.b, c.h, c.i0 + r, c.j0 + t)) w_.live[t] = 1, any = true;
    }
    return any;
  }
  bool key_read(const Chunk& c, int64_t t) const { return c.all_read || w_.live[t]; }

  // st[t][r] = score of query r and key t (bias added, masked entries -inf).
  void scores(const Chunk& c) {
    const T* k0 = p_.k.at<T>(c.b, c.j0, c.g);
    // In place only with forward rows: the GEMM steps rows by an unsigned pitch.
    const bool in_place = c.all_read && p_.k.stride[3] == 1 && p_.k.stride[1] >= 0;
    if (bf16_dot_) {
      const uint16_t* a = reinterpret_cast<const uint16_t*>(k0);
      size_t a_row = size_t(p_.k.stride[1]);
      if (!in_place) {
        uint16_t* packed = reinterpret_cast<uint16_t*>(w_.k);
        for (int64_t t = 0; t < c.keys; ++t) {
          uint16_t* kt = packed + size_t(t) * d_;
          if (key_read(c, t)) copy_bf16_row(reinterpret_cast<const bf16*>(p_.k.at<T>(c.b, c.j0 + t, c.g)), p_.k.stride[3], d_, kt);
          else std::fill_n(kt, d_, uint16_t(0));
        }
        a = packed;
        a_row = d_;
      }
      kern_.bf16->scores(a, a_row, reinterpret_cast<const uint16_t*>(w_.qt), cqp_, w_.st, size_t(c.keys), d_);
    } else {
      GemmArgs s{w_.k, d_, 1, w_.qt, cqp_, w_.st, cqp_, size_t(c.keys), cqp_, d_, false};
      if (std::is_same_v<T, float> && in_place) {
        s.a = reinterpret_cast<const float*>(k0);
        s.a_row = size_t(p_.k.stride[1]);
      } else {
        for (int64_t t = 0; t < c.keys; ++t) {
          float* kt = w_.k + size_t(t) * d_;
          if (key_read(c, t)) load_row(kern_, p_.k.at<T>(c.b, c.j0 + t, c.g), p_.k.stride[3], d_, kt);
          else std::fill_n(kt, d_, 0.0f);
        }
      }
      kern_.gemm(s);
    }
    if (scale_after_dot_ && !scale_in_softmax(c))
      for (size_t i = 0; i < size_t(c.keys) * cqp_; ++i) w_.st[i] *= p_.scale;
    if (p_.has_bias)
      for (int64_t t = 0; t < c.keys; ++t)
        for (int64_t r = 0; r < c.rows; ++r) st(t, r) += bias_at<float>(p_, c.b, c.h, c.i0 + r, c.j0 + t);
    if (!c.full) mask_scores(c);
  }

  // st = -inf where a row does not see a key: per row its interval's complement, plus the
  // boolean mask's zeros.
  void mask_scores(const Chunk& c) {
    for (int64_t r = 0; r < c.rows; ++r) {
      const int64_t lo = std::clamp<int64_t>(p_.key_begin(c.i0 + r) - c.j0, 0, c.keys);
      const int64_t hi = std::clamp<int64_t>(p_.key_end(c.i0 + r) - c.j0, lo, c.keys);
      for (int64_t t = 0; t < lo; ++t) st(t, r) = kNegInf;
      for (int64_t t = hi; t < c.keys; ++t) st(t, r) = kNegInf;
      if (p_.has_mask)
        for (int64_t t = lo; t < hi; ++t)
          if (!p_.mask_allows(c.b, c.h, c.i0 + r, c.j0 + t)) st(t, r) = kNegInf;
    }
  }

  // acc[rows x dv] += P V with P = the exponentiated st.
  void accumulate_values(const Chunk& c) {
    bool finite = true;
    if (bf16_dot_) {
      const auto& bk = *kern_.bf16;
      bk.pair_rows_f32(w_.st, cqp_, size_t(c.keys), w_.p_pairs);
      uint16_t* vp = reinterpret_cast<uint16_t*>(w_.v);
      for (int64_t t = 0; t < c.keys; t += 2) {
        const uint16_t* rows[2] = {nullptr, nullptr};
        for (int64_t u = 0; u < 2; ++u)
          if (t + u < c.keys && key_read(c, t + u))
            rows[u] = reinterpret_cast<const uint16_t*>(p_.v.at<T>(c.b, c.j0 + t + u, c.g));
        finite &= pair_value_rows(rows, vp + size_t(t / 2) * 2 * dvp_);
      }
      if (c.full || finite)
        return bk.pv(w_.p_pairs, cqp_, vp, dvp_, w_.acc, size_t(c.rows), size_t(c.keys + 1) / 2);
    } else {
      GemmArgs pv{w_.st, 1, cqp_, w_.v, dvp_, w_.acc, dvp_, size_t(c.rows), dvp_, size_t(c.keys), true};
      if (std::is_same_v<T, float> && c.all_read && p_.v.stride[3] == 1 && p_.v.stride[1] >= 0 &&
          dv_ == dvp_) {
        pv.b = reinterpret_cast<const float*>(p_.v.at<T>(c.b, c.j0, c.g));
        pv.ldb = size_t(p_.v.stride[1]);
        if (!c.full) finite = kern_.all_finite(pv.b, pv.ldb, size_t(c.keys), dv_);
      } else {
        for (int64_t t = 0; t < c.keys; ++t) {
          float* vt = w_.v + size_t(t) * dvp_;
          std::fill(vt + dv_, vt + dvp_, 0.0f);
          if (key_read(c, t)) finite &= load_row(kern_, p_.v.at<T>(c.b, c.j0 + t, c.g), p_.v.stride[3], dv_, vt);
          else std::fill_n(vt, dv_, 0.0f);
        }
      }
      if (c.full || finite) return kern_.gemm(pv);
    }
    // A NaN/Inf value with a zero weight must poison a row that sees its key (IEEE, as the
    // reference) and no row that does not: multiply visible pairs only.
    for (int64_t r = 0; r < c.rows; ++r) {
      float* acc = w_.acc + size_t(r) * dvp_;
      for (int64_t t = 0; t < c.keys; ++t) {
        if (!visible(c, r, t)) continue;
        const T* v = p_.v.at<T>(c.b, c.j0 + t, c.g);
        for (size_t k = 0; k < dv_; ++k) acc[k] += st(t, r) * float(Elem<T>::load(v[int64_t(k) * p_.v.stride[3]]));
      }
    }
  }

  // Value rows t and t+1 (null: not read, zero) as bf16 pairs, zero-padded to dvp columns;
  // false if a value read is NaN or infinite.
  bool pair_value_rows(const uint16_t* const rows[2], uint16_t* dst) {
    std::fill(dst + 2 * dv_, dst + 2 * dvp_, uint16_t(0));
    if (p_.v.stride[3] == 1 && rows[0] != nullptr) return kern_.bf16->pair_two_rows(rows[0], rows[1], dv_, dst);
    bool finite = true;
    for (size_t k = 0; k < dv_; ++k)
      for (int u = 0; u < 2; ++u) {
        dst[2 * k + u] = rows[u] ? rows[u][int64_t(k) * p_.v.stride[3]] : 0;
        finite &= (dst[2 * k + u] & 0x7f80u) != 0x7f80u;
      }
    return finite;
  }

  const Params& p_;
  const FlashSlices& w_;
  const Kernels& kern_;
  const size_t d_, dv_, cqp_, dvp_;
  const bool bf16_dot_;
  // Pre-scaled f32 queries overflow where |scale| > 1 meets |q| > FLT_MAX / |scale| although the
  // scores are finite (scale 1e20, q ~ 1e20, k ~ 1e-38); such a scale multiplies the dot products
  // instead, which are then smaller than the scores. |scale| <= 1 (the common case) pre-scales,
  // which cannot overflow, and stays exact where the unscaled q.k is not a float (scale 1e-38,
  // q ~ 1e30, k ~ 1e9). The bf16 dot product path always scales after.
  const bool scale_after_dot_;
};

}  // namespace

template <typename T>
void flash_forward(const Params& p, void* workspace) {
  Carver sizer;
  FlashSlices::carve(p, sizer);
  const int64_t cq = p.query_chunk, q_chunks = (p.seq_q + cq - 1) / cq;
  // Under causal or window masks later query chunks see more keys: hand them out first so the
  // dynamic schedule ends on light items.
  const bool banded = p.causal || p.window_left >= 0 || p.window_right >= 0;
  parallel_items(p, workspace, sizer.used(), [&](int64_t item, char* slice) {
    Carver carver(slice);
    const FlashSlices w = FlashSlices::carve(p, carver);
    const int64_t bh = item / q_chunks;
    const int64_t qc = banded ? q_chunks - 1 - item % q_chunks : item % q_chunks;
    FlashItem<T>(p, w).run(bh / p.heads_q, bh % p.heads_q, qc * cq, std::min(cq, p.seq_q - qc * cq));
  });
}

template void flash_forward<float>(const Params&, void*);
template void flash_forward<bf16>(const Params&, void*);
template void flash_forward<f16>(const Params&, void*);

}  // namespace memattn::detail
