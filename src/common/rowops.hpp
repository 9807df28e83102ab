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

// softcap * tanh(s / softcap): the cap of the scaled score s (p.has_softcap()).
template <typename Acc>
Acc capped(const Params& p, Acc s) {
  const Acc cap = Acc(p.softcap64);
  return cap * std::tanh(s / cap);
}

// ALiBi's term -slope * |i + diag - j| of (b, h, i, j) (p.has_alibi).
template <typename Acc>
Acc alibi_term(const Params& p, int64_t b, int64_t h, int64_t i, int64_t j) {
  return -Acc(p.slope(b, h)) * Acc(p.alibi_distance(i, j));
}

// d(capped score) / d(scale * q_i . k_j) = 1 - tanh^2(scale * q_i . k_j / softcap): the factor dS
// takes on its way back through the cap (p.has_softcap()).
template <typename Acc, typename T>
Acc softcap_slope(const Params& p, int64_t b, int64_t h, int64_t i, int64_t j) {
  const Acc s = Acc(p.scale64) * dot<Acc>(p.q.at<T>(b, i, h), p.q.stride[3], p.k.at<T>(b, j, h / p.group),
                                          p.k.stride[3], p.dim);
  const Acc t = std::tanh(s / Acc(p.softcap64));
  return Acc(1) - t * t;
}

// s_ij = scale * q_i . k_j, capped, plus ALiBi and bias_ij, for a visible key; K is read only for
// visible keys.
template <typename Acc, typename T>
Acc score(const Params& p, int64_t b, int64_t h, int64_t i, int64_t j) {
  const int64_t g = h / p.group;
  Acc s = Acc(p.scale64) * dot<Acc>(p.q.at<T>(b, i, h), p.q.stride[3], p.k.at<T>(b, j, g), p.k.stride[3],
                                  p.dim);
  if (p.has_softcap()) s = capped(p, s);
  if (p.has_alibi) s += alibi_term<Acc>(p, b, h, i, j);
  if (p.has_bias) s += bias_at<Acc>(p, b, h, i, j);
  return s;
}

template <typename Acc>
constexpr Acc neg_inf() {
  return -std::numeric_limits<Acc>::infinity();
}

// A row's softmax state (sum of exp(s - max) over its keys, max) and what it stores: the lse, and
// out = acc / divisor * factor. With a sink logit the sink joins the sum as a key without a
// value: out = acc / (sum + exp(sink - max)), lse = max + log(that); past exp's range (sink far
// above every score) through lse' = logaddexp(lse, sink) instead. A row with no visible key
// (sum 0) gives out 0 and lse -inf, or lse = sink with a sink; NaN in sum propagates.
template <typename Acc>
struct RowResult {
  Acc lse, divisor, factor = 1;
  RowResult(const Params& p, int64_t h, Acc max, Acc sum) {
    const bool empty = sum == Acc(0);
    if (!p.has_sinks) {
      lse = empty ? neg_inf<Acc>() : max + std::log(sum);
      divisor = sum;
      return;
    }
    const Acc sink = Acc(p.sink(h));
    if (empty) {
      lse = sink, divisor = sum;
      return;
    }
    const Acc e = std::exp(sink - max), total = sum + e;
    if (std::isfinite(e)) {
      lse = max + std::log(total), divisor = total;
      return;
    }
    const Acc row_lse = max + std::log(sum);
    lse = sink + std::log1p(std::exp(row_lse - sink));
    divisor = sum, factor = std::exp(row_lse - lse);
  }
};

// Writes out[b, i, h, :] = acc / sum and lse = max + log(sum), with the sink of head h when the
// call has sinks (RowResult). A row with no visible key (sum 0) gives exactly 0 and -inf (the
// sink); NaN in sum or acc propagates.
template <typename T, typename Acc>
void store_row(const Params& p, int64_t b, int64_t h, int64_t i, const Acc* acc, int64_t acc_stride,
               Acc max, Acc sum) {
  T* o = const_cast<T*>(p.out.at<T>(b, i, h));
  const RowResult<Acc> row(p, h, max, sum);
  const bool empty = sum == Acc(0);
  for (int64_t c = 0; c < p.dim_v; ++c)
    o[c * p.out.stride[3]] = Elem<T>::store(empty ? Acc(0) : acc[c * acc_stride] / row.divisor * row.factor);
  if (p.has_lse) *const_cast<float*>(p.lse.at<float>(b, h, i)) = float(row.lse);
}

}  // namespace memattn::detail
