// Reproducer: head_dim 0 with null q/k data (allowed: no elements) is accepted, and every algorithm offsets the null pointers (UBSan, params.hpp:23).
#include <cstdio>
#include <vector>
#include "memattn/memattn.hpp"
int main() {
  const int64_t S = 3;
  std::vector<float> v(S * 2, 1.0f), out(S * 2);
  using memattn::Tensor; using memattn::DType;
  memattn::Options o; o.algorithm = memattn::Algorithm::naive;
  memattn::forward(Tensor::contiguous(nullptr, DType::f32, {1, S, 1, 0}), Tensor::contiguous(nullptr, DType::f32, {1, S, 1, 0}),
                   Tensor::contiguous(v.data(), DType::f32, {1, S, 1, 2}), Tensor::contiguous(out.data(), DType::f32, {1, S, 1, 2}), nullptr, o);
  std::printf("out[0] = %g\n", out[0]);
}
