// backward(), backward_workspace_bytes() and backward_tile_family(): validate, plan, take the workspace, dispatch once.
#include <cstdint>
#include <string>

#include "api/backward_params.hpp"
#include "api/validate.hpp"
#include "common/memory.hpp"
#include "cpu/flash_backward.hpp"
#include "memattn/memattn.hpp"
#include "plan/backward_plan.hpp"

namespace memattn {
namespace detail {
namespace {

template <typename T>
void run_backward(const BackwardParams& p, const BackwardKernels* bk, void* ws) {
  if (p.algorithm == Algorithm::naive) return naive_backward<T>(p, ws);
  if constexpr (!std::is_same_v<T, double>) flash_backward<T>(p, *bk, ws);
}

}  // namespace
}  // namespace detail

size_t backward_workspace_bytes(const Tensor& q, const Tensor& k, const Tensor& v, const Options& o,
                                const BackwardRequest& request) {
  using namespace detail;
  BackwardParams p = make_backward_params(q, k, v, nullptr, nullptr, nullptr, nullptr, nullptr,
                                          nullptr, o, nullptr, request);
  plan_backward(p, o);
  return detail::backward_workspace_bytes(p);
}

const char* backward_tile_family(const Tensor& q, const Tensor& k, const Tensor& v, const Options& o) {
  using namespace detail;
  BackwardParams p = make_backward_params(q, k, v, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, o, nullptr,
                                          BackwardRequest{});
  plan_backward(p, o);
  return p.algorithm == Algorithm::flash ? family_name(p.family) : "none";
}

void backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
              const Tensor& dout, const Tensor& lse, const Tensor& dq, const Tensor& dk,
              const Tensor& dv, const Options& o, const Tensor* dbias, Workspace ws,
              const Tensor* dsinks) {
  using namespace detail;
  BackwardParams p = make_backward_params(q, k, v, &out, &dout, &lse, &dq, &dk, &dv, o, dbias,
                                          BackwardRequest{dbias != nullptr}, dsinks);
  plan_backward(p, o);
  const BackwardKernels* bk = p.algorithm == Algorithm::flash ? &backward_kernels(*p.kernels) : nullptr;
  const CallWorkspace scratch(ws.data, ws.bytes, detail::backward_workspace_bytes(p), "the backward workspace");
  void* aligned = scratch.aligned();
  switch (p.dtype) {
    case DType::f32: return run_backward<float>(p, bk, aligned);
    case DType::bf16: return run_backward<bf16>(p, bk, aligned);
    case DType::f16: return run_backward<f16>(p, bk, aligned);
    default: return run_backward<double>(p, bk, aligned);
  }
}

}  // namespace memattn
