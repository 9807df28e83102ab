// flash forward driver: per (batch, head, query chunk), walks the key chunks that the causal and
// window masks leave visible; each chunk's scores S^T = K (scale Q)^T come from the SIMD GEMM tile
// with queries in the lanes, so the online softmax runs down the columns and P V needs no
// transpose. Chunks every row fully sees run the steady state (no mask work, K and V read in place
// when they are f32 with unit stride); boundary chunks are packed and masked.
#include "cpu/flash_forward.hpp"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "common/half.hpp"
#include "common/parallel.hpp"
#include "common/rowops.hpp"
#include "cpu/kernels.hpp"

namespace memattn::detail {
namespace {

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

}  // namespace

template <typename T>
void flash_forward(const Params& p, void* workspace) {
  const Kernels& kern = *p.kernels;
  Carver sizer;
  FlashSlices::carve(p, sizer);
  const int64_t cq = p.query_chunk, ck = p.key_chunk;
  const size_t d = size_t(p.dim), dv = size_t(p.dim_v);
  const size_t cqp = pad_floats(size_t(cq)), dvp = pad_floats(dv);
  const int64_t q_chunks = (p.seq_q + cq - 1) / cq;
  // Under causal or window masks later query chunks see more keys: hand them out first so the
  // dynamic schedule ends on light items.
  const bool banded = p.causal || p.window_left >= 0 || p.window_right >= 0;
  constexpr bool kF32 = std::is_same_v<T, float>;

  parallel_items(p, workspace, sizer.used(), [&](int64_t item, char* slice) {
    Carver carver(slice);
    const FlashSlices w = FlashSlices::carve(p, carver);
    const int64_t bh = item / q_chunks, b = bh / p.heads_q, h = bh % p.heads_q, g = h / p.group;
    const int64_t qc = banded ? q_chunks - 1 - item % q_chunks : item % q_chunks;
    const int64_t i0 = qc * cq, rows = std::min(cq, p.seq_q - i0), i_last = i0 + rows - 1;

    std::fill_n(w.qt, d * cqp, 0.0f);
    for (int64_t r = 0; r < rows; ++r) {
      load_row(kern, p.q.at<T>(b, i0 + r, h), p.q.stride[3], d, w.q_row);
      for (size_t c = 0; c < d; ++c) w.qt[c * cqp + size_t(r)] = p.scale * w.q_row[c];
    }
    std::fill_n(w.row_max, cqp, kNegInf);
    std::fill_n(w.row_sum, cqp, 0.0f);
    std::fill_n(w.acc, size_t(rows) * dvp, 0.0f);

    // Key bounds are monotone in the row, so the chunk's rows see at most [first, last); chunks
    // start at multiples of key_chunk so every row sums its keys in the same order.
    const int64_t first = p.key_begin(i0), last = p.key_end(i_last);
    for (int64_t j0 = first / ck * ck; j0 < last; j0 += ck) {
      const int64_t keys = std::min(ck, p.seq_k - j0);
      const bool full = !p.has_mask && p.key_begin(i_last) <= j0 && p.key_end(i0) >= j0 + keys;
      if (!full) {
        std::fill_n(w.live, keys, uint8_t(0));
        bool any_live = false;
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t lo = std::max<int64_t>(p.key_begin(i0 + r) - j0, 0);
          const int64_t hi = std::min<int64_t>(p.key_end(i0 + r) - j0, keys);
          for (int64_t t = lo; t < hi; ++t)
            if (p.mask_allows(b, h, i0 + r, j0 + t)) w.live[t] = 1, any_live = true;
        }
        if (!any_live) continue;
      }

      // S^T[keys x queries] = K (scale Q)^T. Keys no row sees are never read (zero rows).
      GemmArgs s{nullptr, d, 1, w.qt, cqp, w.st, cqp, size_t(keys), cqp, d, false};
      if (kF32 && full && p.k.stride[3] == 1) {
        s.a = reinterpret_cast<const float*>(p.k.at<T>(b, j0, g));
        s.a_row = size_t(p.k.stride[1]);
      } else {
        for (int64_t t = 0; t < keys; ++t) {
          float* kt = w.k + size_t(t) * d;
          if (full || w.live[t]) load_row(kern, p.k.at<T>(b, j0 + t, g), p.k.stride[3], d, kt);
          else std::fill_n(kt, d, 0.0f);
        }
        s.a = w.k;
      }
      kern.gemm(s);
      if (p.has_bias)
        for (int64_t t = 0; t < keys; ++t)
          for (int64_t r = 0; r < rows; ++r) w.st[size_t(t) * cqp + size_t(r)] += bias_at<float>(p, b, h, i0 + r, j0 + t);
      if (!full)
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t lo = p.key_begin(i0 + r) - j0, hi = p.key_end(i0 + r) - j0;
          for (int64_t t = 0; t < keys; ++t)
            if (t < lo || t >= hi || !p.mask_allows(b, h, i0 + r, j0 + t)) w.st[size_t(t) * cqp + size_t(r)] = kNegInf;
        }

      kern.softmax_step(w.st, size_t(keys), cqp, w.row_max, w.row_sum, w.alpha);
      kern.scale_rows(w.acc, dvp, size_t(rows), dvp, w.alpha);

      // acc[rows x dv] += P V, P read transposed straight from S^T.
      GemmArgs pv{w.st, 1, cqp, nullptr, dvp, w.acc, dvp, size_t(rows), dvp, size_t(keys), true};
      bool v_finite = true;
      if (kF32 && full && p.v.stride[3] == 1 && dv == dvp) {
        pv.b = reinterpret_cast<const float*>(p.v.at<T>(b, j0, g));
        pv.ldb = size_t(p.v.stride[1]);
      } else {
        for (int64_t t = 0; t < keys; ++t) {
          float* vt = w.v + size_t(t) * dvp;
          std::fill(vt + dv, vt + dvp, 0.0f);
          if (full || w.live[t]) v_finite &= load_row(kern, p.v.at<T>(b, j0 + t, g), p.v.stride[3], dv, vt);
          else std::fill_n(vt, dv, 0.0f);
        }
        pv.b = w.v;
      }
      if (full || v_finite) {
        kern.gemm(pv);
        continue;
      }
      // A NaN/Inf value with a zero weight must poison a row that sees its key (IEEE, as the
      // reference) and no row that does not: multiply visible pairs only.
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t lo = p.key_begin(i0 + r) - j0, hi = p.key_end(i0 + r) - j0;
        float* acc = w.acc + size_t(r) * dvp;
        for (int64_t t = std::max<int64_t>(lo, 0); t < std::min(hi, keys); ++t) {
          if (!p.mask_allows(b, h, i0 + r, j0 + t)) continue;
          const float e = w.st[size_t(t) * cqp + size_t(r)];
          for (size_t c = 0; c < dv; ++c) acc[c] += e * w.v[size_t(t) * dvp + c];
        }
      }
    }
    for (int64_t r = 0; r < rows; ++r)
      store_row<T>(p, b, h, i0 + r, w.acc + size_t(r) * dvp, 1, w.row_max[r], w.row_sum[r]);
  });
}

template void flash_forward<float>(const Params&, void*);
template void flash_forward<bf16>(const Params&, void*);
template void flash_forward<f16>(const Params&, void*);

}  // namespace memattn::detail
