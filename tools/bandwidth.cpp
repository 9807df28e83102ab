// STREAM-like read bandwidth (see bandwidth.hpp).
#include "bandwidth.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
// GCC 12 warns of uninitialised __Y inside its own AVX-512 reduction (_mm512_undefined_*).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#endif

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

// The same sum in whole 64-byte lines where AVX-512 exists: with baseline 16-byte loads one core
// issued too few of them to keep DRAM busy (a Zen 5, 1 thread, alternating runs: 12.8-13.2 GB/s
// against 20.9-22.2 GB/s here), which made the decode ratios look better than they are.
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f"))) uint64_t read_lines(const uint64_t* p, size_t n) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm512_add_epi64(a0, _mm512_loadu_si512(p + i));
    a1 = _mm512_add_epi64(a1, _mm512_loadu_si512(p + i + 8));
    a2 = _mm512_add_epi64(a2, _mm512_loadu_si512(p + i + 16));
    a3 = _mm512_add_epi64(a3, _mm512_loadu_si512(p + i + 24));
  }
  return _mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3))) +
         read_words(p + i, n - i);
}
uint64_t read_fastest(const uint64_t* p, size_t n) {
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return avx512 ? read_lines(p, n) : read_words(p, n);
}
#else
uint64_t read_fastest(const uint64_t* p, size_t n) { return read_words(p, n); }
#endif

}  // namespace

namespace {

// Best of kRuns GB/s of `threads` threads each running read(slice, words) over its own slice of a
// buffer of `bytes`.
template <typename Read>
double best_gbps(int threads, size_t bytes, Read read) {
  const size_t words = bytes / sizeof(uint64_t);
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
      pool.emplace_back([&, t] { sink[size_t(t)] = read(buf.data() + size_t(t) * per, per); });
    for (auto& th : pool) th.join();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, double(per * size_t(threads) * sizeof(uint64_t)) / s / 1e9);
  }
  // The sums must be used, or the reads could be dropped.
  volatile uint64_t keep = 0;
  for (uint64_t s : sink) keep = keep + s;
  return best;
}

}  // namespace

double measure_read_gbps(int threads) { return best_gbps(threads, kBytes, read_fastest); }

double measure_head_walk_gbps(int threads, int64_t kv_heads, size_t row_bytes, int64_t chunk) {
  const size_t row = std::max<size_t>(row_bytes / sizeof(uint64_t), 1), key = row * size_t(kv_heads);
  // Rows shorter than 4 lines are summed inline: a call per row made the small shapes of the tests
  // take seconds. A quarter of the plain read's buffer, still 8x the largest L3.
  return best_gbps(threads, kBytes / 4, [&](const uint64_t* p, size_t words) {
    const size_t keys = words / key, c = size_t(chunk);
    uint64_t s = 0;
    for (size_t j0 = 0; j0 < keys; j0 += c)
      for (size_t h = 0; h < size_t(kv_heads); ++h)
        for (size_t j = j0; j < std::min(keys, j0 + c); ++j) {
          const uint64_t* r = p + j * key + h * row;
          s += row >= 32 ? read_fastest(r, row) : read_words(r, row);
        }
    return s;
  });
}

}  // namespace memattn::tool
