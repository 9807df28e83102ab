// Reproducer: a negative stride on k reaches the flash GEMM as a wrapped size_t (UBSan: pointer overflow in kernels_hwy.cpp).
#include <cstdio>
#include <vector>
#include "memattn/memattn.hpp"
int main() {
  const int64_t S = 4, D = 8;
  std::vector<float> q(S * D, 0.5f), k(S * D, 0.25f), v(S * D, 1.0f), out(S * D);
  using memattn::Tensor; using memattn::DType;
  memattn::Options o; o.algorithm = memattn::Algorithm::flash;
  memattn::forward(Tensor::contiguous(q.data(), DType::f32, {1, S, 1, D}),
                   Tensor::strided(k.data() + (S - 1) * D, DType::f32, {1, S, 1, D}, {S * D, -D, D, 1}),  // keys reversed
                   Tensor::contiguous(v.data(), DType::f32, {1, S, 1, D}),
                   Tensor::contiguous(out.data(), DType::f32, {1, S, 1, D}), nullptr, o);
  std::printf("out[0] = %g\n", out[0]);
}
