// backward(), backward_workspace_bytes() and backward_tile_family(): validate, plan, take the workspace, dispatch once.
#include <cstdint>
#include <string>

#include "api/backward_params.hpp"
#include "api/sequences.hpp"
#include "api/validate.hpp"
#include "common/memory.hpp"
#include "cpu/flash_backward.hpp"
#include "memattn/memattn.hpp"
#include "plan/backward_plan.hpp"

namespace memattn {
namespace detail {
namespace {

// The call's parts (the dense problem, or one per varlen sequence), each planned as a dense call;
// a call without sequences is planned whole, so that it is refused as one with sequences would be.
BackwardParts plan(const BackwardParams& whole, const Options& o) {
  BackwardParts parts = split_sequences(whole, o);
  for (BackwardParams& p : parts) plan_backward(p, o);
  if (parts.empty()) {
    BackwardParams probe = whole;
    plan_backward(probe, o);
  }
  return parts;
}

template <typename T>
void run_backward(const BackwardParts& parts, const BackwardKernels* bk, void* ws) {
  if (parts.front().algorithm == Algorithm::naive) {
    for (const BackwardParams& p : parts) naive_backward<T>(p, ws);
    return;
  }
  if constexpr (!std::is_same_v<T, double>) flash_backward<T>(parts, *bk, ws);
}

}  // namespace
}  // namespace detail

size_t backward_workspace_bytes(const Tensor& q, const Tensor& k, const Tensor& v, const Options& o,
                                const BackwardRequest& request) {
  using namespace detail;
  const BackwardParams whole = make_backward_params(q, k, v, nullptr, nullptr, nullptr, nullptr, nullptr,
                                                    nullptr, o, nullptr, request);
  return detail::backward_workspace_bytes(plan(whole, o));
}

const char* backward_tile_family(const Tensor& q, const Tensor& k, const Tensor& v, const Options& o) {
  using namespace detail;
  BackwardParams p = make_backward_params(q, k, v, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, o, nullptr,
                                          BackwardRequest{});
  plan_backward(p, o);
  if (p.algorithm != Algorithm::flash) return "none";
  return uses_bf16_backward(p) ? family_name(p.family) : "f32_fma";
}

void backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
              const Tensor& dout, const Tensor& lse, const Tensor& dq, const Tensor& dk,
              const Tensor& dv, const Options& o, const Tensor* dbias, Workspace ws,
              const Tensor* dsinks) {
  using namespace detail;
  if (dsinks != nullptr && o.cu_seqlens_q != nullptr)
    fail(ErrorCode::unsupported,
         "dsinks: the gradient of the sinks is not computed for variable-length batches "
         "(options.cu_seqlens_q is set); pass dsinks = null, or call backward per sequence");
  const BackwardParts parts = plan(make_backward_params(q, k, v, &out, &dout, &lse, &dq, &dk, &dv, o, dbias,
                                                        BackwardRequest{dbias != nullptr}, dsinks),
                                   o);
  if (parts.empty()) return;
  const BackwardParams& p = parts.front();
  const BackwardKernels* bk = p.algorithm == Algorithm::flash ? &backward_kernels(*p.kernels) : nullptr;
  const CallWorkspace scratch(ws.data, ws.bytes, detail::backward_workspace_bytes(parts), "the backward workspace");
  void* aligned = scratch.aligned();
  switch (p.dtype) {
    case DType::f32: return run_backward<float>(parts, bk, aligned);
    case DType::bf16: return run_backward<bf16>(parts, bk, aligned);
    case DType::f16: return run_backward<f16>(parts, bk, aligned);
    default: return run_backward<double>(parts, bk, aligned);
  }
}

}  // namespace memattn
