// The flash backward where the scale's place matters (docs/api.md, "scale"), the backward form of
// test_errors.cpp's err_scale_large_with_huge_queries_is_exact and
// err_scale_small_with_overflowing_dot_products_is_exact: scale * q overflows f32 while every
// score and gradient is a finite float, and the other way round q.k overflows while the scaled
// queries are small.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "support_backward.hpp"

using namespace mt;
using memattn::Algorithm;

namespace {

const double kFltMax = std::numeric_limits<float>::max();

double max_abs(const std::vector<double>& x) {
  double m = 0;
  for (double e : x)
    if (!std::isnan(e)) m = std::max(m, std::fabs(e));
  return m;
}

// test_errors.cpp's magnitude_case with the backward's operands: q of magnitude `q_sigma` clamped
// to +-q_limit, k of magnitude `k_sigma` (scores of about scale * q_sigma * k_sigma * 4), dout of
// magnitude `dout_sigma`, which sets that of dS and so keeps dk = scale dS^T q within f32.
BackwardCase magnitude_case(DType dt, double scale, double q_sigma, double q_limit, double k_sigma,
                            double dout_sigma) {
  BackwardCase c(Shape{2, 19, 37, 2, 1, 16, 16}, dt, 71);
  fill_randn(c.q, 72, q_sigma);
  for (int64_t i = 0; i < c.q.numel(); ++i) c.q.set(i, std::clamp(c.q.get(i), -q_limit, q_limit));
  fill_randn(c.k, 73, k_sigma);
  fill_randn(c.dout, 74, dout_sigma);
  c.options.scale = scale;
  c.options.algorithm = Algorithm::flash;
  c.options.query_chunk = 8;  // several query tiles and key chunks, boundary ones included
  c.options.key_chunk = 16;
  return c;
}

// The primary rule's floor is absolute (the dtype's rounding at 0.3), so it cannot see errors in
// gradients far below 1, such as dq ~ 1e-24 here: the rule again at the gradient's own magnitude,
// every value multiplied by the power of two that brings max |ref| into [0.5, 1). Gradients whose
// largest value is within 2^24 of the f32 subnormals are skipped: their output rounding is not
// relative.
void expect_accurate_at_own_scale(const char* name, const std::vector<double>& got,
                                  const std::vector<double>& ref, const std::vector<double>& base,
                                  DType dt) {
  const double m = max_abs(ref);
  if (m < std::ldexp(1.0, -126 + 24)) return;
  int e;
  std::frexp(m, &e);
  const auto scaled = [e](std::vector<double> x) {
    for (double& v : x) v = std::ldexp(v, -e);
    return x;
  };
  EXPECT_EQ(accuracy_failure(scaled(got), scaled(ref), scaled(base), dt, 3.0), "")
      << name << " at its own scale 2^" << e;
}

// The gradients are bitwise the same at 1 and 3 threads.
void expect_thread_independent(BackwardCase& c) {
  c.options.num_threads = 1;
  c.run_backward();
  const Buf dq = c.dq, dk = c.dk, dv = c.dv;
  c.options.num_threads = 3;
  c.run_backward();
  EXPECT_EQ(bitwise_difference(c.dq, dq), "");
  EXPECT_EQ(bitwise_difference(c.dk, dk), "");
  EXPECT_EQ(bitwise_difference(c.dv, dv), "");
}

enum class Extra { none, bias, nan_dout };

}  // namespace

// |scale| > 1 with scale * q beyond FLT_MAX: scale 1e20, q ~ 1e20, k ~ 1e-38 (scores ~ 1e2, dq ~
// 1e-24, dk ~ 1e34); scale 2 with |q| up to 3e38 (dq is subnormal there, so only the plain rule
// judges it); bf16 at scale 1e18, q ~ 2e20. The f32 cases again with a bias and its gradient
// (dS, which does not take the scale), and with a NaN dout row (the element-wise path of the
// tiles that see it).
TEST(BackwardScale, err_scale_large_with_huge_queries_is_exact) {
  for (Algorithm algorithm : {Algorithm::flash, Algorithm::naive})
    for (bool causal : {false, true}) {
      // Causal leaves half the keys unseen, and in these saturated rows the naive backward's D
      // (from its own P) cancels dS exactly: over 70% of its gradients are then exactly 0, an
      // input the zero-trust check rightly calls uninformative. Non-causal tests its scaling.
      if (algorithm == Algorithm::naive && causal) continue;
      for (auto [dt, scale, q_sigma, q_limit, k_sigma, dout_sigma] :
           {std::tuple{DType::f32, 1e20, 1e20, kFltMax, 1e-38, 1e-6},
            std::tuple{DType::f32, 2.0, 1e38, 3e38, 1e-38, 1e-4},
            std::tuple{DType::bf16, 1e18, 2e20, kFltMax, 1e-38, 1e-6}}) {
        for (Extra extra : {Extra::none, Extra::bias, Extra::nan_dout}) {
          if (extra != Extra::none && dt != DType::f32) continue;
          BackwardCase c = magnitude_case(dt, scale, q_sigma, q_limit, k_sigma, dout_sigma);
          c.options.algorithm = algorithm;
          // bf16 keeps f32's exponent range; k is kept normal, since the forward's avx512_bf16 dot
          // product flushes subnormals.
          if (dt == DType::bf16)
            for (int64_t i = 0; i < c.k.numel(); ++i) c.k.set(i, c.k.get(i) + std::copysign(2e-38, c.k.get(i)));
          c.options.causal = causal;
          if (extra == Extra::bias) {
            c.set_bias({1, 2, 19, 37}, DType::f32, randn_values(2 * 19 * 37, 75));
            c.request_dbias();
          }
          if (extra == Extra::nan_dout)  // row (b = 1, i = 5, h = 0)
            for (int64_t e = 0; e < 16; ++e) c.dout.set(((1 * 19 + 5) * 2 + 0) * 16 + e, std::nan(""));
          SCOPED_TRACE(describe(c) + (extra == Extra::nan_dout ? " NaN dout row" : ""));
          ASSERT_GT(scale * max_abs(c.q.values()), kFltMax) << "the premise: scale * q overflows";
          ASSERT_GT(scale * max_abs(c.q.values()) * max_abs(c.k.values()), 1.0) << "the scores must matter";

          expect_backward_accurate(c);
          const RefProblem p = c.problem();
          const std::vector<double> dout = c.dout.values();
          const RefGrads ref = reference_backward64(p, dout);
          const RefGrads base = baseline_backward(p, dout, dt, DType::f32);
          ASSERT_LT(max_abs(ref.dk), kFltMax / 4) << "the premise: the gradients are finite floats";
          const RefGrads got = c.grads();
          expect_accurate_at_own_scale("dq", got.dq, ref.dq, base.dq, dt);
          expect_accurate_at_own_scale("dk", got.dk, ref.dk, base.dk, dt);
          expect_accurate_at_own_scale("dv", got.dv, ref.dv, base.dv, dt);
          if (c.dbias) expect_accurate_at_own_scale("dbias", got.dbias, ref.dbias, base.dbias, DType::f32);
          expect_thread_independent(c);
        }
      }
    }
}

// |scale| <= 1 keeps pre-scaling the queries, exact where the unscaled q.k is not a float:
// 1e-38 * (1e30 x 1e9) * 16 terms, q.k ~ 1e40, scores ~ 10. Base_f32 overflows there (NaN, so
// the rule's baseline term is 0): every gradient within 2^-14 of its largest value instead (the
// forward's check in test_errors.cpp allows 1e-4 ~ 2^-13; the errors here are up to 2^-17.4, dq
// and dk being sums of dS that cancel, since each row of dS adds up to 0).
TEST(BackwardScale, err_scale_small_with_overflowing_dot_products_is_exact) {
  for (bool causal : {false, true}) {
    BackwardCase c = magnitude_case(DType::f32, 1e-38, 1e30, 1e31, 1e9, 1.0);
    c.options.causal = causal;
    SCOPED_TRACE(describe(c));
    c.run_both();
    const RefProblem p = c.problem();
    const RefGrads ref = reference_backward64(p, c.dout.values());
    ASSERT_GT(max_abs(reference64(p).lse), 5.0) << "the scores must matter";
    const RefGrads got = c.grads();
    for (auto [name, g, r] : {std::tuple{"dq", &got.dq, &ref.dq}, std::tuple{"dk", &got.dk, &ref.dk},
                              std::tuple{"dv", &got.dv, &ref.dv}}) {
      const double tol = std::ldexp(max_abs(*r), -14);
      ASSERT_GT(tol, 0.0) << name;
      for (size_t i = 0; i < r->size(); ++i) ASSERT_NEAR((*g)[i], (*r)[i], tol) << name << " element " << i;
    }
    expect_thread_independent(c);
  }
}
