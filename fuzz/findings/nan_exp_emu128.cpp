// Reproducer: on emu128 a fully masked row (finite inputs) sends NaN (-inf - -inf) into the exp, whose float-to-int conversion is UB (UBSan).
#include <cstdio>
#include <vector>
#include "memattn/memattn.hpp"
int main() {
  const int64_t D = 4;
  std::vector<float> q(2 * D, 1.0f), k(D, 1.0f), v(D, 1.0f), out(2 * D);
  using memattn::Tensor; using memattn::DType;
  memattn::Options o;
  o.target = "emu128";
  o.causal = true, o.align = memattn::Align::bottom_right;  // seq_q 2 > seq_k 1: row 0 sees no key
  memattn::forward(Tensor::contiguous(q.data(), DType::f32, {1, 2, 1, D}), Tensor::contiguous(k.data(), DType::f32, {1, 1, 1, D}),
                   Tensor::contiguous(v.data(), DType::f32, {1, 1, 1, D}), Tensor::contiguous(out.data(), DType::f32, {1, 2, 1, D}), nullptr, o);
  std::printf("out[0] = %g\n", out[0]);
}
