// Validation of backward()'s operands into a BackwardParams: the forward's checks for q, k, v and
// the options, then out, dout and lse as inputs, and dq, dk, dv, dbias as outputs that overlap
// nothing.
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "api/backward_params.hpp"
#include "api/validate.hpp"

namespace memattn::detail {
namespace {

std::string dims_str(const std::vector<int64_t>& d) {
  std::ostringstream s;
  s << '[';
  for (size_t i = 0; i < d.size(); ++i) s << (i ? "," : "") << d[i];
  s << ']';
  return s.str();
}

// An operand whose dtype and exact shape are dictated by another: `what` explains the shape.
void check_like(const Tensor& t, const char* name, DType dtype, const std::vector<int64_t>& shape,
                const char* what) {
  check_tensor(t, name, int(shape.size()));
  if (t.dtype != dtype)
    fail(ErrorCode::wrong_dtype,
         cat(name, ": dtype must be ", dtype_name(dtype), ", got ", dtype_name(t.dtype)));
  for (size_t i = 0; i < shape.size(); ++i)
    if (t.shape[i] != shape[i])
      fail(ErrorCode::invalid_argument,
           cat(name, ": shape ", shape_str(t), " expected ", dims_str(shape), " (", what, ")"));
}

}  // namespace

BackwardParams make_backward_params(const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor* out, const Tensor* dout, const Tensor* lse,
                                    const Tensor* dq, const Tensor* dk, const Tensor* dv,
                                    const Options& o, const Tensor* dbias,
                                    const BackwardRequest& request, const Tensor* dsinks) {
  BackwardParams p;
  static_cast<Params&>(p) = make_forward_params(q, k, v, nullptr, nullptr, o);
  if (p.kv_dtype != p.dtype)
    fail(ErrorCode::wrong_dtype,
         cat("k, v: the backward takes k and v in q's dtype (", dtype_name(p.dtype), "), got ",
             dtype_name(p.kv_dtype), " (a bf16/f16 KV cache with f32 queries is forward only)"));
  if (o.bias)
    for (int i = 0; i < 4; ++i) p.bias_shape[size_t(i)] = o.bias->shape[i];
  if ((request.bias_grad || dbias) && !o.bias)
    fail(ErrorCode::invalid_argument,
         "dbias: a bias gradient was requested but options.bias is null (no bias to differentiate)");
  if (dsinks && !o.sinks)
    fail(ErrorCode::invalid_argument,
         "dsinks: a sinks gradient was requested but options.sinks is null (no sinks to differentiate)");
  if (!out) {
    p.has_dbias = request.bias_grad;
    return p;
  }

  const DType dt = p.dtype;
  const std::vector<int64_t> out_shape{p.batch, p.seq_q, p.heads_q, p.dim_v};
  check_like(*out, "out", dt, out_shape, "[batch, seq_q, heads_q, head_dim_v], forward's output");
  check_like(*dout, "dout", dt, out_shape, "the shape of out");
  check_like(*lse, "lse", DType::f32, {p.batch, p.heads_q, p.seq_q},
             "[batch, heads_q, seq_q], forward's log-sum-exp");
  check_like(*dq, "dq", dt, {p.batch, p.seq_q, p.heads_q, p.dim}, "the shape of q");
  check_like(*dk, "dk", dt, {p.batch, p.seq_k, p.heads_kv, p.dim}, "the shape of k");
  check_like(*dv, "dv", dt, {p.batch, p.seq_k, p.heads_kv, p.dim_v}, "the shape of v");
  if (dbias)
    check_like(*dbias, "dbias", o.bias->dtype,
               {o.bias->shape[0], o.bias->shape[1], o.bias->shape[2], o.bias->shape[3]},
               "the shape of bias");
  if (dsinks) check_like(*dsinks, "dsinks", DType::f32, {p.heads_q}, "[heads_q], the shape of sinks");

  const std::pair<const Tensor*, const char*> outputs[] = {
      {dq, "dq"}, {dk, "dk"}, {dv, "dv"}, {dbias, "dbias"}, {dsinks, "dsinks"}};
  const std::pair<const Tensor*, const char*> inputs[] = {
      {&q, "q"},        {&k, "k"},     {&v, "v"},         {out, "out"},
      {dout, "dout"},   {lse, "lse"},  {o.mask, "mask"},  {o.bias, "bias"},
      {o.alibi_slopes, "alibi_slopes"}, {o.sinks, "sinks"}, {o.cu_seqlens_q, "cu_seqlens_q"},
      {o.cu_seqlens_k, "cu_seqlens_k"}};
  for (size_t i = 0; i < std::size(outputs); ++i) {
    const auto [t, name] = outputs[i];
    if (!t) continue;
    check_writable(*t, name);
    for (const auto& [in, in_name] : inputs)
      if (in) check_no_alias(*t, name, *in, in_name);
    for (size_t j = 0; j < i; ++j)
      if (outputs[j].first) check_no_alias(*t, name, *outputs[j].first, outputs[j].second);
  }

  p.out = make_view(*out);
  p.lse = make_view(*lse);
  p.has_lse = true;
  p.dout = make_view(*dout);
  p.dq = make_view(*dq);
  p.dk = make_view(*dk);
  p.dv = make_view(*dv);
  if (dbias) {
    p.dbias = make_view(*dbias);
    p.has_dbias = true;
  }
  if (dsinks) {
    p.dsinks = make_view(*dsinks);
    p.dsinks.stride[1] = p.dsinks.stride[0], p.dsinks.stride[0] = 0;  // indexed (0, h) as sinks
    p.has_dsinks = true;
  }
  return p;
}

}  // namespace memattn::detail
