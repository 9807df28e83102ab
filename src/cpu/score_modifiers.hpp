// The score modifiers' element-wise pieces shared by the flash forward and backward, so that both
// compute the very same capped scores (docs/api.md, "Score modifiers").
#pragma once

#include <cmath>
#include <cstddef>

namespace memattn::detail {

// x[0..n) <- cap * tanh(x / cap), and, when slope is not null, slope[0..n) <- 1 - tanh^2, the
// derivative of the capped score by the scaled one (the backward's chain rule).
inline void softcap_in_place(float* x, size_t n, float cap, float* slope = nullptr) {
  for (size_t i = 0; i < n; ++i) {
    const float t = std::tanh(x[i] / cap);
    x[i] = cap * t;
    if (slope) slope[i] = 1.0f - t * t;
  }
}

}  // namespace memattn::detail
