// forward(), workspace_bytes() and tile_family(): validate, plan, take the workspace, dispatch once.
#include <cstdint>
#include <limits>
#include <string>

#include "api/validate.hpp"
#include "common/half.hpp"
#include "common/memory.hpp"
#include "common/rowops.hpp"
#include "cpu/flash_forward.hpp"
#include "memattn/memattn.hpp"
#include "plan/plan.hpp"
#include "reference/reference.hpp"

namespace memattn {
namespace detail {
namespace {

Params plan(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor* out, const Tensor* lse,
            const Options& o) {
  Params p = make_forward_params(q, k, v, out, lse, o);
  plan_forward(p, o);
  return p;
}

// No keys: every row is fully masked (out = 0, lse = -inf); K and V are not read.
template <typename T>
void write_empty_rows(const Params& p) {
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < p.heads_q; ++h)
      for (int64_t i = 0; i < p.seq_q; ++i) store_row<T, float>(p, b, h, i, nullptr, 0, 0.0f, 0.0f);
}

template <typename T>
void run(const Params& p, void* ws) {
  if (p.seq_k == 0) return write_empty_rows<T>(p);
  switch (p.algorithm) {
    case Algorithm::naive: return naive_forward<T>(p, ws);
    case Algorithm::sequential: return sequential_forward<T>(p, ws);
    case Algorithm::chunked: return chunked_forward<T>(p, ws);
    default:
      if constexpr (!std::is_same_v<T, double>) return flash_forward<T>(p, ws);
  }
}

}  // namespace
}  // namespace detail

size_t workspace_bytes(const Tensor& q, const Tensor& k, const Tensor& v, const Options& o) {
  return detail::forward_workspace_bytes(detail::plan(q, k, v, nullptr, nullptr, o));
}

const char* tile_family(DType dtype, const Options& options) {
  using namespace detail;
  // Checked here so that the message names `dtype`; the call's own checks would name q.
  const bool known = int(dtype) <= int(DType::u8);  // DType is unsigned
  if (!known || dtype == DType::u8)
    fail(known ? ErrorCode::wrong_dtype : ErrorCode::invalid_argument,
         cat("dtype: expected one of f32, bf16, f16, f64, got ",
             known ? std::string(dtype_name(dtype)) : std::to_string(int(dtype))));
  // An empty problem of that dtype goes through the very validation and planner a call does, so
  // the answer (and any error) is the call's: the family depends on the dtype, the options and the
  // machine, never on shapes. Masks, biases, ALiBi slopes and sinks are dropped: they would be
  // checked against the empty problem's shape, and they do not change the family.
  Options o = options;
  o.mask = o.bias = o.alibi_slopes = o.sinks = nullptr;
  const Tensor none = Tensor::contiguous(nullptr, dtype, {0, 1, 1, 1});  // batch 0: no memory
  const Params p = plan(none, none, none, nullptr, nullptr, o);
  return p.algorithm == Algorithm::flash ? family_name(p.family) : "none";
}

void forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor* lse,
             const Options& o, Workspace ws) {
  using namespace detail;
  const Params p = plan(q, k, v, &out, lse, o);
  if (p.empty()) return;
  const CallWorkspace scratch(ws.data, ws.bytes, forward_workspace_bytes(p), "the forward workspace");
  void* aligned = scratch.aligned();
  switch (p.dtype) {
    case DType::f32: return run<float>(p, aligned);
    case DType::bf16: return run<bf16>(p, aligned);
    case DType::f16: return run<f16>(p, aligned);
    default: return run<double>(p, aligned);
  }
}

}  // namespace memattn
