// flash forward driver: per (batch, head, query chunk), walks the key chunks that the causal and
// window masks leave visible, packs each once into f32, and merges its scores online.
#include "cpu/flash_forward.hpp"

#include <algorithm>
#include <cmath>

#include "common/half.hpp"
#include "common/parallel.hpp"
#include "common/rowops.hpp"

namespace memattn::detail {
namespace {

// Copies `n` strided elements of T into f32; returns false if any is NaN or infinite.
template <typename T>
bool pack_row(float* dst, const T* src, int64_t stride, int64_t n) {
  bool finite = true;
  for (int64_t c = 0; c < n; ++c) {
    dst[c] = Elem<T>::load(src[c * stride]);
    finite &= std::isfinite(dst[c]);
  }
  return finite;
}

}  // namespace

template <typename T>
void flash_forward(const Params& p, void* workspace) {
  Carver sizer;
  FlashSlices::carve(p, sizer);
  const int64_t cq = p.query_chunk, ck = p.key_chunk;
  const int64_t q_chunks = (p.seq_q + cq - 1) / cq;
  parallel_items(p, workspace, sizer.used(), [&](int64_t item, char* slice) {
    Carver carver(slice);
    const FlashSlices w = FlashSlices::carve(p, carver);
    const int64_t bh = item / q_chunks, b = bh / p.heads_q, h = bh % p.heads_q, g = h / p.group;
    const int64_t i0 = (item % q_chunks) * cq, rows = std::min(cq, p.seq_q - i0);

    for (int64_t r = 0; r < rows; ++r) {
      pack_row(w.q + r * p.dim, p.q.at<T>(b, i0 + r, h), p.q.stride[3], p.dim);
      w.row_max[r] = kNegInf;
      w.row_sum[r] = 0.0f;
      std::fill_n(w.acc + r * p.dim_v, p.dim_v, 0.0f);
    }
    // Key and window bounds are monotone in the row, so the chunk's rows see at most this range;
    // chunks start at multiples of key_chunk so every row sums its keys in the same order.
    const int64_t first = p.key_begin(i0), last = p.key_end(i0 + rows - 1);
    for (int64_t j0 = first / ck * ck; j0 < last; j0 += ck) {
      const int64_t keys = std::min(ck, p.seq_k - j0);
      std::fill_n(w.live, keys, uint8_t(0));
      bool any_live = false;
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t lo = std::max<int64_t>(p.key_begin(i0 + r) - j0, 0);
        const int64_t hi = std::min<int64_t>(p.key_end(i0 + r) - j0, keys);
        for (int64_t t = lo; t < hi; ++t)
          if (p.mask_allows(b, h, i0 + r, j0 + t)) w.live[t] = 1, any_live = true;
      }
      if (!any_live) continue;

      // Keys no row sees are never read; their packed rows stay zero.
      bool v_finite = true;
      for (int64_t t = 0; t < keys; ++t) {
        float* kt = w.k + t * p.dim;
        float* vt = w.v + t * p.dim_v;
        if (!w.live[t]) {
          std::fill_n(kt, p.dim, 0.0f);
          std::fill_n(vt, p.dim_v, 0.0f);
          continue;
        }
        pack_row(kt, p.k.at<T>(b, j0 + t, g), p.k.stride[3], p.dim);
        v_finite &= pack_row(vt, p.v.at<T>(b, j0 + t, g), p.v.stride[3], p.dim_v);
      }

      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = i0 + r;
        const int64_t lo = std::max<int64_t>(p.key_begin(i) - j0, 0);
        const int64_t hi = std::min<int64_t>(p.key_end(i) - j0, keys);
        float* s = w.scores + r * ck;
        float m_tile = kNegInf;
        for (int64_t t = 0; t < keys; ++t) {
          const bool visible = t >= lo && t < hi && p.mask_allows(b, h, i, j0 + t);
          s[t] = kNegInf;
          if (!visible) continue;
          s[t] = p.scale * dot<float>(w.q + r * p.dim, 1, w.k + t * p.dim, 1, p.dim);
          if (p.has_bias) s[t] += bias_at<float>(p, b, h, i, j0 + t);
          m_tile = s[t] > m_tile ? s[t] : m_tile;  // a NaN score keeps the max and poisons the sum
        }
        const float m_old = w.row_max[r];
        const float m_new = std::max(m_old, m_tile);
        // With nothing visible yet (max -inf) the shift is 0, so NaN scores still poison the row.
        const float shift = m_new == kNegInf ? 0.0f : m_new;
        const float alpha = m_new == m_old ? 1.0f : std::exp(m_old - m_new);
        float sum = 0.0f;
        float* acc = w.acc + r * p.dim_v;
        if (alpha != 1.0f)
          for (int64_t c = 0; c < p.dim_v; ++c) acc[c] *= alpha;
        for (int64_t t = 0; t < keys; ++t) {
          const float e = std::exp(s[t] - shift);
          s[t] = e;
          sum += e;
          // A zero weight against finite values adds nothing; against NaN/Inf values it must
          // still poison the row when the key is visible (IEEE, as the reference), never when not.
          const bool visible = t >= lo && t < hi && p.mask_allows(b, h, i, j0 + t);
          if (e == 0.0f && (v_finite || !visible)) continue;
          const float* vt = w.v + t * p.dim_v;
          for (int64_t c = 0; c < p.dim_v; ++c) acc[c] += e * vt[c];
        }
        w.row_sum[r] = w.row_sum[r] * alpha + sum;
        w.row_max[r] = m_new;
      }
    }
    for (int64_t r = 0; r < rows; ++r)
      store_row<T>(p, b, h, i0 + r, w.acc + r * p.dim_v, 1, w.row_max[r], w.row_sum[r]);
  });
}

template void flash_forward<float>(const Params&, void*);
template void flash_forward<bf16>(const Params&, void*);
template void flash_forward<f16>(const Params&, void*);

}  // namespace memattn::detail
