// Reproducer: v near FLT_MAX: out is a mean of v (2e38, finite), but every algorithm sums unnormalised weights times v in f32 and returns inf.
#include <cstdio>
#include <vector>
#include "memattn/memattn.hpp"
int main() {
  const int64_t S = 4, D = 4;
  std::vector<float> q(D, 0.0f), k(S * D, 0.0f), v(S * D, 2e38f), out(D);  // equal weights 1/4
  using memattn::Tensor; using memattn::DType;
  for (auto algorithm : {memattn::Algorithm::naive, memattn::Algorithm::flash}) {
    memattn::Options o; o.algorithm = algorithm;
    memattn::forward(Tensor::contiguous(q.data(), DType::f32, {1, 1, 1, D}), Tensor::contiguous(k.data(), DType::f32, {1, S, 1, D}),
                     Tensor::contiguous(v.data(), DType::f32, {1, S, 1, D}), Tensor::contiguous(out.data(), DType::f32, {1, 1, 1, D}), nullptr, o);
    std::printf("%s: out[0] = %g (exact: 2e38)\n", memattn::algorithm_name(algorithm), out[0]);
  }
}
