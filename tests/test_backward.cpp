// Backward accuracy: Ref64's gradients against finite differences, then the naive and flash
// backward against Ref64 (TESTPLAN's rule, k = 3, base = the same-precision naive backward) for
// every dtype, mask option, tile boundary, GQA ratio and dv != d.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "support_backward.hpp"

using namespace mt;
using memattn::Algorithm;
using memattn::Align;

namespace {

const Algorithm kBoth[] = {Algorithm::naive, Algorithm::flash};

// Every algorithm on `c` with the accuracy rule; small chunks so several tiles and their
// boundaries are crossed.
void expect_both(BackwardCase& c, int64_t cq = 5, int64_t ck = 7, const GradCheck& check = {}) {
  c.options.query_chunk = cq;
  c.options.key_chunk = ck;
  for (Algorithm a : kBoth) {
    if (a == Algorithm::flash && c.dtype == DType::f64) continue;
    c.options.algorithm = a;
    SCOPED_TRACE(memattn::algorithm_name(a));
    expect_backward_accurate(c, check);
  }
}

}  // namespace

// Ref64's analytic gradients equal central differences of sum(out * dout) (PyTorch's gradcheck),
// with causal, a boolean mask, GQA and a broadcast bias, so the reference itself is trusted.
TEST(BackwardReference, MatchesFiniteDifferences) {
  for (int variant = 0; variant < 3; ++variant) {
    BackwardCase c(Shape{2, 7, 8, 2, variant == 2 ? 1 : 2, 16, variant == 1 ? 5 : 16}, DType::f64, 11 + variant);
    c.options.causal = variant != 0;
    c.options.align = variant == 1 ? Align::bottom_right : Align::top_left;
    if (variant == 0) c.set_mask({2, 1, 7, 8}, random_mask(2 * 7 * 8, 3, 0.7));
    c.set_bias(variant == 2 ? std::vector<int64_t>{1, 2, 7, 8} : std::vector<int64_t>{2, 1, 1, 8},
               DType::f64, randn_values(variant == 2 ? 2 * 7 * 8 : 16, 5));
    const RefProblem p = c.problem();
    const std::vector<double> dout = c.dout.values();
    const RefGrads exact = reference_backward64(p, dout);
    const RefGrads fd = finite_difference_grads(p, dout, 1e-5);
    const std::pair<const std::vector<double>*, const std::vector<double>*> pairs[] = {
        {&exact.dq, &fd.dq}, {&exact.dk, &fd.dk}, {&exact.dv, &fd.dv}, {&exact.dbias, &fd.dbias}};
    for (const auto& [a, b] : pairs) {
      ASSERT_EQ(a->size(), b->size());
      double scale = 0, err = 0;
      for (size_t i = 0; i < a->size(); ++i) scale = std::max(scale, std::fabs((*b)[i]));
      for (size_t i = 0; i < a->size(); ++i) err = std::max(err, std::fabs((*a)[i] - (*b)[i]));
      EXPECT_GT(scale, 0.01) << "variant " << variant;
      EXPECT_LE(err, 1e-7 * (1 + scale)) << "variant " << variant;
    }
  }
}

TEST(BackwardAccuracy, EveryDtypeBothAlgorithms) {
  for (DType dt : {DType::f32, DType::bf16, DType::f16, DType::f64}) {
    SCOPED_TRACE(memattn::dtype_name(dt));
    BackwardCase c(Shape{2, 23, 19, 4, 2, 24, 20}, dt, 3);
    expect_both(c);
  }
}

// Causal in both alignments with Sq < Sk and Sq > Sk, sliding windows, a boolean mask and their
// combinations (TESTPLAN 16, 30 in their backward form).
TEST(BackwardAccuracy, EveryMaskOption) {
  struct Opt {
    bool causal;
    Align align;
    int64_t left, right;
    bool mask;
  };
  const Opt opts[] = {{true, Align::top_left, -1, -1, false},   {true, Align::bottom_right, -1, -1, false},
                      {false, Align::top_left, 3, 2, false},    {true, Align::bottom_right, 4, -1, false},
                      {false, Align::top_left, -1, 0, false},   {false, Align::top_left, -1, -1, true},
                      {true, Align::top_left, 6, -1, true}};
  int seed = 0;
  for (const auto [sq, sk] : {std::pair{13, 21}, std::pair{21, 13}})
    for (const Opt& o : opts) {
      BackwardCase c(Shape{2, sq, sk, 2, 1, 16, 12}, DType::f32, 40 + seed++);
      c.options.causal = o.causal;
      c.options.align = o.align;
      c.options.window_left = o.left;
      c.options.window_right = o.right;
      if (o.mask) c.set_mask({2, 2, sq, sk}, random_mask(size_t(4 * sq * sk), seed, 0.6));
      expect_both(c);
    }
}

// Sq, Sk in {c - 1, c, c + 1, 2c + 1} around each chunk size, causal off and on, plus the
// default chunks with sizes around them (TESTPLAN 23).
TEST(BackwardAccuracy, TileBoundaries) {
  int seed = 0;
  for (int64_t c : {4, 16})
    for (int64_t sq : {c - 1, c, c + 1, 2 * c + 1})
      for (int64_t sk : {c - 1, c, c + 1, 2 * c + 1})
        for (bool causal : {false, true}) {
          BackwardCase bc(Shape{1, sq, sk, 2, 1, 8, 8}, DType::f32, 70 + seed++);
          bc.options.causal = causal;
          bc.options.align = Align::bottom_right;
          bc.options.algorithm = Algorithm::flash;
          bc.options.query_chunk = c;
          bc.options.key_chunk = c;
          SCOPED_TRACE(describe(bc));
          expect_backward_accurate(bc);
        }
  for (const auto [sq, sk] : {std::pair{65, 129}, std::pair{129, 127}, std::pair{63, 257}}) {
    BackwardCase bc(Shape{1, sq, sk, 2, 2, 32, 32}, DType::f32, 90 + seed++);
    bc.options.causal = sq != 63;
    expect_backward_accurate(bc);
  }
}

// Hq / Hkv in {1, 2, 3, 7, Hq (MQA)} with odd Hq: dK and dV summed over each group of consecutive
// query heads (TESTPLAN 31).
TEST(BackwardAccuracy, GqaRatios) {
  int seed = 0;
  for (const auto [hq, hkv] : {std::pair{4, 4}, std::pair{4, 2}, std::pair{9, 3}, std::pair{14, 2},
                               std::pair{9, 1}}) {
    BackwardCase c(Shape{2, 11, 17, hq, hkv, 8, 8}, DType::f32, 100 + seed++);
    c.options.causal = seed % 2 == 0;
    expect_both(c, 4, 8);
  }
}

// Odd head dims and dv != d (TESTPLAN 22), bf16 included.
TEST(BackwardAccuracy, HeadDims) {
  int seed = 0;
  for (const auto [d, dv] : {std::pair{1, 1}, std::pair{3, 7}, std::pair{17, 33}, std::pair{65, 16},
                             std::pair{16, 65}})
    for (DType dt : {DType::f32, DType::bf16}) {
      BackwardCase c(Shape{1, 9, 12, 2, 1, d, dv}, dt, 120 + seed++);
      expect_both(c);
    }
}

// dbias for all 16 broadcast patterns [B|1, H|1, Sq|1, Sk|1], each reduced over its broadcast
// dims, with a causal mask and GQA; f32, bf16 and f16 biases (TESTPLAN 29, backward). Where the
// bias broadcasts over keys its exact gradient is 0 and an error-analysis bound replaces the rule.
TEST(BackwardAccuracy, BiasGradientEveryBroadcast) {
  const int64_t B = 2, H = 4, Sq = 9, Sk = 11;
  for (int pattern = 0; pattern < 16; ++pattern) {
    const std::vector<int64_t> shape{pattern & 8 ? B : 1, pattern & 4 ? H : 1, pattern & 2 ? Sq : 1,
                                     pattern & 1 ? Sk : 1};
    const DType bias_dt = pattern % 3 == 0 ? DType::f32 : pattern % 3 == 1 ? DType::bf16 : DType::f16;
    BackwardCase c(Shape{B, Sq, Sk, H, 2, 8, 8}, DType::f32, 200 + pattern);
    c.options.causal = pattern % 2 == 0;
    c.options.align = Align::bottom_right;
    c.set_bias(shape, bias_dt, randn_values(size_t(shape[0] * shape[1] * shape[2] * shape[3]), pattern, 0, 2));
    c.request_dbias();
    SCOPED_TRACE("bias pattern " + std::to_string(pattern) + " " + memattn::dtype_name(bias_dt));
    GradCheck check;
    if (shape[3] == 1) check.dbias_bound = key_broadcast_dbias_bound(c);
    expect_both(c, 4, 4, check);
  }
}

// dbias with a low-precision problem and a boolean mask next to it.
TEST(BackwardAccuracy, BiasGradientLowPrecisionWithMask) {
  for (DType dt : {DType::bf16, DType::f16}) {
    BackwardCase c(Shape{2, 14, 18, 2, 2, 16, 16}, dt, 230);
    c.set_bias({1, 2, 14, 18}, dt, randn_values(2 * 14 * 18, 231));
    c.set_mask({2, 1, 1, 18}, random_mask(2 * 18, 232, 0.7));
    c.request_dbias();
    SCOPED_TRACE(memattn::dtype_name(dt));
    expect_both(c);
  }
}

// Every SIMD target this CPU runs (Options.target), f32 and bf16, with a mask and a bias.
TEST(BackwardAccuracy, EverySimdTarget) {
  for (const std::string& target : memattn::supported_targets())
    for (DType dt : {DType::f32, DType::bf16}) {
      BackwardCase c(Shape{2, 21, 26, 4, 2, 24, 20}, dt, 250);
      c.options.target = target.c_str();
      c.options.causal = true;
      c.set_mask({1, 4, 21, 26}, random_mask(4 * 21 * 26, 251, 0.8));
      c.set_bias({2, 1, 21, 26}, DType::f32, randn_values(2 * 21 * 26, 252));
      c.request_dbias();
      c.options.algorithm = Algorithm::flash;
      c.options.query_chunk = 8;
      c.options.key_chunk = 16;
      SCOPED_TRACE(target + " " + memattn::dtype_name(dt));
      expect_backward_accurate(c);
    }
}
