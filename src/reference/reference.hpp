// The paper's three reference algorithms: plain, readable C++ that defines what memattn computes.
#pragma once

#include "api/params.hpp"

namespace memattn::detail {

// Each takes validated, planned Params and a workspace of forward_workspace_bytes(p) bytes
// (64-byte aligned), writes out (and lse) and allocates nothing. T: f32, bf16, f16 or f64.
template <typename T>
void naive_forward(const Params& p, void* workspace);
template <typename T>
void sequential_forward(const Params& p, void* workspace);
template <typename T>
void chunked_forward(const Params& p, void* workspace);

}  // namespace memattn::detail
