// Reproducer: a block table without entries ([2, 0], null data, legal) with a nonzero batch stride made attention_with_kvcache offset the null pointer per sequence (UBSan, validate_kvcache.cpp:101).
#include <cstdio>
#include <vector>
#include "memattn/memattn.hpp"
int main() {
  using memattn::Tensor; using memattn::DType;
  std::vector<float> q(2 * 4, 1.0f), cache(4 * 4, 1.0f), out(2 * 4, -1.0f);
  std::vector<int32_t> seqlens{0, 0};
  const Tensor table = Tensor::strided(nullptr, DType::i32, {2, 0}, {3, 1});
  memattn::attention_with_kvcache(Tensor::contiguous(q.data(), DType::f32, {2, 1, 1, 4}),
                                  Tensor::contiguous(cache.data(), DType::f32, {1, 4, 1, 4}),
                                  Tensor::contiguous(cache.data(), DType::f32, {1, 4, 1, 4}),
                                  Tensor::contiguous(seqlens.data(), DType::i32, {2}), &table,
                                  Tensor::contiguous(out.data(), DType::f32, {2, 1, 1, 4}), nullptr, {});
  std::printf("out[0] = %g\n", out[0]);
}
