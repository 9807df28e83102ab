// The flash backward (FlashAttention-2 by recomputation, deterministic) and the naive reference.
#pragma once

#include "api/backward_params.hpp"
#include "cpu/flash_backward_kernels.hpp"
#include "plan/backward_plan.hpp"

namespace memattn::detail {

// Validated, planned parts (the dense call, or a varlen call's sequences); a workspace of
// backward_workspace_bytes(parts) bytes, 64-byte aligned. T: f32, bf16 or f16.
template <typename T>
void flash_backward(const BackwardParts& parts, const BackwardKernels& bk, void* workspace);

// The O(n^2) reference: per head, the whole softmax matrix recomputed from scratch (lse and out
// are not read). T: f32, bf16, f16 or f64.
template <typename T>
void naive_backward(const BackwardParams& p, void* workspace);

}  // namespace memattn::detail
