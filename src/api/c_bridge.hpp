// The C API's conversions and error reporting, shared with the C entry points of memattn_dist.
#pragma once

#include <functional>

#include "memattn/memattn.h"
#include "memattn/types.hpp"

namespace memattn::detail {

// Runs the body of a C entry point: MEMATTN_OK, or the status of the exception it threw with its
// message recorded for memattn_last_error(). Never throws.
memattn_status c_guarded(const std::function<void()>& body) noexcept;
// The C++ view of a C tensor; invalid_argument naming `name` for NULL or a bad dtype value.
Tensor c_tensor(const memattn_tensor* t, const char* name);
// Converts C options (NULL, enum values out of range: invalid_argument) and calls `use` with them;
// the mask and bias views they point to live until `use` returns.
void with_c_options(const memattn_options* options, const std::function<void(const Options&)>& use);

}  // namespace memattn::detail
