// `memattn bench`: times attention over a sweep of shapes, dtypes, causal and thread counts, and
// reports GFLOP/s in FlashAttention-2's convention next to the peak, measured in the same run, of
// the unit each call's tile family runs on.
#include "bench.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <new>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "bench_data.hpp"
#include "bench_dist.hpp"
#include "bench_decode.hpp"
#include "bench_options.hpp"
#include "common/half.hpp"
#include "cpu/kernels.hpp"
#include "format.hpp"
#include "memattn/memattn.hpp"
#include "peak.hpp"

namespace memattn::tool {
namespace {

struct Shape {
  DType dtype;
  int64_t d, n, batch, heads;
};
struct Row {
  Direction direction;
  Algorithm algorithm;
  std::string target;
  const char* family;  // the tile family of the call's products (family_of)
  Shape s;
  bool causal;
  int threads;
  int64_t reps;
  double ms, gflops, peak, ratio;
  size_t workspace;   // memattn::workspace_bytes: the memory the library takes for the call
  int64_t extra_rss;  // peak resident bytes during the point above those before it; -1: unknown
};

double flops(Direction dir, const Shape& s, bool causal) {
  const double f = 4.0 * double(s.batch * s.heads) * double(s.n) * double(s.n) * double(s.d);
  return f / (causal ? 2 : 1) * (dir == Direction::backward ? 2.5 : 1);
}

// A "VmRSS" or "VmHWM" line of /proc/self/status in bytes; -1 where there is none (not Linux).
int64_t proc_status_bytes(const char* key) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(key, 0) == 0) return std::stoll(line.substr(std::strlen(key) + 1)) * 1024;
  return -1;
}

// Resets VmHWM to the current RSS (Linux >= 4.0), so the next VmHWM is the peak of what follows.
bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  return f && (f << "5" << std::flush);
}

// The operands of one shape, shared by every direction, causal, thread count and algorithm; the
// backward ones are made on first use.
struct Operands {
  Shape s;
  Buffer q, k, v, out;
  std::optional<Buffer> dout, dq, dk, dv;
  std::vector<float> lse;  // f32 [batch, heads, n]
  explicit Operands(const Shape& shape)
      : s(shape), q(s.dtype, s.batch, s.n, s.heads, s.d, 1), k(s.dtype, s.batch, s.n, s.heads, s.d, 2),
        v(s.dtype, s.batch, s.n, s.heads, s.d, 3), out(s.dtype, s.batch, s.n, s.heads, s.d, 4) {}
  Tensor lse_view() {
    if (lse.empty()) {
      lse.resize(size_t(s.batch * s.heads * s.n));
      for (auto* b : {&dout, &dq, &dk, &dv}) b->emplace(s.dtype, s.batch, s.n, s.heads, s.d, 5);
    }
    return Tensor::contiguous(lse.data(), DType::f32, {s.batch, s.heads, s.n});
  }
};

// The call one point times. Backward is timed alone: the forward whose out and lse it consumes runs
// once before, with the same options, as a training step has them from its forward pass.
std::function<void()> make_call(Direction dir, Operands& ops, const Options& o) {
  if (dir == Direction::forward)
    return [&ops, o] { forward(ops.q.view, ops.k.view, ops.v.view, ops.out.view, nullptr, o); };
  const Tensor lse = ops.lse_view();
  forward(ops.q.view, ops.k.view, ops.v.view, ops.out.view, &lse, o);
  return [&ops, o, lse] {
    backward(ops.q.view, ops.k.view, ops.v.view, ops.out.view, ops.dout->view, lse, ops.dq->view,
             ops.dk->view, ops.dv->view, o);
  };
}

size_t workspace_of(Direction dir, const Operands& ops, const Options& o) {
  return dir == Direction::forward ? workspace_bytes(ops.q.view, ops.k.view, ops.v.view, o)
                                   : backward_workspace_bytes(ops.q.view, ops.k.view, ops.v.view, o);
}

// The tile family a call of this direction, operands and options runs its products on.
const char* family_of(Direction dir, const Operands& ops, const Options& o) {
  return dir == Direction::forward ? tile_family(ops.s.dtype, o)
                                   : backward_tile_family(ops.q.view, ops.k.view, ops.v.view, o);
}

// The peak of the unit a tile family's products run on, and its name for the ratio's legend.
struct UnitPeak {
  double gflops;
  const char* kind;
};
UnitPeak family_peak(const Peak& p, const std::string& family) {
  if (family == "bf16_dot")
    return {p.bf16_gflops, p.bf16_is_f32 ? "f32 FMA (no bf16 dot instruction)" : "bf16 dot"};
  if (family == "amx_bf16")  // the peak loop runs wherever the family does; 0 would be a mismatch
    return p.amx_bf16_gflops > 0 ? UnitPeak{p.amx_bf16_gflops, "AMX bf16"}
                                 : UnitPeak{p.f32_gflops, "f32 FMA (no AMX peak was measured)"};
  // The emulation is scalar C++ on the f32 units, and the reference algorithms compute in f32.
  if (family == "amx_bf16_emulated") return {p.f32_gflops, "f32 FMA (amx_bf16_emulated is a scalar emulation)"};
  if (family == "none") return {p.f32_gflops, "f32 FMA (a reference algorithm: no tile family)"};
  return {p.f32_gflops, "f32 FMA"};
}

std::string minutes(double s) {
  char buf[32];
  if (s < 90) std::snprintf(buf, sizeof buf, "%.0f s", s);
  else std::snprintf(buf, sizeof buf, "%.0f min", s / 60);
  return buf;
}

// Every point of the sweep, shape by shape: fn(shape, direction, algorithm, target, causal, threads).
template <typename ShapeFn, typename PointFn>
void for_each_point(const Config& c, ShapeFn&& on_shape, PointFn&& on_point) {
  for (DType dt : c.dtypes)
    for (int64_t d : c.d)
      for (int64_t n : c.n)
        for (int64_t b : c.batch)
          for (int64_t h : c.heads) {
            const Shape s{dt, d, n, b, h};
            on_shape(s);
            for (Direction dir : c.directions)
              for (Algorithm alg : c.algorithms)
                for (const std::string& target : c.targets)
                  for (int64_t causal : c.causal)
                    for (int64_t t : c.threads) on_point(s, dir, alg, target, causal != 0, int(t));
          }
}

// One probe call (first dtype and algorithm, n <= 1024, largest d, 1 thread) gives a per-thread
// rate, assumed for every point: each costs its warm-up call plus max(3 calls, min_seconds).
double estimate_seconds(const Config& c, double& rate) {
  Options o;
  o.algorithm = c.algorithms[0], o.num_threads = 1;
  if (!c.targets[0].empty()) o.target = c.targets[0].c_str();
  // The first dtype whose calls run: a MEMATTN_FAMILY that cannot run some dtype fails only those
  // points (tile_family throws where a call would).
  const auto runs = [&o](DType dt) {
    try {
      tile_family(dt, o);
      return true;
    } catch (const Error&) {
      return false;
    }
  };
  const auto dt = std::find_if(c.dtypes.begin(), c.dtypes.end(), runs);
  const Shape probe{dt == c.dtypes.end() ? c.dtypes[0] : *dt, *std::max_element(c.d.begin(), c.d.end()),
                    std::min<int64_t>(1024, *std::min_element(c.n.begin(), c.n.end())), 1, 8};
  Operands ops(probe);
  rate = flops(Direction::forward, probe, false) / seconds_of(make_call(Direction::forward, ops, o));
  double total = 0;
  for_each_point(c, [](const Shape&) {},
                 [&](const Shape& s, Direction dir, Algorithm, const std::string&, bool causal, int t) {
                   const double call = flops(dir, s, causal) / (rate * t);
                   total += c.reps ? double(c.reps + 1) * call : call + std::max(3 * call, c.min_seconds);
                 });
  return total;
}

// The peaks per thread count; the AMX column only where AMX runs (JSON: null elsewhere).
void print_peaks(const PeakIsa& isa, const std::map<int, Peak>& peaks, bool json) {
  const char* bf16 = isa.bf16 ? isa.bf16 : "none on this CPU: the f32 peak is reported";
  const bool amx = isa.amx_bf16 != nullptr;
  if (json) {
    std::printf("[\n");
    size_t i = 0;
    for (const auto& [t, p] : peaks) {
      char amx_gflops[32] = "null", amx_isa[64] = "null";
      if (amx) {
        std::snprintf(amx_gflops, sizeof amx_gflops, "%.2f", p.amx_bf16_gflops);
        std::snprintf(amx_isa, sizeof amx_isa, "\"%s\"", isa.amx_bf16);
      }
      std::printf("  {\"threads\": %d, \"f32_gflops\": %.2f, \"bf16_gflops\": %.2f, \"amx_bf16_gflops\": %s, "
                  "\"f32_isa\": \"%s\", \"bf16_isa\": \"%s\", \"amx_bf16_isa\": %s, \"cpu\": \"%s\"}%s\n",
                  t, p.f32_gflops, p.bf16_gflops, amx_gflops, isa.f32, bf16, amx_isa, isa.cpu.c_str(),
                  ++i < peaks.size() ? "," : "");
    }
    std::printf("]\n");
    return;
  }
  std::printf("CPU: %s, %u logical CPUs\n", isa.cpu.c_str(), std::thread::hardware_concurrency());
  std::printf("peak measured now: f32 = %s FMA loop (FMA = 2 FLOPs), bf16 = %s loop (4 FLOPs per f32 lane)",
              isa.f32, bf16);
  if (amx) std::printf(",\n  AMX = %s loop (16 x 16 x 32 x 2 FLOPs per instruction)", isa.amx_bf16);
  std::printf(";\nindependent accumulator chains, ~0.25 s per run, best of 3 (a sweep: before and after it)\n");
  std::printf("  threads  f32 GFLOP/s  bf16 GFLOP/s%s\n", amx ? "  AMX GFLOP/s" : "");
  for (const auto& [t, p] : peaks) {
    std::printf("  %7d  %11.1f  %12.1f", t, p.f32_gflops, p.bf16_gflops);
    if (amx) std::printf("  %11.1f", p.amx_bf16_gflops);
    std::printf("\n");
  }
}

// key_chunk and query_chunk: the chunks bench forced on every call (0: the planner chose).
void print_json(const std::vector<Row>& rows, const PeakIsa& isa, const std::map<int, Peak>& peaks,
                const Config& c) {
  std::printf("[\n");
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    std::printf("  {\"direction\": \"%s\", \"algorithm\": \"%s\", \"target\": \"%s\", \"family\": \"%s\", \"n\": %lld, "
                "\"d\": %lld, \"batch\": %lld, \"heads\": %lld, \"causal\": %s, \"dtype\": \"%s\", "
                "\"threads\": %d, \"reps\": %lld, \"ms\": %.4f, \"gflops\": %.3f, \"peak_gflops\": %.2f, "
                "\"ratio\": %.4f, \"peak_kind\": \"%s\", \"workspace_bytes\": %zu, "
                "\"extra_rss_bytes\": %lld, \"key_chunk\": %lld, \"query_chunk\": %lld, \"cpu\": \"%s\"}%s\n",
                direction_name(r.direction), algorithm_name(r.algorithm), r.target.c_str(), r.family,
                (long long)r.s.n, (long long)r.s.d, (long long)r.s.batch, (long long)r.s.heads,
                r.causal ? "true" : "false", dtype_name(r.s.dtype), r.threads, (long long)r.reps, r.ms,
                r.gflops, r.peak, r.ratio, family_peak(peaks.at(r.threads), r.family).kind, r.workspace,
                (long long)r.extra_rss, (long long)c.key_chunk, (long long)c.query_chunk, isa.cpu.c_str(), i + 1 < rows.size() ? "," : "");
  }
  std::printf("]\n");
}

void print_table(const std::vector<Row>& rows, const PeakIsa& isa, const std::map<int, Peak>& peaks,
                 const Config& c) {
  print_peaks(isa, peaks, false);
  std::printf("\nq, k, v, out: contiguous [batch, n, heads, d]; self-attention (Nq = Nk = n); "
              "scale 1/sqrt(d)\n"
              "ms      = median of `reps` calls after one warm-up call (reps fill >= %.2g s, at least 3)\n"
              "GFLOP/s = 4*batch*heads*n^2*d / time, halved for causal, x2.5 for backward "
              "(FlashAttention-2's convention)\n"
              "family  = the tile family of the call's products: memattn::tile_family (none: a reference "
              "algorithm);\n"
              "          backward: memattn::backward_tile_family\n"
              "ratio   = GFLOP/s / the peak above of the family's unit (bf16_dot: bf16 dot; amx_bf16: AMX; "
              "f32_fma,\n"
              "          amx_bf16_emulated (scalar), none: f32 FMA) and thread count\n"
              "workspace = memattn::workspace_bytes / backward_workspace_bytes: all the memory the call "
              "allocates\n\n",
              c.min_seconds);
  std::printf("%-9s %-7s %-11s %-17s %-5s %-6s %3s %6s %4s %3s %3s %5s %10s %8s %7s %6s %10s\n",
              "direction", "alg", "target", "family", "dtype", "causal", "thr", "n", "d", "B", "H", "reps", "ms",
              "GFLOP/s", "peak", "ratio", "workspace");
  for (const Row& r : rows)
    std::printf("%-9s %-7s %-11s %-17s %-5s %-6s %3d %6lld %4lld %3lld %3lld %5lld %10.2f %8.1f %7.1f %5.1f%% "
                "%10s\n",
                direction_name(r.direction), algorithm_name(r.algorithm), r.target.c_str(), r.family,
                dtype_name(r.s.dtype), r.causal ? "yes" : "no", r.threads, (long long)r.s.n,
                (long long)r.s.d, (long long)r.s.batch, (long long)r.s.heads, (long long)r.reps, r.ms,
                r.gflops, r.peak, 100 * r.ratio, human_bytes(double(r.workspace), true).c_str());
}

// Times one point and measures the memory it took.
Row run_point(Operands& ops, Direction dir, Algorithm alg, const std::string& target, bool causal,
              int threads, const Config& c) {
  Options o;
  o.algorithm = alg, o.causal = causal, o.num_threads = threads, o.key_chunk = c.key_chunk, o.query_chunk = c.query_chunk;
  if (!target.empty()) o.target = target.c_str();
  if (dir == Direction::backward) ops.lse_view();  // gradients and lse are operands, not extra memory
  const bool rss_known = reset_peak_rss();
  const int64_t rss_before = proc_status_bytes("VmRSS:");
  const auto [ms, reps] = time_calls(make_call(dir, ops, o), c.reps, c.min_seconds);
  const int64_t extra_rss = rss_known && rss_before >= 0 ? proc_status_bytes("VmHWM:") - rss_before : -1;
  const double gflops = flops(dir, ops.s, causal) / ms / 1e6;
  return {dir, alg, selected_target(o), family_of(dir, ops, o), ops.s, causal, threads, reps, ms,
          gflops, 0, 0, workspace_of(dir, ops, o), extra_rss};
}

// Peaks that do not scale with the thread count mean something else is using the cores.
void warn_if_busy(const std::map<int, Peak>& peaks) {
  const auto one = peaks.find(1);
  if (one == peaks.end()) return;
  for (const auto& [t, p] : peaks)
    if (t > 1 && unsigned(t) <= std::thread::hardware_concurrency() &&
        p.f32_gflops < 0.75 * t * one->second.f32_gflops)
      std::fprintf(stderr,
                   "memattn bench: warning: the %d-thread f32 peak is only %.2fx the 1-thread peak; "
                   "other work is using the cores and every figure of this run is low\n",
                   t, p.f32_gflops / one->second.f32_gflops);
}

double elapsed_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int bench_main(const Config& c) {
  if (c.decode) return bench_decode_main(c.decode_sweep);
  if (c.dist) return bench_dist_main(c);
  const PeakIsa isa = detect_peak_isa();
  std::map<int, Peak> peaks;
  for (int64_t t : c.threads) peaks[int(t)] = measure_peak(int(t));
  if (c.peak_only) {
    warn_if_busy(peaks);
    print_peaks(isa, peaks, c.json);
    return 0;
  }
  const size_t total = c.dtypes.size() * c.d.size() * c.n.size() * c.batch.size() * c.heads.size() *
                       c.directions.size() * c.algorithms.size() * c.targets.size() * c.causal.size() *
                       c.threads.size();
  double rate = 0;
  const double estimate = estimate_seconds(c, rate);
  std::fprintf(stderr, "memattn bench: %zu run(s), estimated %s (a probe ran at %.1f GFLOP/s on 1 thread)\n",
               total, minutes(estimate).c_str(), rate / 1e9);

  std::vector<Row> rows;
  std::unique_ptr<Operands> ops;
  size_t done = 0, failed = 0;
  const auto start = std::chrono::steady_clock::now();
  for_each_point(
      c,
      [&](const Shape& s) {
        ops.reset();
        try {
          ops = std::make_unique<Operands>(s);
        } catch (const std::bad_alloc&) {
          throw Error(ErrorCode::out_of_memory,
                      "bench: no memory for q, k, v, out of n=" + std::to_string(s.n) + ", d=" +
                          std::to_string(s.d) + ", batch=" + std::to_string(s.batch) +
                          ", heads=" + std::to_string(s.heads) + " in " + dtype_name(s.dtype));
        }
      },
      [&](const Shape& s, Direction dir, Algorithm alg, const std::string& target, bool causal, int t) {
        std::fprintf(stderr, "[%zu/%zu %s] %s %s %s %s n=%lld d=%lld causal=%d threads=%d: ", ++done, total,
                     minutes(elapsed_since(start)).c_str(), direction_name(dir), algorithm_name(alg),
                     target.empty() ? "default" : target.c_str(), dtype_name(s.dtype), (long long)s.n,
                     (long long)s.d, int(causal), t);
        try {  // one unsupported combination (e.g. chunked backward) must not end a long sweep
          rows.push_back(run_point(*ops, dir, alg, target, causal, t, c));
          std::fprintf(stderr, "%.2f ms, %.1f GFLOP/s\n", rows.back().ms, rows.back().gflops);
        } catch (const Error& e) {
          ++failed;
          std::fprintf(stderr, "failed: %s\n", e.what());
        }
      });
  // The machine may be shared: a peak loop that lost its core for a while reads low. Measuring again
  // after the sweep and keeping the better figure bounds that; the ratios use the final peaks.
  for (auto& [t, p] : peaks) {
    const Peak again = measure_peak(t);
    p.f32_gflops = std::max(p.f32_gflops, again.f32_gflops);
    p.bf16_gflops = std::max(p.bf16_gflops, again.bf16_gflops);
    p.amx_bf16_gflops = std::max(p.amx_bf16_gflops, again.amx_bf16_gflops);
  }
  warn_if_busy(peaks);
  for (Row& r : rows) r.peak = family_peak(peaks.at(r.threads), r.family).gflops, r.ratio = r.gflops / r.peak;
  const auto key = [](const Row& r) {
    return std::make_tuple(r.direction, r.algorithm, r.target, r.s.dtype, r.s.d, r.causal, r.threads,
                           r.s.batch, r.s.heads, r.s.n);
  };
  std::stable_sort(rows.begin(), rows.end(), [&](const Row& a, const Row& b) { return key(a) < key(b); });
  if (c.json) print_json(rows, isa, peaks, c);
  else print_table(rows, isa, peaks, c);
  if (failed) std::fprintf(stderr, "memattn bench: %zu of %zu runs failed (see above)\n", failed, total);
  return failed ? 1 : 0;
}

}  // namespace memattn::tool
