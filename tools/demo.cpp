// `memattn demo`: for n = 2^8 .. 2^14 (one head, d = 64, f32), the extra memory (counted by an
// allocator hooked into the library), time and max difference to naive of naive, chunked and flash;
// then chunked and flash at larger n while the run stays inside the time budget (the paper's
// Table 2). Then the same for differentiation, forward + backward of naive and flash (Table 3).
#include "demo.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "counting_allocator.hpp"
#include "format.hpp"
#include "memattn/memattn.hpp"

namespace memattn::tool {
namespace {

constexpr int64_t kDim = 64;

struct Row {
  const char* direction;  // "forward" (Table 2) or "backward" (Table 3: forward + backward)
  int64_t n;
  const char* algorithm;
  size_t io_bytes, extra_bytes;
  double ms;
  double max_abs_diff;  // NaN: no naive run at this n
};

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
  return Row{"forward", n, algorithm_name(alg), 4 * size_t(n) * kDim * sizeof(float), counter.peak - before,
             std::chrono::duration<double, std::milli>(t1 - t0).count(), std::nan("")};
}

// The operands of one differentiation: q, k, v and dout seeded randn, out, lse and the gradients.
struct Grads {
  int64_t n;
  std::vector<float> q, k, v, dout, out, lse, dq, dk, dv;
  explicit Grads(int64_t n_) : n(n_) {
    const size_t e = size_t(n) * kDim;
    for (auto* t : {&q, &k, &v, &dout, &out, &dq, &dk, &dv}) t->resize(e);
    lse.resize(size_t(n));
    std::mt19937 g{uint32_t(n)};
    std::normal_distribution<float> nd;
    for (auto* t : {&q, &k, &v, &dout})
      for (float& x : *t) x = nd(g);
  }
  Tensor view(std::vector<float>& t) { return Tensor::contiguous(t.data(), DType::f32, {1, n, 1, kDim}); }
  size_t io_bytes() const { return (8 * size_t(kDim) + 1) * size_t(n) * sizeof(float); }
};

// Times forward (with lse) then backward and returns the peak bytes the library held in either.
Row measure_backward(CountingAllocator& counter, Grads& x, Algorithm alg) {
  Options o;
  o.algorithm = alg;
  const Tensor lse = Tensor::contiguous(x.lse.data(), DType::f32, {1, 1, x.n});
  counter.reset_peak();
  const size_t before = counter.current;
  const auto t0 = std::chrono::steady_clock::now();
  forward(x.view(x.q), x.view(x.k), x.view(x.v), x.view(x.out), &lse, o);
  backward(x.view(x.q), x.view(x.k), x.view(x.v), x.view(x.out), x.view(x.dout), lse, x.view(x.dq),
           x.view(x.dk), x.view(x.dv), o);
  const auto t1 = std::chrono::steady_clock::now();
  return Row{"backward", x.n, algorithm_name(alg), x.io_bytes(), counter.peak - before,
             std::chrono::duration<double, std::milli>(t1 - t0).count(), std::nan("")};
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, double(std::fabs(a[i] - b[i])));
  return d;
}

// A naive size left out of Table 3, with the workspace it would have taken.
struct Skipped {
  int64_t n;
  size_t extra_bytes;
};

// Table 3: naive and flash forward + backward for n = 2^8 .. 2^14 and flash beyond, while each
// next size (4x the work) is predicted to fit in `budget_s`. Naive sizes that would not fit are
// listed in `naive_skipped` instead of run.
void differentiation_table(CountingAllocator& counter, double budget_s, std::vector<Row>& rows,
                           std::vector<Skipped>& naive_skipped) {
  const auto start = std::chrono::steady_clock::now();
  const auto left = [&] {
    return budget_s - std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  double naive_ms = 0, flash_ms = 0;
  for (int log_n = 8; log_n <= 20; ++log_n) {
    const int64_t n = int64_t(1) << log_n;
    if (log_n > 14 && flash_ms * 4.2 / 1000 > left()) break;
    Grads x(n);
    std::vector<float> ref[3];
    const bool naive = log_n <= 14 && naive_ms * 4.2 / 1000 <= left();
    if (naive) {
      rows.push_back(measure_backward(counter, x, Algorithm::naive));
      rows.back().max_abs_diff = 0;
      naive_ms = rows.back().ms;
      ref[0] = x.dq, ref[1] = x.dk, ref[2] = x.dv;
    } else if (log_n <= 14) {
      Options o;
      o.algorithm = Algorithm::naive;
      const Tensor t = x.view(x.q);
      naive_skipped.push_back({n, std::max(workspace_bytes(t, t, t, o), backward_workspace_bytes(t, t, t, o))});
    }
    Row r = measure_backward(counter, x, Algorithm::flash);
    if (naive)
      r.max_abs_diff = std::max({max_abs_diff(x.dq, ref[0]), max_abs_diff(x.dk, ref[1]),
                                 max_abs_diff(x.dv, ref[2])});
    flash_ms = r.ms;
    rows.push_back(r);
  }
}

void print_table(const std::vector<Row>& rows, const char* direction, const char* io_label,
                 const char* diff_label) {
  std::printf("%8s  %-10s  %12s  %12s  %11s  %14s\n", "n", "algorithm", io_label, "extra memory",
              "time ms", diff_label);
  for (const Row& r : rows) {
    if (std::strcmp(r.direction, direction) != 0) continue;
    char diff[32];
    if (std::isnan(r.max_abs_diff)) std::snprintf(diff, sizeof diff, "-");
    else std::snprintf(diff, sizeof diff, "%.2e", r.max_abs_diff);
    std::printf("%8lld  %-10s  %12s  %12s  %11.2f  %14s\n", (long long)r.n, r.algorithm,
                human_bytes(double(r.io_bytes), false).c_str(), human_bytes(double(r.extra_bytes), false).c_str(),
                r.ms, diff);
  }
}

}  // namespace

int demo_main(const DemoConfig& config) {
  const double budget_s = config.max_seconds;
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
  std::vector<Skipped> naive_skipped;
  differentiation_table(counter, budget_s, rows, naive_skipped);
  set_allocator({});

  if (config.json) {
    std::printf("[\n");
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      char diff[32];
      if (std::isnan(r.max_abs_diff)) std::snprintf(diff, sizeof diff, "null");
      else std::snprintf(diff, sizeof diff, "%.3g", r.max_abs_diff);
      std::printf("  {\"direction\": \"%s\", \"n\": %lld, \"algorithm\": \"%s\", \"head_dim\": %lld, "
                  "\"io_bytes\": %zu, \"extra_bytes\": %zu, \"ms\": %.3f, \"max_abs_diff\": %s}%s\n",
                  r.direction, (long long)r.n, r.algorithm, (long long)kDim, r.io_bytes, r.extra_bytes,
                  r.ms, diff, i + 1 < rows.size() ? "," : "");
    }
    std::printf("]\n");
    return 0;
  }
  std::printf("memattn demo: self-attention inference, one head, d = %lld, f32 (the paper's Table 2)\n",
              (long long)kDim);
  std::printf("extra memory = peak bytes memattn allocated during the call (counting allocator)\n\n");
  print_table(rows, "forward", "inputs+out", "max |x-naive|");
  std::printf("\nmemattn demo: self-attention differentiation, forward + backward, one head, d = %lld, "
              "f32 (the paper's Table 3)\n",
              (long long)kDim);
  std::printf("extra memory = peak bytes memattn allocated during either call; time = both calls; "
              "the max difference\nis over dq, dk and dv; naive = the O(n^2) reference, scalar code\n\n");
  print_table(rows, "backward", "inputs+grads", "max |dx-naive|");
  for (const Skipped& k : naive_skipped)
    std::printf("%8lld  %-10s  %12s  %12s  not run: 4x the previous time would exceed --max-seconds\n",
                (long long)k.n, "naive", "", human_bytes(double(k.extra_bytes), false).c_str());
  return 0;
}

}  // namespace memattn::tool
