// naive: the whole seq_q x seq_k score matrix of one (batch, head), then softmax and P V; the
// O(n^2)-memory baseline users have today, and the algorithm the others are checked against.
#include "common/half.hpp"
#include "common/parallel.hpp"
#include "common/rowops.hpp"
#include "reference/reference.hpp"

namespace memattn::detail {

template <typename T>
void naive_forward(const Params& p, void* workspace) {
  using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;
  Carver sizer;
  NaiveSlices<Acc>::carve(p, sizer);
  parallel_items(p, workspace, sizer.used(), [&](int64_t item, char* slice) {
    Carver c(slice);
    const auto w = NaiveSlices<Acc>::carve(p, c);
    const int64_t b = item / p.heads_q, h = item % p.heads_q, g = h / p.group;
    for (int64_t i = 0; i < p.seq_q; ++i) {
      Acc* s = w.scores + i * p.seq_k;
      for (int64_t j = 0; j < p.seq_k; ++j)
        s[j] = key_visible(p, b, h, i, j) ? score<Acc, T>(p, b, h, i, j) : neg_inf<Acc>();
    }
    for (int64_t i = 0; i < p.seq_q; ++i) {
      Acc* s = w.scores + i * p.seq_k;
      Acc m = neg_inf<Acc>();
      for (int64_t j = 0; j < p.seq_k; ++j) m = s[j] > m ? s[j] : m;  // NaN scores skip the max
      const Acc shift = m == neg_inf<Acc>() ? Acc(0) : m;
      Acc sum = 0;
      for (int64_t c = 0; c < p.dim_v; ++c) w.acc[c] = 0;
      for (int64_t j = 0; j < p.seq_k; ++j) {
        if (!key_visible(p, b, h, i, j)) continue;  // masked values are never read
        const Acc e = std::exp(s[j] - shift);
        sum += e;
        const T* vj = p.v.at<T>(b, j, g);
        for (int64_t c = 0; c < p.dim_v; ++c) w.acc[c] += e * Acc(Elem<T>::load(vj[c * p.v.stride[3]]));
      }
      store_row<T>(p, b, h, i, w.acc, 1, m, sum);
    }
  });
}

template void naive_forward<float>(const Params&, void*);
template void naive_forward<double>(const Params&, void*);
template void naive_forward<bf16>(const Params&, void*);
template void naive_forward<f16>(const Params&, void*);

}  // namespace memattn::detail
