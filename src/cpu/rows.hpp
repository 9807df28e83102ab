// Loading one strided row of q, k or v into f32 for the flash kernels (forward and backward).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "common/half.hpp"
#include "cpu/kernels.hpp"

namespace memattn::detail {

constexpr DType dtype_of(float) { return DType::f32; }
constexpr DType dtype_of(bf16) { return DType::bf16; }
constexpr DType dtype_of(f16) { return DType::f16; }

// One row of n elements at `src` (element stride `stride`) into f32; false if any is not finite.
template <typename T>
bool load_row(const Kernels& kern, const T* src, int64_t stride, size_t n, float* dst) {
  if (stride == 1) return kern.to_f32(src, dtype_of(T{}), dst, n);
  bool finite = true;
  for (size_t c = 0; c < n; ++c) finite &= std::isfinite(dst[c] = Elem<T>::load(src[int64_t(c) * stride]));
  return finite;
}

}  // namespace memattn::detail
