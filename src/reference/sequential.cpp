// sequential: the paper's section 2, one query at a time and keys one at a time with a running
// max m*, sum s* and value vector v*: O(dim_v) extra memory, slow on purpose.
#include "common/half.hpp"
#include "common/parallel.hpp"
#include "common/rowops.hpp"
#include "reference/reference.hpp"

namespace memattn::detail {

template <typename T>
void sequential_forward(const Params& p, void* workspace) {
  using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;
  Carver c(workspace);
  const auto w = SequentialSlices<Acc>::carve(p, c);
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < p.heads_q; ++h)
      for (int64_t i = 0; i < p.seq_q; ++i) {
        Acc m = neg_inf<Acc>(), sum = 0;
        for (int64_t c = 0; c < p.dim_v; ++c) w.acc[c] = 0;
        for (int64_t j = p.key_begin(i); j < p.key_end(i); ++j) {
          if (!p.mask_allows(b, h, i, j)) continue;
          const Acc s = score<Acc, T>(p, b, h, i, j);
          const Acc m_new = s > m ? s : m;  // a NaN score keeps m and poisons sum below
          // Rescale what was summed under the old max; equal maxes (-inf included) need none.
          const Acc alpha = m_new == m ? Acc(1) : std::exp(m - m_new);
          const Acc e = std::exp(s - (m_new == neg_inf<Acc>() ? Acc(0) : m_new));
          sum = sum * alpha + e;
          const T* vj = p.v.at<T>(b, j, h / p.group);
          for (int64_t c = 0; c < p.dim_v; ++c)
            w.acc[c] = w.acc[c] * alpha + e * Acc(Elem<T>::load(vj[c * p.v.stride[3]]));
          m = m_new;
        }
        store_row<T>(p, b, h, i, w.acc, 1, m, sum);
      }
}

template void sequential_forward<float>(const Params&, void*);
template void sequential_forward<double>(const Params&, void*);
template void sequential_forward<bf16>(const Params&, void*);
template void sequential_forward<f16>(const Params&, void*);

}  // namespace memattn::detail
