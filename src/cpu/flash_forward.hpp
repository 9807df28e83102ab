// The flash forward: chunks of queries against chunks of keys, merged online (constant memory).
#pragma once

#include <cstddef>
#include <vector>

#include "api/params.hpp"

namespace memattn::detail {

// Validated, planned parts (one dense problem, or a varlen call's sequences) of one family; a
// workspace of forward_workspace_bytes(parts) bytes, 64-byte aligned.
template <typename T>
void flash_forward(const std::vector<Params>& parts, void* workspace);

// Bytes of one worker's slice of the flash forward's workspace on the planned tile family.
size_t flash_forward_slice_bytes(const Params& p);

}  // namespace memattn::detail
