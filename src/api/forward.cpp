// forward(), workspace_bytes(), tile_family() and attention_with_kvcache(): validate, plan, take the
// workspace, dispatch once.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>

#include "api/kvcache.hpp"
#include "api/sequences.hpp"
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

// The call's parts (the dense problem, or one per varlen sequence), each planned as a dense call.
// A call without sequences (cu_seqlens [0]) computes nothing, but what the planner refuses (f64 on
// flash, a bf16/f16 cache on a reference algorithm) it refuses as a call with sequences would: the
// whole call is planned instead.
Parts plan(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor* out, const Tensor* lse,
           const Options& o) {
  Params whole = make_forward_params(q, k, v, out, lse, o);
  Parts parts = split_sequences(whole, o);
  for (Params& p : parts) plan_forward(p, o);
  if (parts.empty()) plan_forward(whole, o);
  return parts;
}

// No keys: every row is fully masked (out = 0, lse = -inf); K and V are not read.
template <typename T>
void write_empty_rows(const Params& p) {
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < p.heads_q; ++h)
      for (int64_t i = 0; i < p.seq_q; ++i) store_row<T, float>(p, b, h, i, nullptr, 0, 0.0f, 0.0f);
}

// The reference algorithms run the parts one after another; the flash driver runs every part's
// items in one parallel loop.
template <typename T>
void run(const Parts& parts, void* ws) {
  for (const Params& p : parts)
    if (p.seq_k == 0) write_empty_rows<T>(p);
  if (parts.front().algorithm == Algorithm::flash) {
    if constexpr (!std::is_same_v<T, double>) flash_forward<T>(parts, ws);
    return;
  }
  for (const Params& p : parts) {
    if (p.empty() || p.seq_k == 0) continue;
    switch (p.algorithm) {
      case Algorithm::naive: naive_forward<T>(p, ws); break;
      case Algorithm::sequential: sequential_forward<T>(p, ws); break;
      default: chunked_forward<T>(p, ws); break;
    }
  }
}

// attention_with_kvcache's parts, planned on the flash algorithm (the one that reads paged keys).
// A batch of 0 sequences is planned whole, as plan() does.
Parts plan_kvcache(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& seqlens_k,
                   const Tensor* block_table, const Tensor* out, const Tensor* lse, const Options& o) {
  Params whole;
  Parts parts = kvcache_parts(q, k_cache, v_cache, seqlens_k, block_table, out, lse, o, &whole);
  Options flash = o;
  flash.algorithm = Algorithm::flash;
  for (Params& p : parts) plan_forward(p, flash);
  if (parts.empty()) plan_forward(whole, flash);
  return parts;
}

// The planned parts of a call run into the caller's or an allocated workspace.
void run_parts(const Parts& parts, Workspace ws) {
  const size_t need = forward_workspace_bytes(parts);
  if (need == 0 && std::all_of(parts.begin(), parts.end(), [](const Params& p) { return p.empty(); })) return;
  const CallWorkspace scratch(ws.data, ws.bytes, need, "the forward workspace");
  void* aligned = scratch.aligned();
  switch (parts.front().dtype) {
    case DType::f32: return run<float>(parts, aligned);
    case DType::bf16: return run<bf16>(parts, aligned);
    case DType::f16: return run<f16>(parts, aligned);
    default: return run<double>(parts, aligned);
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
  const bool known = int(dtype) <= int(DType::i64);  // DType is unsigned
  if (!known || dtype == DType::u8 || dtype == DType::i32 || dtype == DType::i64)
    fail(known ? ErrorCode::wrong_dtype : ErrorCode::invalid_argument,
         cat("dtype: expected one of f32, bf16, f16, f64, got ",
             known ? std::string(dtype_name(dtype)) : std::to_string(int(dtype))));
  // An empty problem of that dtype goes through the very validation and planner a call does, so
  // the answer (and any error) is the call's: the family depends on the dtype, the options and the
  // machine, never on shapes. Masks, biases, ALiBi slopes and sinks are dropped: they would be
  // checked against the empty problem's shape, and they do not change the family.
  Options o = options;
  o.mask = o.bias = o.alibi_slopes = o.sinks = nullptr;
  o.cu_seqlens_q = o.cu_seqlens_k = nullptr;  // nor do sequence descriptors
  o.max_seqlen_q = o.max_seqlen_k = 0;
  const Tensor none = Tensor::contiguous(nullptr, dtype, {0, 1, 1, 1});  // batch 0: no memory
  const Params p = plan(none, none, none, nullptr, nullptr, o).front();
  return p.algorithm == Algorithm::flash ? family_name(p.family) : "none";
}

void forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor* lse,
             const Options& o, Workspace ws) {
  using namespace detail;
  run_parts(plan(q, k, v, &out, lse, o), ws);
}

size_t kvcache_workspace_bytes(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                               const Tensor& seqlens_k, const Tensor* block_table, const Options& o) {
  using namespace detail;
  return forward_workspace_bytes(plan_kvcache(q, k_cache, v_cache, seqlens_k, block_table, nullptr, nullptr, o));
}

void attention_with_kvcache(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& seqlens_k,
                            const Tensor* block_table, const Tensor& out, const Tensor* lse, const Options& o,
                            Workspace ws) {
  using namespace detail;
  run_parts(plan_kvcache(q, k_cache, v_cache, seqlens_k, block_table, &out, lse, o), ws);
}

}  // namespace memattn
