// Calibrated peak loops: f32 FMA and bf16 dot product in the widest vector ISA the CPU has, chosen
// at run time (the build itself targets baseline x86-64, so each loop carries its own target), and
// AMX bf16 tiles where the CPU, the OS and the kernel allow them.
#include "peak.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <thread>
#include <vector>

#include "cpu/amx_tiles.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define MEMATTN_PEAK_X86 1
#endif

namespace memattn::tool {
namespace {

// f32 chains converge to kStep / (1 - kDecay) = 2^-4 and the bf16 chains grow by 2^-11 per step,
// so no value goes subnormal or infinite however long the loop runs (either would slow it down).
constexpr float kDecay = 1.0f - 0x1p-20f, kStep = 0x1p-24f, kBf16Factor = 0x1p-6f;

// Independent accumulator chains per loop. An FMA has a latency of about 4 cycles and recent cores
// issue 2 per cycle, so 8 chains keep the pipes full; 16 leaves margin and fits in the 32 zmm
// registers. AVX2 and SSE have 16 registers: 12 chains plus the 2 constants.
constexpr int kWideChains = 16, kNarrowChains = 12;

// One peak loop: `run(iters)` does `flops_per_iter` FLOPs per iteration and returns a sum of its
// accumulators so the compiler must compute them.
struct Loop {
  const char* isa;
  double flops_per_iter;
  float (*run)(int64_t iters);
};

float sum(const float* x, int n) {
  float s = 0;
  for (int i = 0; i < n; ++i) s += x[i];
  return s;
}

// Compiler-baseline vectors (SSE2 on x86-64, NEON on ARM): a multiply and an add, 2 FLOPs per lane.
using PortableVec = float __attribute__((vector_size(16)));

float fma_portable(int64_t iters) {
  PortableVec acc[kNarrowChains];
  for (int j = 0; j < kNarrowChains; ++j) acc[j] = PortableVec{} + float(j);
  const PortableVec a = PortableVec{} + kDecay, b = PortableVec{} + kStep;
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < kNarrowChains; ++j) acc[j] = acc[j] * a + b;
  }
  float lanes[kNarrowChains * 4];
  std::memcpy(lanes, acc, sizeof lanes);
  return sum(lanes, kNarrowChains * 4);
}

#ifdef MEMATTN_PEAK_X86
__attribute__((target("avx2,fma"))) float fma_avx2(int64_t iters) {
  __m256 acc[kNarrowChains];
  for (int j = 0; j < kNarrowChains; ++j) acc[j] = _mm256_set1_ps(float(j));
  const __m256 a = _mm256_set1_ps(kDecay), b = _mm256_set1_ps(kStep);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < kNarrowChains; ++j) acc[j] = _mm256_fmadd_ps(acc[j], a, b);
  }
  float lanes[kNarrowChains * 8];
  for (int j = 0; j < kNarrowChains; ++j) _mm256_storeu_ps(lanes + 8 * j, acc[j]);
  return sum(lanes, kNarrowChains * 8);
}

__attribute__((target("avx512f"))) float fma_avx512(int64_t iters) {
  __m512 acc[kWideChains];
  for (int j = 0; j < kWideChains; ++j) acc[j] = _mm512_set1_ps(float(j));
  const __m512 a = _mm512_set1_ps(kDecay), b = _mm512_set1_ps(kStep);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < kWideChains; ++j) acc[j] = _mm512_fmadd_ps(acc[j], a, b);
  }
  float lanes[kWideChains * 16];
  for (int j = 0; j < kWideChains; ++j) _mm512_storeu_ps(lanes + 16 * j, acc[j]);
  return sum(lanes, kWideChains * 16);
}

// vdpbf16ps: per f32 lane, acc += a[2l]*b[2l] + a[2l+1]*b[2l+1], i.e. 4 FLOPs per lane.
__attribute__((target("avx512bf16,avx512f"))) float dot_bf16_avx512(int64_t iters) {
  __m512 acc[kWideChains];
  for (int j = 0; j < kWideChains; ++j) acc[j] = _mm512_set1_ps(float(j));
  const __m512 f = _mm512_set1_ps(kBf16Factor);
  const __m512bh a = _mm512_cvtne2ps_pbh(f, f);
  for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < kWideChains; ++j) acc[j] = _mm512_dpbf16_ps(acc[j], a, a);
  }
  float lanes[kWideChains * 16];
  for (int j = 0; j < kWideChains; ++j) _mm512_storeu_ps(lanes + 16 * j, acc[j]);
  return sum(lanes, kWideChains * 16);
}

// TDPBF16PS into 4 accumulator tiles from one A and one B tile of 2^-12: C gains 32 products of
// 2^-24 per element and instruction, 2^-19, and stops growing once that is below half its ulp (at
// C = 32), far from overflow; no value is subnormal. An instruction occupies the tile unit for about
// 16 cycles and has a latency of a few times that, which 4 independent accumulators cover.
constexpr int kAmxAccumulators = 4;
constexpr double kAmxFlops = 16.0 * 16 * 32 * 2;

float dot_amx_bf16(int64_t iters) {
  using Amx = memattn::detail::AmxHardware;
  memattn::detail::TileConfig cfg;
  for (auto& t : cfg.tile) t = {16, 64};
  alignas(64) uint16_t ab[16 * 32];
  std::fill_n(ab, 16 * 32, uint16_t(0x3980));  // bf16 2^-12
  Amx::configure(cfg);
  Amx::load<4>(ab, 64);
  Amx::load<6>(ab, 64);
  Amx::zero<0>();
  Amx::zero<1>();
  Amx::zero<2>();
  Amx::zero<3>();
  for (int64_t i = 0; i < iters; ++i) {
    Amx::dpbf16ps<0, 4, 6>();
    Amx::dpbf16ps<1, 4, 6>();
    Amx::dpbf16ps<2, 4, 6>();
    Amx::dpbf16ps<3, 4, 6>();
  }
  alignas(64) float c[kAmxAccumulators][16 * 16];
  Amx::store<0>(c[0], 64);
  Amx::store<1>(c[1], 64);
  Amx::store<2>(c[2], 64);
  Amx::store<3>(c[3], 64);
  Amx::release();
  return sum(c[0], kAmxAccumulators * 16 * 16);
}

// CPUID leaf 7 subleaf 1, EAX bit 5 (AVX512_BF16); asked directly because not every compiler's
// __builtin_cpu_supports knows the name. avx512f also confirms the OS saves the zmm state.
bool cpu_has_avx512bf16() {
  if (!__builtin_cpu_supports("avx512f")) return false;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
  return (a >> 5) & 1u;
}

std::string cpu_brand() {
  unsigned regs[12] = {};
  if (__get_cpuid_max(0x80000000u, nullptr) < 0x80000004u) return "unknown x86-64";
  for (unsigned i = 0; i < 3; ++i)
    __get_cpuid(0x80000002u + i, &regs[4 * i], &regs[4 * i + 1], &regs[4 * i + 2], &regs[4 * i + 3]);
  char text[49] = {};
  std::memcpy(text, regs, 48);
  std::string s(text);
  s.erase(0, s.find_first_not_of(' '));
  s.erase(s.find_last_not_of(' ') + 1);
  return s;
}
#else
std::string cpu_brand() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0 || line.rfind("Model", 0) == 0)
      return line.substr(line.find(':') + 2);
  return "unknown";
}
#endif

Loop f32_loop() {
#ifdef MEMATTN_PEAK_X86
  if (__builtin_cpu_supports("avx512f")) return {"avx512f", kWideChains * 16 * 2.0, fma_avx512};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return {"avx2+fma", kNarrowChains * 8 * 2.0, fma_avx2};
#endif
  return {"portable", kNarrowChains * 4 * 2.0, fma_portable};
}

// nullptr run: the CPU has no bf16 dot-product instruction.
Loop bf16_loop() {
#ifdef MEMATTN_PEAK_X86
  if (cpu_has_avx512bf16()) return {"avx512bf16 vdpbf16ps", kWideChains * 16 * 4.0, dot_bf16_avx512};
#endif
  return {nullptr, 0, nullptr};
}

// nullptr run: no usable AMX-BF16.
Loop amx_bf16_loop() {
#ifdef MEMATTN_PEAK_X86
  if (memattn::detail::amx_bf16_usable()) return {"amx-bf16 tdpbf16ps", kAmxAccumulators * kAmxFlops, dot_amx_bf16};
#endif
  return {nullptr, 0, nullptr};
}

volatile float g_sink;  // keeps the loops' results observable

// Wall seconds for `threads` copies of the loop running at once, `iters` iterations each.
double run_seconds(const Loop& loop, int threads, int64_t iters) {
  std::vector<float> results(size_t(threads), 0.0f);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t)
    pool.emplace_back([&, t] { results[size_t(t)] = loop.run(iters); });
  results[0] = loop.run(iters);
  for (auto& th : pool) th.join();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  float sum = 0;
  for (float r : results) sum += r;
  g_sink = sum;
  return s;
}

// GFLOP/s of `threads` concurrent loops, each sized to about `seconds`; the best of `repeats`.
double loop_gflops(const Loop& loop, int threads, double seconds, int repeats) {
  int64_t iters = 1 << 12;
  double s = run_seconds(loop, threads, iters);
  while (s < 0.02) {
    iters *= 4;
    s = run_seconds(loop, threads, iters);
  }
  iters = std::max<int64_t>(1, int64_t(double(iters) * seconds / s));
  double best = 0;
  for (int r = 0; r < repeats; ++r)
    best = std::max(best, loop.flops_per_iter * double(iters) * threads / run_seconds(loop, threads, iters));
  return best / 1e9;
}

}  // namespace

PeakIsa detect_peak_isa() { return {cpu_brand(), f32_loop().isa, bf16_loop().isa, amx_bf16_loop().isa}; }

Peak measure_peak(int threads, double seconds, int repeats) {
  Peak p{threads, loop_gflops(f32_loop(), threads, seconds, repeats), 0, false};
  const Loop bf16 = bf16_loop();
  p.bf16_is_f32 = bf16.run == nullptr;
  p.bf16_gflops = p.bf16_is_f32 ? p.f32_gflops : loop_gflops(bf16, threads, seconds, repeats);
  if (const Loop amx = amx_bf16_loop(); amx.run != nullptr)
    p.amx_bf16_gflops = loop_gflops(amx, threads, seconds, repeats);
  return p;
}

}  // namespace memattn::tool
