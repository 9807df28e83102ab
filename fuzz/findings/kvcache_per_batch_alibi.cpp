// Reproducer: attention_with_kvcache with ALiBi slopes [batch, heads_q] applied batch 0's slopes to every sequence; lse of sequence 1, query 1 (one key at distance 1) must be -slope[1] = -1, was -0.25.
#include <cstdio>
#include <vector>
#include "memattn/memattn.hpp"
int main() {
  using memattn::Tensor; using memattn::DType;
  std::vector<float> q(2 * 2 * 4, 0.0f), cache(2 * 1 * 4, 0.0f), out(2 * 2 * 4), lse(2 * 2), slopes{0.25f, 1.0f};
  std::vector<int32_t> seqlens{1, 1};
  const Tensor alibi = Tensor::contiguous(slopes.data(), DType::f32, {2, 1}), lse_view = Tensor::contiguous(lse.data(), DType::f32, {2, 1, 2});
  memattn::Options o;
  o.alibi_slopes = &alibi;
  memattn::attention_with_kvcache(Tensor::contiguous(q.data(), DType::f32, {2, 2, 1, 4}),
                                  Tensor::contiguous(cache.data(), DType::f32, {2, 1, 1, 4}),
                                  Tensor::contiguous(cache.data(), DType::f32, {2, 1, 1, 4}),
                                  Tensor::contiguous(seqlens.data(), DType::i32, {2}), nullptr,
                                  Tensor::contiguous(out.data(), DType::f32, {2, 2, 1, 4}), &lse_view, o);
  std::printf("lse[1][0][1] = %g (want -1)\n", lse[3]);
  return lse[3] == -1.0f ? 0 : 1;
}
