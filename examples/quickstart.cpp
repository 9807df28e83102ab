// Quick start: causal attention with memattn::forward, checked against a naive computation.
#include <cmath>
#include <cstdio>
#include <vector>

#include "memattn/memattn.hpp"

int main() {
  const int64_t S = 100, H = 2, D = 32;  // q, k, v, out: [batch 1, seq S, heads H, head_dim D]
  std::vector<float> q(S * H * D), k(q.size()), v(q.size()), out(q.size());
  for (size_t i = 0; i < q.size(); ++i) {
    q[i] = std::sin(0.1f * i);
    k[i] = std::cos(0.7f * i);
    v[i] = std::sin(0.3f * i + 1);
  }

  using memattn::DType, memattn::Tensor;
  memattn::Options options;
  options.causal = true;  // query i sees keys 0..i; scale defaults to 1/sqrt(D)
  try {
    memattn::forward(Tensor::contiguous(q.data(), DType::f32, {1, S, H, D}),
                     Tensor::contiguous(k.data(), DType::f32, {1, S, H, D}),
                     Tensor::contiguous(v.data(), DType::f32, {1, S, H, D}),
                     Tensor::contiguous(out.data(), DType::f32, {1, S, H, D}), nullptr, options);
  } catch (const memattn::Error& e) {  // e.g. mismatched shapes: the message says which and why
    std::fprintf(stderr, "memattn: %s\n", e.what());
    return 1;
  }

  // The same thing the naive way, in double: softmax(q k^T / sqrt(D)) v over keys j <= i.
  double worst = 0;
  const auto at = [&](const std::vector<float>& t, int64_t s, int64_t h, int64_t d) {
    return double(t[(s * H + h) * D + d]);
  };
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < S; ++i) {
      std::vector<double> p(i + 1);
      double max = -INFINITY, sum = 0;
      for (int64_t j = 0; j <= i; ++j) {
        for (int64_t d = 0; d < D; ++d) p[j] += at(q, i, h, d) * at(k, j, h, d) / std::sqrt(double(D));
        max = std::fmax(max, p[j]);
      }
      for (double& x : p) sum += x = std::exp(x - max);
      for (int64_t d = 0; d < D; ++d) {
        double o = 0;
        for (int64_t j = 0; j <= i; ++j) o += p[j] / sum * at(v, j, h, d);
        worst = std::fmax(worst, std::fabs(o - at(out, i, h, d)));
      }
    }
  std::printf("max |memattn - naive| = %.2e\n", worst);
  return worst < 1e-5 ? 0 : 1;
}
