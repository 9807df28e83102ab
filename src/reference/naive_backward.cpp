// naive backward: per (batch, head) the whole seq_q x seq_k softmax recomputed from scratch, then
// the textbook gradients dP = dO V^T, dS = P * (dP - rowsum(P * dP)), dQ = (scale dS) K,
// dK = (scale dS)^T Q, dV = P^T dO (dS times 1 - tanh^2 of the scaled score under a softcap;
// dsinks = -sum P_sink rowsum(P * dP)). The O(n^2)-memory baseline, and the reference the flash path is
// checked against; it reads neither out nor lse.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "common/rowops.hpp"
#include "cpu/flash_backward.hpp"
#include "common/parallel.hpp"
#include "plan/backward_plan.hpp"

namespace memattn::detail {
namespace {

template <typename T>
using AccOf = std::conditional_t<std::is_same_v<T, double>, double, float>;

// w.probs <- softmax of (b, h)'s scores over the visible keys (0 elsewhere), with the head's sink
// in the denominator when the call has sinks (its probability in w.sink_probs); w.dead[i] marks
// rows with no visible key or a zero sum (every visible score -inf), whose gradients are zero.
template <typename T, typename Acc>
void head_probs(const BackwardParams& p, int64_t b, int64_t h, const NaiveBackwardSlices<Acc>& w) {
  const Acc sink = p.has_sinks ? Acc(p.sink(h)) : neg_inf<Acc>();
  for (int64_t i = 0; i < p.seq_q; ++i) {
    Acc* s = w.probs + i * p.seq_k;
    Acc m = neg_inf<Acc>();
    for (int64_t j = 0; j < p.seq_k; ++j) {
      s[j] = key_visible(p, b, h, i, j) ? score<Acc, T>(p, b, h, i, j) : neg_inf<Acc>();
      m = s[j] > m ? s[j] : m;  // NaN scores skip the max and poison the sum
    }
    Acc sum = 0;
    for (int64_t j = 0; j < p.seq_k; ++j)
      if (key_visible(p, b, h, i, j)) sum += std::exp(s[j] - (m == neg_inf<Acc>() ? Acc(0) : m));
    w.dead[i] = sum == Acc(0);
    if (w.dead[i]) {
      std::fill_n(s, p.seq_k, Acc(0));
      continue;
    }
    // The sink may lie far above every score: shift by the larger of the two.
    const Acc shift = sink > m ? sink : m;
    if (shift != m) sum = sum * std::exp(m - shift);
    const Acc sink_weight = p.has_sinks ? std::exp(sink - shift) : Acc(0);
    sum += sink_weight;
    if (p.has_sinks) w.sink_probs[i] = sink_weight / sum;
    for (int64_t j = 0; j < p.seq_k; ++j)
      s[j] = key_visible(p, b, h, i, j) ? std::exp(s[j] - shift) / sum : Acc(0);
  }
}

// w.ds <- dS of row i of (b, h) for its visible keys, from w.probs; returns D = sum_j P dP
// (= dO . O).
template <typename T, typename Acc>
Acc row_dscores(const BackwardParams& p, int64_t b, int64_t h, int64_t i,
                const NaiveBackwardSlices<Acc>& w) {
  const int64_t g = h / p.group;
  const Acc* prob = w.probs + i * p.seq_k;
  Acc rowsum = 0;
  for (int64_t j = 0; j < p.seq_k; ++j) {
    if (!key_visible(p, b, h, i, j)) continue;
    w.ds[j] = dot<Acc>(p.dout.at<T>(b, i, h), p.dout.stride[3], p.v.at<T>(b, j, g), p.v.stride[3], p.dim_v);
    rowsum += prob[j] * w.ds[j];
  }
  for (int64_t j = 0; j < p.seq_k; ++j)
    if (key_visible(p, b, h, i, j)) w.ds[j] = prob[j] * (w.ds[j] - rowsum);
  return rowsum;
}

template <typename T>
void grads_pass(const BackwardParams& p, void* ws, size_t slice_bytes) {
  using Acc = AccOf<T>;
  const Acc scale = Acc(p.scale64);
  parallel_for_items(naive_items(p), backward_workers(p), ws, slice_bytes, [&](int64_t item, char* slice) {
    Carver c(slice);
    const auto w = NaiveBackwardSlices<Acc>::carve(p, c);
    const int64_t b = item / p.heads_kv, g = item % p.heads_kv;
    std::fill_n(w.dk, p.seq_k * p.dim, Acc(0));
    std::fill_n(w.dv, p.seq_k * p.dim_v, Acc(0));
    for (int64_t h = g * p.group; h < (g + 1) * p.group; ++h) {
      head_probs<T>(p, b, h, w);
      for (int64_t i = 0; i < p.seq_q; ++i) {
        std::fill_n(w.dq, p.dim, Acc(0));
        if (!w.dead[i]) {
          row_dscores<T>(p, b, h, i, w);
          const T* q = p.q.at<T>(b, i, h);
          const T* dout = p.dout.at<T>(b, i, h);
          for (int64_t j = 0; j < p.seq_k; ++j) {
            if (!key_visible(p, b, h, i, j)) continue;
            // scale dS, never scale (dS K): with |scale| > 1 the products then stay terms of the
            // true gradients, where dS K alone may sink into subnormals (scale 1e20, k ~ 1e-38).
            const Acc ds = p.has_softcap() ? w.ds[j] * softcap_slope<Acc, T>(p, b, h, i, j) : w.ds[j];
            const Acc pr = w.probs[i * p.seq_k + j], sds = scale * ds;
            const T* k = p.k.at<T>(b, j, g);
            for (int64_t c = 0; c < p.dim; ++c) {
              w.dq[c] += sds * Acc(Elem<T>::load(k[c * p.k.stride[3]]));
              w.dk[j * p.dim + c] += sds * Acc(Elem<T>::load(q[c * p.q.stride[3]]));
            }
            for (int64_t c = 0; c < p.dim_v; ++c)
              w.dv[j * p.dim_v + c] += pr * Acc(Elem<T>::load(dout[c * p.dout.stride[3]]));
          }
        }
        store_grad_row<T>(p.dq, b, i, h, w.dq, p.dim, Acc(1));
      }
    }
    for (int64_t j = 0; j < p.seq_k; ++j) {
      store_grad_row<T>(p.dk, b, j, g, w.dk + j * p.dim, p.dim, Acc(1));
      store_grad_row<T>(p.dv, b, j, g, w.dv + j * p.dim_v, p.dim_v, Acc(1));
    }
  });
}

// dbias per (bias batch, bias head) slice, walking the batches and heads it broadcasts over in a
// fixed order: each element is summed by one thread, deterministically.
template <typename T>
void dbias_pass(const BackwardParams& p, void* ws, size_t slice_bytes) {
  using Acc = AccOf<T>;
  const int64_t rows = p.bias_shape[2], cols = p.bias_shape[3];
  parallel_for_items(naive_dbias_items(p), backward_workers(p), ws, slice_bytes, [&](int64_t item, char* slice) {
    Carver c(slice);
    const auto w = NaiveBackwardSlices<Acc>::carve(p, c);
    const int64_t xb = item / p.bias_shape[1], xh = item % p.bias_shape[1];
    std::fill_n(w.dbias, rows * cols, Acc(0));
    const bool all_b = p.bias_broadcast(0), all_h = p.bias_broadcast(1);
    for (int64_t b = all_b ? 0 : xb; b < (all_b ? p.batch : xb + 1); ++b)
      for (int64_t h = all_h ? 0 : xh; h < (all_h ? p.heads_q : xh + 1); ++h) {
        head_probs<T>(p, b, h, w);
        for (int64_t i = 0; i < p.seq_q; ++i) {
          if (w.dead[i]) continue;
          row_dscores<T>(p, b, h, i, w);
          Acc* row = w.dbias + (rows == 1 ? 0 : i) * cols;
          for (int64_t j = 0; j < p.seq_k; ++j)
            if (key_visible(p, b, h, i, j)) row[cols == 1 ? 0 : j] += w.ds[j];
        }
      }
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j) store_dbias(p, xb, xh, i, j, w.dbias[i * cols + j]);
  });
}

// dsinks[h] = -sum_{b,i} P_sink(b, h, i) D(b, h, i), one item per head, summed over batches and
// rows in order: deterministic for any thread count.
template <typename T>
void dsinks_pass(const BackwardParams& p, void* ws, size_t slice_bytes) {
  using Acc = AccOf<T>;
  parallel_for_items(p.heads_q, backward_workers(p), ws, slice_bytes, [&](int64_t h, char* slice) {
    Acc sum = 0;
    if (p.batch > 0 && p.seq_q > 0) {  // else nothing to sum, and the workspace may be empty
      Carver c(slice);
      const auto w = NaiveBackwardSlices<Acc>::carve(p, c);
      for (int64_t b = 0; b < p.batch; ++b) {
        head_probs<T>(p, b, h, w);
        for (int64_t i = 0; i < p.seq_q; ++i)
          if (!w.dead[i]) sum += w.sink_probs[i] * row_dscores<T>(p, b, h, i, w);
      }
    }
    *const_cast<float*>(p.dsinks.at<float>(0, h, 0)) = float(-sum);
  });
}

}  // namespace

template <typename T>
void naive_backward(const BackwardParams& p, void* workspace) {
  Carver sizer;
  NaiveBackwardSlices<AccOf<T>>::carve(p, sizer);
  grads_pass<T>(p, workspace, sizer.used());
  if (p.has_dbias) dbias_pass<T>(p, workspace, sizer.used());
  if (p.has_dsinks) dsinks_pass<T>(p, workspace, sizer.used());
}

template void naive_backward<float>(const BackwardParams&, void*);
template void naive_backward<double>(const BackwardParams&, void*);
template void naive_backward<bf16>(const BackwardParams&, void*);
template void naive_backward<f16>(const BackwardParams&, void*);

}  // namespace memattn::detail
