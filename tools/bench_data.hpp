// Seeded operands for `memattn bench` (contiguous [batch, n, heads, d] tensors of unit variance)
// and the timing of its calls.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "memattn/types.hpp"

namespace memattn::tool {

// Unit-variance values, uniform on [-sqrt 3, sqrt 3], from a counter-based hash (fast and seeded).
void fill(void* data, DType dt, size_t count, uint64_t seed);

// Seconds one call takes.
double seconds_of(const std::function<void()>& call);
// Median milliseconds of `reps` calls after one warm-up (reps 0: enough calls to fill min_seconds,
// at least 3), and the number of calls timed.
std::pair<double, int64_t> time_calls(const std::function<void()>& call, int64_t reps, double min_seconds);

// One contiguous [batch, n, heads, d] tensor and its storage.
struct Buffer {
  std::vector<float> storage;
  Tensor view;
  Buffer(DType dt, int64_t b, int64_t n, int64_t h, int64_t d, uint64_t seed);
};

}  // namespace memattn::tool
