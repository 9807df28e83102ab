// The flash forward: chunks of queries against chunks of keys, merged online (constant memory).
#pragma once

#include <cstddef>

#include "api/params.hpp"

namespace memattn::detail {

// Validated, planned Params; a workspace of forward_workspace_bytes(p) bytes, 64-byte aligned.
template <typename T>
void flash_forward(const Params& p, void* workspace);

// Bytes of one worker's slice of the flash forward's workspace on the planned tile family.
size_t flash_forward_slice_bytes(const Params& p);

}  // namespace memattn::detail
