// The one exception type memattn throws, with a machine-readable code.
#pragma once

#include <stdexcept>
#include <string>

namespace memattn {

enum class ErrorCode : int {
  invalid_argument = 1,  // a shape, dtype, stride, option or pointer is wrong
  size_overflow = 2,     // a size or byte count does not fit in 64 bits
  workspace_too_small = 3,
  aliasing = 4,          // an output shares memory with another operand
  out_of_memory = 5,     // the allocator returned null
  unsupported = 6,       // a valid request this build or CPU cannot serve
  wrong_dtype = 7,       // an operand's element type is not one this call accepts
};

// what() names the argument, what was expected and what was given.
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace memattn
