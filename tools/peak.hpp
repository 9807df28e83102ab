// The machine's measured compute peak: calibrated f32 FMA, bf16 dot-product and AMX bf16 tile loops per
// thread count.
#pragma once

#include <string>

namespace memattn::tool {

// What the peak loops run on this CPU, chosen at run time (the build targets baseline x86-64).
struct PeakIsa {
  std::string cpu;          // brand string, e.g. "AMD EPYC 9R45 ..."
  const char* f32;          // "avx512f", "avx2+fma" or "portable" (compiler-baseline vector mul+add)
  const char* bf16;         // "avx512bf16 vdpbf16ps" or nullptr: no bf16 dot instruction
  const char* amx_bf16;     // "amx-bf16 tdpbf16ps" or nullptr: no usable AMX (CPU, OS or kernel)
};

PeakIsa detect_peak_isa();

struct Peak {
  int threads;
  double f32_gflops;   // f32 FMA peak (an FMA counts 2 FLOPs)
  double bf16_gflops;  // vdpbf16ps peak (4 FLOPs per f32 lane); the f32 peak when the CPU lacks it
  bool bf16_is_f32;    // true: no bf16 dot instruction, bf16_gflops is the f32 peak
  double amx_bf16_gflops = 0;  // tdpbf16ps peak (16 x 16 x 32 x 2 FLOPs per instruction); 0: no AMX
};

// Runs each loop on `threads` threads at once (std::thread, one loop per thread), each run
// calibrated to about `seconds` (default 0.25 s); the best of `repeats` runs counts.
Peak measure_peak(int threads, double seconds = 0.25, int repeats = 3);

}  // namespace memattn::tool
