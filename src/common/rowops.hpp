// Scalar row primitives shared by the reference algorithms: strided dot products, score of one
// (query, key) pair with its masks and bias, and the store of one finished output row.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "api/params.hpp"
#include "common/half.hpp"

namespace memattn::detail {

// Dot product with 8 independent partial sums (so the compiler can keep them in one vector
// register) combined in a fixed order: the result never depends on threads or call history.
template <typename Acc, typename T>
Acc dot(const T* a, int64_t sa, const T* b, int64_t sb, int64_t n) {
  Acc part[8] = {};
  int64_t j = 0;
  if (sa == 1 && sb == 1) {
    for (; j + 8 <= n; j += 8)
      for (int u = 0; u < 8; ++u) part[u] += Acc(Elem<T>::load(a[j + u])) * Acc(Elem<T>::load(b[j + u]));
  }
  for (; j < n; ++j) part[j & 7] += Acc(Elem<T>::load(a[j * sa])) * Acc(Elem<T>::load(b[j * sb]));
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

// Bias element (b, h, i, j) as Acc, whatever its storage dtype.
template <typename Acc>
Acc bias_at(const Params& p, int64_t b, int64_t h, int64_t i, int64_t j) {
  switch (p.bias.dtype) {
    case DType::f64: return Acc(*p.bias.at<double>(b, h, i, j));
    case DType::bf16: return Acc(to_float(*p.bias.at<bf16>(b, h, i, j)));
    case DType::f16: return Acc(to_float(*p.bias.at<f16>(b, h, i, j)));
    default: return Acc(*p.bias.at<float>(b, h, i, j));
  }
}

// Is key j visible to query row i of (b, h) under the causal, window and boolean masks?
inline bool key_visible(const Params& p, int64_t b, int64_t h, int64_t i, int64_t j) {
  return j >= p.key_begin(i) && j < p.key_end(i) && p.mask_allows(b, h, i, j);
}

// s_ij = scale * q_i . k_j + bias_ij for a visible key; K is read only for visible keys.
template <typename Acc, typename T>
Acc score(const Params& p, int64_t b, int64_t h, int64_t i, int64_t j) {
  const int64_t g = h / p.group;
  Acc s = Acc(p.scale64) * dot<Acc>(p.q.at<T>(b, i, h), p.q.stride[3], p.k.at<T>(b, j, g), p.k.stride[3],
                                  p.dim);
  if (p.has_bias) s += bias_at<Acc>(p, b, h, i, j);
  return s;
}

template <typename Acc>
constexpr Acc neg_inf() {
  return -std::numeric_limits<Acc>::infinity();
}

// Writes out[b, i, h, :] = acc / sum and lse = max + log(sum). A row with no visible key (sum 0)
// gives exactly 0 and -inf; NaN in sum or acc propagates.
template <typename T, typename Acc>
void store_row(const Params& p, int64_t b, int64_t h, int64_t i, const Acc* acc, int64_t acc_stride,
               Acc max, Acc sum) {
  T* o = const_cast<T*>(p.out.at<T>(b, i, h));
  const bool empty = sum == Acc(0);
  for (int64_t c = 0; c < p.dim_v; ++c)
    o[c * p.out.stride[3]] = Elem<T>::store(empty ? Acc(0) : acc[c * acc_stride] / sum);
  if (p.has_lse)
    *const_cast<float*>(p.lse.at<float>(b, h, i)) =
        empty ? -std::numeric_limits<float>::infinity() : float(max + std::log(sum));
}

}  // namespace memattn::detail
