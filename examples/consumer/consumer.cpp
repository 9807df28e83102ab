// Consumer of an installed memattn through its C++ API: one attention call checked against naive.
#include <cmath>
#include <cstdio>
#include <vector>

#include "memattn/memattn.hpp"

int main() {
  const int64_t Sq = 3, Sk = 5, H = 2, D = 4;  // [batch 1, seq, heads H, head_dim D], row-major
  std::vector<float> q(Sq * H * D), k(Sk * H * D), v(k.size()), out(q.size());
  for (size_t i = 0; i < q.size(); ++i) q[i] = std::sin(0.3f * i);
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = std::cos(0.7f * i);
    v[i] = std::sin(0.5f * i + 1);
  }
  using memattn::DType, memattn::Tensor;
  try {
    memattn::forward(Tensor::contiguous(q.data(), DType::f32, {1, Sq, H, D}),
                     Tensor::contiguous(k.data(), DType::f32, {1, Sk, H, D}),
                     Tensor::contiguous(v.data(), DType::f32, {1, Sk, H, D}),
                     Tensor::contiguous(out.data(), DType::f32, {1, Sq, H, D}), nullptr, {});
  } catch (const memattn::Error& e) {
    std::fprintf(stderr, "memattn: %s\n", e.what());
    return 1;
  }

  // softmax(q k^T / sqrt(D)) v in double
  double worst = 0;
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < Sq; ++i) {
      std::vector<double> s(Sk);
      double max = -INFINITY, sum = 0;
      for (int64_t j = 0; j < Sk; ++j) {
        for (int64_t d = 0; d < D; ++d)
          s[j] += double(q[(i * H + h) * D + d]) * k[(j * H + h) * D + d];
        s[j] /= std::sqrt(double(D));
        max = std::fmax(max, s[j]);
      }
      for (double& x : s) sum += x = std::exp(x - max);
      for (int64_t d = 0; d < D; ++d) {
        double o = 0;
        for (int64_t j = 0; j < Sk; ++j) o += s[j] / sum * v[(j * H + h) * D + d];
        worst = std::fmax(worst, std::fabs(o - out[(i * H + h) * D + d]));
      }
    }
  std::printf("memattn, C++ API: max |memattn - naive| = %.2e\n", worst);
  return worst < 1e-5 ? 0 : 1;
}
