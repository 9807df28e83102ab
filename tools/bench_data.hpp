// Seeded operands for `memattn bench`: contiguous [batch, n, heads, d] tensors of unit variance.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "memattn/types.hpp"

namespace memattn::tool {

// Unit-variance values, uniform on [-sqrt 3, sqrt 3], from a counter-based hash (fast and seeded).
void fill(void* data, DType dt, size_t count, uint64_t seed);

// One contiguous [batch, n, heads, d] tensor and its storage.
struct Buffer {
  std::vector<float> storage;
  Tensor view;
  Buffer(DType dt, int64_t b, int64_t n, int64_t h, int64_t d, uint64_t seed);
};

}  // namespace memattn::tool
