// chunked: the paper's section 3 / Figure 1. Per query chunk, every key chunk is summarised on its
// own (exp-weighted values, exp-weight sum, max), then all summaries are rescaled by the global max
// and combined. Unlike the paper's listing (whose dynamic_slice clamps the last chunk's start and
// so counts keys twice when the chunk does not divide n), the last chunk here is simply shorter.
#include <algorithm>

#include "common/half.hpp"
#include "common/parallel.hpp"
#include "common/rowops.hpp"
#include "reference/reference.hpp"

namespace memattn::detail {

template <typename T>
void chunked_forward(const Params& p, void* workspace) {
  using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;
  using Slices = ChunkedSlices<Acc>;
  Carver sizer;
  Slices::carve(p, sizer);
  const int64_t q_chunks = (p.seq_q + p.query_chunk - 1) / p.query_chunk;
  const int64_t k_chunks = Slices::key_chunks(p);
  const int64_t cq = p.query_chunk;
  parallel_items(p, workspace, sizer.used(), [&](int64_t item, char* slice) {
    Carver c(slice);
    const auto w = Slices::carve(p, c);
    const int64_t bh = item / q_chunks, b = bh / p.heads_q, h = bh % p.heads_q, g = h / p.group;
    const int64_t i0 = (item % q_chunks) * cq, rows = std::min(cq, p.seq_q - i0);

    // summarize_chunk for every key chunk: independent, as the paper's lax.map.
    for (int64_t kc = 0; kc < k_chunks; ++kc) {
      const int64_t j0 = kc * p.key_chunk, keys = std::min(p.key_chunk, p.seq_k - j0);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = i0 + r;
        Acc* s = w.scores + r * p.key_chunk;
        Acc m = neg_inf<Acc>();
        for (int64_t t = 0; t < keys; ++t) {
          const int64_t j = j0 + t;
          s[t] = key_visible(p, b, h, i, j) ? score<Acc, T>(p, b, h, i, j) : neg_inf<Acc>();
          m = s[t] > m ? s[t] : m;
        }
        const Acc shift = m == neg_inf<Acc>() ? Acc(0) : m;
        Acc* val = w.values + (kc * cq + r) * p.dim_v;
        Acc sum = 0;
        for (int64_t d = 0; d < p.dim_v; ++d) val[d] = 0;
        for (int64_t t = 0; t < keys; ++t) {
          if (!key_visible(p, b, h, i, j0 + t)) continue;
          const Acc e = std::exp(s[t] - shift);
          sum += e;
          const T* vj = p.v.at<T>(b, j0 + t, g);
          for (int64_t d = 0; d < p.dim_v; ++d) val[d] += e * Acc(Elem<T>::load(vj[d * p.v.stride[3]]));
        }
        w.sums[kc * cq + r] = sum;
        w.maxes[kc * cq + r] = m;
      }
    }
    // Combine: rescale each summary by exp(chunk max - global max), sum, divide once.
    for (int64_t r = 0; r < rows; ++r) {
      Acc m = neg_inf<Acc>();
      for (int64_t kc = 0; kc < k_chunks; ++kc) m = std::max(m, w.maxes[kc * cq + r]);
      Acc* total = w.values + r * p.dim_v;  // chunk 0's slot accumulates the result
      Acc sum = 0;
      for (int64_t kc = 0; kc < k_chunks; ++kc) {
        const Acc mc = w.maxes[kc * cq + r];
        // A chunk with no visible key has sum 0 and values 0; its factor must not be NaN.
        const Acc f = mc == m ? Acc(1) : std::exp(mc - m);
        sum += f * w.sums[kc * cq + r];
        const Acc* val = w.values + (kc * cq + r) * p.dim_v;
        for (int64_t d = 0; d < p.dim_v; ++d) total[d] = kc == 0 ? f * val[d] : total[d] + f * val[d];
      }
      store_row<T>(p, b, h, i0 + r, total, 1, m, sum);
    }
  });
}

template void chunked_forward<float>(const Params&, void*);
template void chunked_forward<double>(const Params&, void*);
template void chunked_forward<bf16>(const Params&, void*);
template void chunked_forward<f16>(const Params&, void*);

}  // namespace memattn::detail
