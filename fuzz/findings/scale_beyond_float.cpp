// Reproducer: a finite double scale beyond float range (1e39) is accepted with f32 inputs and gives NaN instead of an error.
#include <cstdio>
#include <vector>
#include "memattn/memattn.hpp"
int main() {
  std::vector<float> q(4, 1.0f), k(4, 1.0f), v(4, 1.0f), out(4, -1.0f);
  using memattn::Tensor; using memattn::DType;
  memattn::Options o;
  o.scale = 1e39;  // finite as a double, +inf as the float the f32 kernels use
  try {
    memattn::forward(Tensor::contiguous(q.data(), DType::f32, {1, 1, 1, 4}), Tensor::contiguous(k.data(), DType::f32, {1, 1, 1, 4}),
                     Tensor::contiguous(v.data(), DType::f32, {1, 1, 1, 4}), Tensor::contiguous(out.data(), DType::f32, {1, 1, 1, 4}), nullptr, o);
    std::printf("accepted: out[0] = %g (expected an invalid_argument error)\n", out[0]);
  } catch (const memattn::Error& e) { std::printf("refused: %s\n", e.what()); }
}
