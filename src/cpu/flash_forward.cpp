// flash forward driver: per (batch, head, query chunk), walks the key chunks that the causal and
// window masks leave visible; each chunk's scores S^T = K Q^T come from the tile family the planner
// chose (cpu/tile_family.hpp) with queries in the lanes, so the online softmax runs down the
// columns. Chunks every row fully sees run the steady state (no mask work; the family may read K
// and V in place); boundary chunks are masked here, keys no row sees are never read.
#include "cpu/flash_forward.hpp"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "common/half.hpp"
#include "common/parallel.hpp"
#include "common/rowops.hpp"
#include "cpu/family_amx.hpp"
#include "cpu/family_bf16_dot.hpp"
#include "cpu/family_f32.hpp"
#include "cpu/kernels.hpp"
#include "cpu/tile_family.hpp"

namespace memattn::detail {
namespace {

template <typename T, typename Family>
class FlashItem {
 public:
  FlashItem(const Params& p, char* slice)
      : p_(p), kern_(*p.kernels), w_(carve(p, slice)), fam_(p, w_, carve_family(p, slice)), dv_(size_t(p.dim_v)), cqp_(pad_floats(size_t(p.query_chunk))), dvp_(pad_floats(dv_)) {}

  // The worker's slice: the driver's slices, then the family's.
  static size_t slice_bytes(const Params& p) {
    Carver c;
    FlashSlices::carve(p, c);
    Family::Slices::carve(p, c);
    return c.used();
  }

  void run(int64_t b, int64_t h, int64_t i0, int64_t rows) {
    Chunk c{b, h, h / p_.group, i0, rows, 0, 0, false, false, w_.live};
    fam_.load_queries(c);
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
      fam_.scores(c);
      modify_scores(c);
      kern_.softmax_step(w_.st, size_t(c.keys), cqp_, scale_in_softmax(c) ? p_.scale : 1.0f,
                         w_.row_max, w_.row_sum, w_.alpha);
      kern_.scale_rows(w_.acc, dvp_, size_t(rows), dvp_, w_.alpha);
      if (!fam_.accumulate_values(c)) accumulate_visible_pairs(c);
    }
    for (int64_t r = 0; r < rows; ++r)
      store_row<T>(p_, b, h, i0 + r, w_.acc + size_t(r) * dvp_, 1, w_.row_max[r], w_.row_sum[r]);
  }

 private:
  static FlashSlices carve(const Params& p, char* slice) {
    Carver c(slice);
    return FlashSlices::carve(p, c);
  }
  static typename Family::Slices carve_family(const Params& p, char* slice) {
    Carver c(slice);
    FlashSlices::carve(p, c);
    return Family::Slices::carve(p, c);
  }

  bool visible(const Chunk& c, int64_t r, int64_t t) const {
    const int64_t i = c.i0 + r, j = c.j0 + t;
    return j >= p_.key_begin(i) && j < p_.key_end(i) && p_.mask_allows(c.b, c.h, i, j);
  }
  float& st(int64_t t, int64_t r) const { return w_.st[size_t(t) * cqp_ + size_t(r)]; }
  // Scores multiplied by scale after the dot products: fused into the softmax step in the steady
  // state, before bias and masking (-inf must stay -inf) otherwise.
  bool scale_in_softmax(const Chunk& c) const { return fam_.scale_after_dot() && c.full && !p_.has_bias; }

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

  // The scale (when the family left it and the softmax does not fuse it), the bias, and -inf
  // where a row does not see a key.
  void modify_scores(const Chunk& c) {
    if (fam_.scale_after_dot() && !scale_in_softmax(c))
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

  // A NaN/Inf value with a zero weight must poison a row that sees its key (IEEE, as the
  // reference) and no row that does not: multiply visible pairs only.
  void accumulate_visible_pairs(const Chunk& c) {
    for (int64_t r = 0; r < c.rows; ++r) {
      float* acc = w_.acc + size_t(r) * dvp_;
      for (int64_t t = 0; t < c.keys; ++t) {
        if (!visible(c, r, t)) continue;
        const T* v = p_.v.at<T>(c.b, c.j0 + t, c.g);
        for (size_t k = 0; k < dv_; ++k) acc[k] += st(t, r) * float(Elem<T>::load(v[int64_t(k) * p_.v.stride[3]]));
      }
    }
  }

  const Params& p_;
  const Kernels& kern_;
  const FlashSlices w_;
  Family fam_;
  const size_t dv_, cqp_, dvp_;
};

// Runs every (batch, head, query chunk) item of the call on family F.
template <typename T, typename F>
void run_items(const Params& p, void* workspace) {
  const int64_t cq = p.query_chunk, q_chunks = (p.seq_q + cq - 1) / cq;
  // Under causal or window masks later query chunks see more keys: hand them out first so the
  // dynamic schedule ends on light items.
  const bool banded = p.causal || p.window_left >= 0 || p.window_right >= 0;
  parallel_items(p, workspace, FlashItem<T, F>::slice_bytes(p), [&](int64_t item, char* slice) {
    const int64_t bh = item / q_chunks;
    const int64_t qc = banded ? q_chunks - 1 - item % q_chunks : item % q_chunks;
    FlashItem<T, F>(p, slice).run(bh / p.heads_q, bh % p.heads_q, qc * cq, std::min(cq, p.seq_q - qc * cq));
  });
}

}  // namespace

template <typename T>
void flash_forward(const Params& p, void* workspace) {
  if constexpr (std::is_same_v<T, bf16>) {
    switch (p.family) {
      case TileFamily::bf16_dot: return run_items<T, Bf16DotFamily>(p, workspace);
      case TileFamily::amx_bf16: return run_items<T, AmxFamily<AmxHardware>>(p, workspace);
      case TileFamily::amx_bf16_emulated: return run_items<T, AmxFamily<AmxEmulated>>(p, workspace);
      default: break;
    }
  }
  run_items<T, F32Family<T>>(p, workspace);
}

size_t flash_forward_slice_bytes(const Params& p) {
  switch (p.family) {
    case TileFamily::bf16_dot: return FlashItem<bf16, Bf16DotFamily>::slice_bytes(p);
    case TileFamily::amx_bf16: return FlashItem<bf16, AmxFamily<AmxHardware>>::slice_bytes(p);
    case TileFamily::amx_bf16_emulated: return FlashItem<bf16, AmxFamily<AmxEmulated>>::slice_bytes(p);
    default: return FlashItem<float, F32Family<float>>::slice_bytes(p);
  }
}

template void flash_forward<float>(const Params&, void*);
template void flash_forward<bf16>(const Params&, void*);
template void flash_forward<f16>(const Params&, void*);

}  // namespace memattn::detail
