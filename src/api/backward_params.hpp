// The validated description of one backward call: the forward's Params extended with the
// gradient operands (FlashAttention's Flash_bwd_params extends Flash_fwd_params the same way).
#pragma once

#include <array>
#include <cstdint>

#include "api/params.hpp"
#include "common/half.hpp"
#include "memattn/memattn.hpp"

namespace memattn::detail {

struct BackwardParams : Params {
  // Params::out and Params::lse are read here: the forward's output and log-sum-exp.
  View dout;            // read; dims like out
  View dq, dk, dv;      // written; dims like q, k, v
  View dbias;           // written when has_dbias; dims like bias, exact (no broadcast strides)
  bool has_dbias = false;
  View dsinks;          // written when has_dsinks: f32 [heads_q], stride[1] (as Params::sinks)
  bool has_dsinks = false;
  // Extents of bias (and dbias): [B|1, H|1, Sq|1, Sk|1]; all 1 without a bias.
  std::array<int64_t, 4> bias_shape{1, 1, 1, 1};

  bool bias_broadcast(int dim) const { return bias_shape[size_t(dim)] == 1; }
};

// Validates every operand of backward() (or, for sizing, only q, k, v and the options when `out`
// is null) and fills the shape and operand fields; dsinks (nullable) needs options.sinks. Throws memattn::Error before anything is
// written; gradients must not overlap any input nor each other.
BackwardParams make_backward_params(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor* out, const Tensor* dout, const Tensor* lse,
                                    const Tensor* dq, const Tensor* dk, const Tensor* dv,
                                    const Options& options, const Tensor* dbias,
                                    const BackwardRequest& request, const Tensor* dsinks = nullptr);

// Writes dst[b, i, h, c] = mul * src[c] for c < n, rounded to T (a dq, dk or dv row).
template <typename T, typename Acc>
void store_grad_row(const View& dst, int64_t b, int64_t i, int64_t h, const Acc* src, int64_t n,
                    Acc mul) {
  T* row = const_cast<T*>(dst.at<T>(b, i, h));
  for (int64_t c = 0; c < n; ++c) row[c * dst.stride[3]] = Elem<T>::store(mul * src[c]);
}

// Writes one dbias element, rounded to the bias's dtype.
template <typename Acc>
void store_dbias(const BackwardParams& p, int64_t b, int64_t h, int64_t i, int64_t j, Acc x) {
  void* at = const_cast<void*>(static_cast<const void*>(
      static_cast<const char*>(p.dbias.data) +
      int64_t(dtype_size(p.dbias.dtype)) *
          (b * p.dbias.stride[0] + h * p.dbias.stride[1] + i * p.dbias.stride[2] + j * p.dbias.stride[3])));
  switch (p.dbias.dtype) {
    case DType::f64: *static_cast<double*>(at) = double(x); break;
    case DType::bf16: *static_cast<bf16*>(at) = to_bf16(float(x)); break;
    case DType::f16: *static_cast<f16*>(at) = to_f16(float(x)); break;
    default: *static_cast<float*>(at) = float(x); break;
  }
}

}  // namespace memattn::detail
