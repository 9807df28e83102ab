// `memattn demo`: for n = 2^8 .. 2^14 (one head, d = 64, f32), the extra memory (counted by an
// allocator hooked into the library), time and max difference to naive of naive, chunked and flash;
// then chunked and flash at larger n while the run stays inside the time budget.
#include "demo.hpp"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "counting_allocator.hpp"
#include "memattn/memattn.hpp"

namespace memattn::tool {
namespace {

constexpr int64_t kDim = 64;

struct Row {
  int64_t n;
  const char* algorithm;
  size_t io_bytes, extra_bytes;
  double ms;
  double max_abs_diff;  // NaN: no naive run at this n
};

std::string human_bytes(double b) {
  const char* unit[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, b < 10 && u ? "%.1f%s" : "%.0f%s", b, unit[u]);
  return buf;
}

// Times one forward call and returns the peak bytes the library held during it.
Row measure(CountingAllocator& counter, int64_t n, Algorithm alg, std::vector<float>& q,
            std::vector<float>& k, std::vector<float>& v, std::vector<float>& out) {
  const Tensor tq = Tensor::contiguous(q.data(), DType::f32, {1, n, 1, kDim});
  const Tensor tk = Tensor::contiguous(k.data(), DType::f32, {1, n, 1, kDim});
  const Tensor tv = Tensor::contiguous(v.data(), DType::f32, {1, n, 1, kDim});
  const Tensor to = Tensor::contiguous(out.data(), DType::f32, {1, n, 1, kDim});
  Options o;
  o.algorithm = alg;
  counter.reset_peak();
  const size_t before = counter.current;
  const auto t0 = std::chrono::steady_clock::now();
  forward(tq, tk, tv, to, nullptr, o);
  const auto t1 = std::chrono::steady_clock::now();
  return Row{n, algorithm_name(alg), 4 * size_t(n) * kDim * sizeof(float), counter.peak - before,
             std::chrono::duration<double, std::milli>(t1 - t0).count(), std::nan("")};
}

}  // namespace

int demo_main(int argc, char** argv) {
  bool json = false;
  double budget_s = 30;
  for (int i = 0; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--json")) json = true;
    else if (!std::strcmp(argv[i], "--max-seconds") && i + 1 < argc) budget_s = std::atof(argv[++i]);
    else {
      std::fprintf(stderr, "memattn demo: unknown option '%s' (expected --json, --max-seconds S)\n", argv[i]);
      return 2;
    }
  }
  CountingAllocator counter;
  set_allocator(counter.hook());
  std::vector<Row> rows;
  const auto start = std::chrono::steady_clock::now();
  const auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  double last_ms[2] = {0, 0};  // chunked, flash at the previous n
  for (int log_n = 8; log_n <= 20; ++log_n) {
    const int64_t n = int64_t(1) << log_n;
    const bool with_naive = log_n <= 14;
    // Past 2^14 only if chunked and flash (4x the work per doubling) fit in what is left.
    if (!with_naive && (last_ms[0] + last_ms[1]) * 4.2 / 1000 > budget_s - elapsed()) break;
    std::vector<float> q(size_t(n) * kDim), k(q.size()), v(q.size()), out(q.size()), ref;
    std::mt19937 g{uint32_t(log_n)};
    std::normal_distribution<float> nd;
    for (auto* t : {&q, &k, &v})
      for (float& x : *t) x = nd(g);
    if (with_naive) {
      rows.push_back(measure(counter, n, Algorithm::naive, q, k, v, out));
      rows.back().max_abs_diff = 0;
      ref = out;
    }
    int slot = 0;
    for (Algorithm alg : {Algorithm::chunked, Algorithm::flash}) {
      Row r = measure(counter, n, alg, q, k, v, out);
      if (with_naive) {
        double d = 0;
        for (size_t i = 0; i < out.size(); ++i) d = std::max(d, double(std::fabs(out[i] - ref[i])));
        r.max_abs_diff = d;
      }
      last_ms[slot++] = r.ms;
      rows.push_back(r);
    }
  }
  set_allocator({});

  if (json) {
    std::printf("[\n");
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      char diff[32];
      if (std::isnan(r.max_abs_diff)) std::snprintf(diff, sizeof diff, "null");
      else std::snprintf(diff, sizeof diff, "%.3g", r.max_abs_diff);
      std::printf("  {\"n\": %lld, \"algorithm\": \"%s\", \"head_dim\": %lld, \"io_bytes\": %zu, "
                  "\"extra_bytes\": %zu, \"ms\": %.3f, \"max_abs_diff\": %s}%s\n",
                  (long long)r.n, r.algorithm, (long long)kDim, r.io_bytes, r.extra_bytes, r.ms, diff,
                  i + 1 < rows.size() ? "," : "");
    }
    std::printf("]\n");
    return 0;
  }
  std::printf("memattn demo: self-attention inference, one head, d = %lld, f32 (the paper's Table 2)\n",
              (long long)kDim);
  std::printf("extra memory = peak bytes memattn allocated during the call (counting allocator)\n\n");
  std::printf("%8s  %-10s  %10s  %12s  %11s  %14s\n", "n", "algorithm", "inputs+out", "extra memory",
              "time ms", "max |x-naive|");
  for (const Row& r : rows) {
    char diff[32];
    if (std::isnan(r.max_abs_diff)) std::snprintf(diff, sizeof diff, "-");
    else std::snprintf(diff, sizeof diff, "%.2e", r.max_abs_diff);
    std::printf("%8lld  %-10s  %10s  %12s  %11.2f  %14s\n", (long long)r.n, r.algorithm,
                human_bytes(double(r.io_bytes)).c_str(), human_bytes(double(r.extra_bytes)).c_str(),
                r.ms, diff);
  }
  return 0;
}

}  // namespace memattn::tool
