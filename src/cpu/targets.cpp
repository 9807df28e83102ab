// Run-time choice of the SIMD target: the fastest this CPU runs, unless an option or MEMATTN_TARGET
// forces one (so tests can run every target on one machine).
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif
#include <cstdlib>
#include <string>

#include "api/validate.hpp"
#include "cpu/bf16_dot.hpp"
#include "cpu/kernels.hpp"
#include "hwy/targets.h"

namespace memattn::detail {

const std::vector<const Kernels*>& compiled_kernels();  // kernels_hwy.cpp

bool value_copy_pays() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool zen4 = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__builtin_cpu_is("amd") || !__builtin_cpu_supports("avx512f") || !__get_cpuid(1, &eax, &ebx, &ecx, &edx))
      return false;
    const unsigned base = (eax >> 8) & 0xfu, family = base == 0xfu ? base + ((eax >> 20) & 0xffu) : base;
    return family == 0x19u;
  }();
  return !zen4;
#else
  return true;
#endif
}

const std::vector<const Kernels*>& available_kernels() {
  static const std::vector<const Kernels*> list = [] {
    std::vector<const Kernels*> l;
    const int64_t supported = hwy::SupportedTargets();
    for (const Kernels* k : compiled_kernels())
      if (k->hwy_target & supported) l.push_back(k);
    // AVX-512 plus the bf16 dot product: the AVX-512 kernels with vdpbf16ps for bf16 inputs,
    // first (the default) where vdpbf16ps outpaces the f32 FMA, else right after avx512.
    static Kernels with_bf16;
    for (auto it = l.begin(); it != l.end(); ++it)
      if (std::string((*it)->name) == "avx512" && bf16_dot_kernels() != nullptr) {
        with_bf16 = **it;
        with_bf16.name = "avx512_bf16";
        with_bf16.bf16 = bf16_dot_kernels();
        l.insert(bf16_dot_outpaces_fma() ? l.begin() : it + 1, &with_bf16);
        break;
      }
    return l;
  }();
  return list;
}

const Kernels& select_kernels(const char* name) {
  const auto& list = available_kernels();
  const char* from = "target";
  if (name == nullptr || *name == '\0') {
    name = std::getenv("MEMATTN_TARGET");
    from = "MEMATTN_TARGET";
    if (name == nullptr || *name == '\0') return *list.front();
  }
  std::string choices;
  for (const Kernels* k : list) {
    if (std::string(k->name) == name) return *k;
    choices += choices.empty() ? "" : ", ";
    choices += k->name;
  }
  fail(ErrorCode::invalid_argument, std::string(from) + ": '" + name +
                                        "' is not a SIMD target this build runs on this CPU; "
                                        "expected one of " + choices);
}

}  // namespace memattn::detail

namespace memattn {

std::vector<std::string> supported_targets() {
  std::vector<std::string> names;
  for (const detail::Kernels* k : detail::available_kernels()) names.push_back(k->name);
  return names;
}

std::string selected_target(const Options& options) { return detail::select_kernels(options.target).name; }

}  // namespace memattn
