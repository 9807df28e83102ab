// Flash backward accuracy across score scales (issue 10): rows whose lse is far from 0 (inputs of
// scale 1 to 16, |lse| up to about 2000), where P rebuilt from the f32 lse alone carries the lse's
// rounding (|lse| u) into every probability of the row. dV = P^T dO is checked: it shows an error
// in P undiluted, with no D = rowsum(dO * O) in it.
#include <gtest/gtest.h>

#include <random>

#include "support_backward.hpp"

using namespace mt;
using memattn::Algorithm;

namespace {

// Counts the flash backward's dV against Ref64 and the same-precision naive backward.
struct DvRule {
  int cases = 0, over_rule = 0, over_10 = 0;  // cases, those beyond TESTPLAN's rule (k = 3) and k = 10

  // Runs c (forward, then the flash backward) and checks dV. At these scales the scores carry
  // rounding errors of hundreds of u (|s| up to ~1000), drawn independently by flash and by the
  // naive baseline, so comparing two such maxima fails k = 3 by chance in a few percent of cases
  // even for equally accurate algorithms, and k = 10 in about 1%: each case is held to k = 100
  // (a gross error), the callers bound the shares beyond k = 3 and k = 10. Without the lse
  // correction: 12 of issue 10's 40 seeds and 3 of the 240 random cases beyond k = 10, 26 seeds
  // and 11 cases beyond k = 3; with it: none beyond k = 10, 3 seeds and 2 cases beyond k = 3.
  // Calls of at most 16 queries score by dot products (Params::scores_by_dot), whose errors are
  // independent of the naive baseline's sequential sums: over 300 seeds of issue 10's shape dV's
  // error was half the GEMM order's on average (1.65e-6 against 3.21e-6, geometric mean ratio to
  // the baseline 0.73 against 1.04), 12 seeds beyond k = 3 (GEMM order 29) and 3 beyond k = 10
  // (GEMM order 6), 2 of them among the first 40.
  void check(BackwardCase& c) {
    c.options.algorithm = Algorithm::flash;
    c.run_both();
    const RefProblem p = c.problem();
    const std::vector<double> dout = c.dout.values(), got = c.dv.values();
    const std::vector<double> ref = reference_backward64(p, dout).dv;
    const std::vector<double> base = baseline_backward(p, dout, c.dtype, c.dtype).dv;
    EXPECT_EQ(accuracy_failure(got, ref, base, c.dtype, 100.0), "") << describe(c);
    ++cases;
    over_rule += !accuracy_failure(got, ref, base, c.dtype, 3.0).empty();
    over_10 += !accuracy_failure(got, ref, base, c.dtype, 10.0).empty();
  }
};

}  // namespace

// Issue 10's example: q, k ~ N(0, 8^2), d = 128, dv = 256, Sq = Sk = 7 (max |lse| about 235),
// where the f32 lse put dV up to 59x the naive backward's error.
TEST(BackwardAccuracyScale, num_large_lse_rows_f32) {
  DvRule rule;
  for (uint64_t seed = 0; seed < 40; ++seed) {
    BackwardCase c(Shape{1, 7, 7, 1, 1, 128, 256}, DType::f32, 1000 + seed, 8.0);
    SCOPED_TRACE("seed " + std::to_string(seed));
    rule.check(c);
  }
  RecordProperty("beyond_k3", rule.over_rule);
  EXPECT_LE(rule.over_rule, 4) << "of " << rule.cases << " seeds beyond k = 3";
  EXPECT_LE(rule.over_10, 2) << "of " << rule.cases << " seeds beyond k = 10";
}

// Random shapes (Sq, Sk in 1..80, d in {16, 64, 128}, dv in {d, 2d}, GQA and causal sometimes,
// default and small chunks) at input scales 1 to 16, f32 and the 16-bit dtypes. At scale 1 dq and
// dk are held to the rule too; at larger scales saturated rows make dS = P (dP - D) pure
// cancellation, where D = rowsum(dO * O) from the forward's O (not rowsum(P * dP) as the naive
// backward has it) leaves noise of u |dO| |V| that the rule compares with gradients near 0.
TEST(BackwardAccuracyScale, num_random_shapes_every_scale) {
  std::mt19937_64 rng(20261202);
  const auto pick = [&](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
  };
  DvRule rule;
  uint64_t seed = 2000;
  for (double scale : {1.0, 2.0, 4.0, 8.0, 16.0})
    for (DType dt : {DType::f32, DType::bf16, DType::f16})
      for (int n = 0; n < (dt == DType::f32 ? 32 : 8); ++n) {
        const int64_t dims[] = {16, 64, 128}, dim = dims[pick(0, 2)];
        const bool gqa = pick(0, 2) == 0;
        const Shape s{1, pick(1, 80), pick(1, 80), gqa ? 4 : 1, gqa ? 2 : 1, dim, dim * pick(1, 2)};
        BackwardCase c(s, dt, seed++, scale);
        c.options.causal = pick(0, 2) == 0;
        c.options.align = pick(0, 1) ? memattn::Align::bottom_right : memattn::Align::top_left;
        if (pick(0, 1)) c.options.query_chunk = pick(1, 16), c.options.key_chunk = pick(1, 32);
        SCOPED_TRACE("scale " + std::to_string(scale));
        rule.check(c);
        if (scale == 1) expect_backward_accurate(c, GradCheck{.expect_zeros = true});
      }
  RecordProperty("beyond_k3", rule.over_rule);
  EXPECT_LE(rule.over_rule, rule.cases / 50) << "of " << rule.cases << " cases beyond k = 3";
  EXPECT_LE(rule.over_10, rule.cases / 100) << "of " << rule.cases << " cases beyond k = 10";
}

// Rows with corrected lse (inputs of scale 8, |lse| in the hundreds), with GQA, causal and a dbias
// reduced over broadcast batch and query dims (so dq items walk several heads and chunks): every
// output bitwise equal across 1, 2 and 3 threads, and dV within the rule.
TEST(BackwardAccuracyScale, det_corrected_rows_any_thread_count) {
  for (DType dt : {DType::f32, DType::bf16}) {
    BackwardCase c(Shape{2, 45, 38, 4, 2, 16, 24}, dt, 3000, dt == DType::f32 ? 8.0 : 2000.0);
    c.options.algorithm = Algorithm::flash;
    c.options.causal = true;
    c.options.query_chunk = 8;
    c.options.key_chunk = 16;
    c.set_bias({1, 4, 1, 38}, DType::f32, randn_values(4 * 38, 3001));
    c.request_dbias();
    expect_same_bits_any_thread_count(c, {2, 3}, std::string(memattn::dtype_name(dt)) + " ");
    DvRule rule;
    rule.check(c);
  }
}

// Decode-shaped calls (Params::scores_by_dot) recompute the forward's dot-product scores in the
// backward, on every dtype: the gradients within the rule of Ref64 (the bf16 ones on the f32
// products, whatever the family).
TEST(BackwardAccuracy, DecodeShapesScoreByDotProducts) {
  for (DType dt : {DType::f32, DType::bf16, DType::f16})
    for (int64_t sq : {1, 2}) {
      BackwardCase c(Shape{2, sq, 300, 8, 2, 32, 48}, dt, 60 + uint64_t(sq));
      c.options.causal = true, c.options.align = memattn::Align::bottom_right;
      SCOPED_TRACE(describe(c));
      expect_backward_accurate(c);
    }
}
