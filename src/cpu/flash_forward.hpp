// The flash forward: chunks of queries against chunks of keys, merged online (constant memory).
#pragma once

#include "api/params.hpp"

namespace memattn::detail {

// Validated, planned Params; a workspace of forward_workspace_bytes(p) bytes, 64-byte aligned.
template <typename T>
void flash_forward(const Params& p, void* workspace);

}  // namespace memattn::detail
