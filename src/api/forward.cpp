// forward() and workspace_bytes(): validate, plan, take the workspace, dispatch once.
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
