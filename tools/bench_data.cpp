// Seeded operands and call timing for `memattn bench` (see bench_data.hpp).
#include "bench_data.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "common/half.hpp"

namespace memattn::tool {

void fill(void* data, DType dt, size_t count, uint64_t seed) {
  for (size_t i = 0; i < count; ++i) {
    uint64_t z = seed * 0x9e3779b97f4a7c15ull + i;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    const float x = (float(z >> 40) * 0x1p-24f * 2 - 1) * 1.7320508f;
    if (dt == DType::f32) static_cast<float*>(data)[i] = x;
    else if (dt == DType::bf16) static_cast<uint16_t*>(data)[i] = to_bf16(x).bits;
    else static_cast<uint16_t*>(data)[i] = to_f16(x).bits;
  }
}

double seconds_of(const std::function<void()>& call) {
  const auto t0 = std::chrono::steady_clock::now();
  call();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::pair<double, int64_t> time_calls(const std::function<void()>& call, int64_t reps, double min_seconds) {
  const double warm = seconds_of(call);
  if (reps == 0) reps = std::max<int64_t>(3, int64_t(std::ceil(min_seconds / warm)));
  std::vector<double> t(static_cast<size_t>(reps));
  for (double& x : t) x = seconds_of(call);
  std::sort(t.begin(), t.end());
  return {1e3 * (t[t.size() / 2] + t[(t.size() - 1) / 2]) / 2, reps};
}

Buffer::Buffer(DType dt, int64_t b, int64_t n, int64_t h, int64_t d, uint64_t seed) {
  const size_t count = size_t(b * n * h * d);
  storage.resize((count * dtype_size(dt) + 3) / 4);
  view = Tensor::contiguous(storage.data(), dt, {b, n, h, d});
  fill(storage.data(), dt, count, seed);
}

}  // namespace memattn::tool
