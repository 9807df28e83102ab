// The SIMD kernels' documented bounds, per target: the softmax step's exp within 2 ulp of the
// exact value on [-87, 0], exactly 0 for -inf, NaN kept; and the GEMM tile against a plain loop.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "cpu/kernels.hpp"

using namespace memattn::detail;

TEST(Kernels, SoftmaxExpWithinTwoUlp) {
  for (const Kernels* k : available_kernels()) {
    SCOPED_TRACE(k->name);
    const size_t ld = kPadFloats, keys = 4096;
    std::vector<float> st(keys * ld);
    for (size_t t = 0; t < keys; ++t)
      for (size_t q = 0; q < ld; ++q) st[t * ld + q] = -87.0f * float(t * ld + q) / float(keys * ld);
    st[0] = 0.0f;  // the running max is 0 in every lane
    for (size_t q = 0; q < ld; ++q) st[q] = 0.0f;
    const std::vector<float> x = st;
    std::vector<float> mx(ld, -INFINITY), sum(ld, 0.0f), alpha(ld);
    k->softmax_step(st.data(), keys, ld, 1.0f, mx.data(), sum.data(), alpha.data());
    double worst = 0;
    for (size_t i = 0; i < st.size(); ++i) {
      const double exact = std::exp(double(x[i]));
      const double ulp = std::nextafter(float(exact), INFINITY) - float(exact);
      worst = std::max(worst, std::fabs(st[i] - exact) / ulp);
    }
    EXPECT_LE(worst, 2.0);
  }
}

TEST(Kernels, SoftmaxMaskedAndNaN) {
  for (const Kernels* k : available_kernels()) {
    SCOPED_TRACE(k->name);
    const size_t ld = kPadFloats;
    std::vector<float> st(2 * ld, -INFINITY);
    st[0] = 1.5f;                                          // lane 0: one visible score
    st[1] = std::numeric_limits<float>::quiet_NaN();      // lane 1: NaN, nothing else visible
    std::vector<float> mx(ld, -INFINITY), sum(ld, 0.0f), alpha(ld);
    k->softmax_step(st.data(), 2, ld, 1.0f, mx.data(), sum.data(), alpha.data());
    EXPECT_EQ(st[0], 1.0f);
    EXPECT_EQ(st[ld], 0.0f);
    EXPECT_TRUE(std::isnan(st[1]));
    EXPECT_TRUE(std::isnan(sum[1]));
    EXPECT_EQ(sum[2], 0.0f);     // fully masked lane stays empty
    EXPECT_EQ(mx[2], -INFINITY);
    EXPECT_EQ(alpha[2], 1.0f);
  }
}

TEST(Kernels, GemmTileEdgesMatchPlainLoop) {
  for (const Kernels* k : available_kernels()) {
    SCOPED_TRACE(k->name);
    for (size_t m : {1, 5, 6, 7, 13})
      for (size_t n : {16, 48, 64, 80})
        for (size_t kk : {1, 3, 17}) {
          std::vector<float> a(m * kk), b(kk * n), c(m * n, 1.0f), ref(m * n, 1.0f);
          for (size_t i = 0; i < a.size(); ++i) a[i] = float(int(i % 5) - 2);
          for (size_t i = 0; i < b.size(); ++i) b[i] = float(int(i % 7) - 3);
          for (size_t i = 0; i < m; ++i)
            for (size_t j = 0; j < n; ++j)
              for (size_t p = 0; p < kk; ++p) ref[i * n + j] += a[i * kk + p] * b[p * n + j];
          k->gemm({a.data(), kk, 1, b.data(), n, c.data(), n, m, n, kk, true});
          EXPECT_EQ(c, ref) << "m " << m << " n " << n << " k " << kk;  // small integers: exact
        }
  }
}
