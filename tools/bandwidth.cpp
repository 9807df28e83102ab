// STREAM-like read bandwidth (see bandwidth.hpp).
#include "bandwidth.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace memattn::tool {
namespace {

// 1 GiB: 32x the largest L3 these machines have, so nearly every byte comes from DRAM.
constexpr size_t kBytes = size_t(1) << 30;
constexpr int kRuns = 5;

// Sums the 64-bit words of [p, p + n): integer adds in 8 independent chains, which the compiler
// vectorises at any -march without reassociating floats, so the loads are what limits it.
uint64_t read_words(const uint64_t* p, size_t n) {
  uint64_t acc[8] = {};
  for (size_t i = 0; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += p[i + j];
  uint64_t s = 0;
  for (uint64_t a : acc) s += a;
  return s;
}

}  // namespace

double measure_read_gbps(int threads) {
  const size_t words = kBytes / sizeof(uint64_t);
  std::vector<uint64_t> buf(words);
  // Touched by the threads that will read it (first-touch places the pages near them).
  const size_t per = words / size_t(threads) / 8 * 8;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] { std::memset(buf.data() + size_t(t) * per, t + 1, per * sizeof(uint64_t)); });
  for (auto& th : pool) th.join();
  double best = 0;
  std::vector<uint64_t> sink(static_cast<size_t>(threads));
  for (int run = 0; run < kRuns; ++run) {
    pool.clear();
    const auto t0 = std::chrono::steady_clock::now();
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] { sink[size_t(t)] = read_words(buf.data() + size_t(t) * per, per); });
    for (auto& th : pool) th.join();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, double(per * size_t(threads) * sizeof(uint64_t)) / s / 1e9);
  }
  // The sums must be used, or the reads could be dropped.
  volatile uint64_t keep = 0;
  for (uint64_t s : sink) keep = keep + s;
  return best;
}

}  // namespace memattn::tool
