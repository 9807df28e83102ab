// Backward edge cases of TESTPLAN B in their backward form: fully masked rows (15), a single key
// (18), zero lengths (20), large logits in low precision (24), saturated softmax (25), NaN/Inf
// propagation (26) and NaN-poisoned padding around every operand (27).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>

#include "support_backward.hpp"

using namespace mt;
using memattn::Algorithm;
using memattn::Align;

namespace {

const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

// Sets row (b, i, h) of a [B, S, H, D] buffer to x.
void set_row(Buf& t, int64_t b, int64_t i, int64_t h, double x) {
  const int64_t S = t.shape[1], H = t.shape[2], D = t.shape[3];
  for (int64_t c = 0; c < D; ++c) t.set(((b * S + i) * H + h) * D + c, x);
}

bool any_nan(const Buf& t) {
  for (double x : t.values())
    if (std::isnan(x)) return true;
  return false;
}

void for_both(BackwardCase& c, const std::function<void()>& body) {
  for (Algorithm a : {Algorithm::naive, Algorithm::flash}) {
    c.options.algorithm = a;
    SCOPED_TRACE(memattn::algorithm_name(a));
    body();
  }
}

}  // namespace

// Fully masked rows built three ways (an all-false mask row, an all -inf bias row, causal
// bottom-right with Sq > Sk): their dq row is exactly 0, no NaN anywhere, and the row contributes
// exactly 0 to dk and dv: NaN in its dout (and q, where masks hide it) changes no other bit.
TEST(BackwardEdge, num_fully_masked_row) {
  for (int way = 0; way < 3; ++way) {
    const int64_t sq = 9, sk = way == 2 ? 6 : 10;
    BackwardCase c(Shape{2, sq, sk, 2, 1, 8, 8}, DType::f32, 300 + way);
    const int64_t row = 2;  // fully masked in (b = 1, h = 0) for ways 0 and 1; in all for way 2
    if (way == 0) {
      std::vector<uint8_t> m(size_t(2 * 2 * sq * sk), 1);
      for (int64_t j = 0; j < sk; ++j) m[size_t(((1 * 2 + 0) * sq + row) * sk + j)] = 0;
      c.set_mask({2, 2, sq, sk}, m);
    } else if (way == 1) {
      std::vector<double> bias = randn_values(size_t(2 * 2 * sq * sk), 9);
      for (int64_t j = 0; j < sk; ++j) bias[size_t(((1 * 2 + 0) * sq + row) * sk + j)] = -kInf;
      c.set_bias({2, 2, sq, sk}, DType::f32, bias);
    } else {
      c.options.causal = true;
      c.options.align = Align::bottom_right;  // rows 0 .. sq - sk - 1 see no key
    }
    for_both(c, [&] {
      SCOPED_TRACE("way " + std::to_string(way));
      expect_backward_accurate(c, GradCheck{.expect_zeros = true});
      const Buf dq = c.dq, dk = c.dk, dv = c.dv, q = c.q, dout = c.dout;
      EXPECT_FALSE(any_nan(dq) || any_nan(dk) || any_nan(dv));
      for (int64_t c2 = 0; c2 < 8; ++c2) EXPECT_EQ(dq.get(((1 * sq + row) * 2 + 0) * 8 + c2), 0.0);
      // Poison the masked row's dout (and q when no bias reads it); nothing else may change.
      set_row(c.dout, 1, row, 0, kNaN);
      if (way != 1) set_row(c.q, 1, row, 0, kNaN);
      c.run_backward();
      EXPECT_EQ(bitwise_difference(c.dk, dk), "");
      EXPECT_EQ(bitwise_difference(c.dv, dv), "");
      EXPECT_EQ(bitwise_difference(c.dq, dq), "");
      c.q = q;
      c.dout = dout;
    });
  }
}

// Sk = 1: P = 1 exactly, so dq and dk vanish in exact arithmetic and what is left is the rounding
// of dP - D: |dq|, |dk| <= 4 u |scale| sum_c |dO_c V_c| |K| (resp. |Q|); dv = sum of dO (the rule).
TEST(BackwardEdge, num_single_key) {
  for (int64_t sq : {1, 5, 70}) {
    BackwardCase c(Shape{2, sq, 1, 2, 1, 16, 16}, DType::f32, 320 + uint64_t(sq), 3.0);
    for_both(c, [&] {
      c.run_both();
      const double u = std::ldexp(1.0, -24), scale = 0.25;
      for (int64_t b = 0; b < 2; ++b) {
        double dk_bound[16] = {};
        for (int64_t h = 0; h < 2; ++h)
          for (int64_t i = 0; i < sq; ++i) {
            double dov = 0;
            for (int64_t c2 = 0; c2 < 16; ++c2)
              dov += std::fabs(c.dout.get(((b * sq + i) * 2 + h) * 16 + c2) * c.v.get(b * 16 + c2));
            for (int64_t c2 = 0; c2 < 16; ++c2) {
              const int64_t at = ((b * sq + i) * 2 + h) * 16 + c2;
              EXPECT_LE(std::fabs(c.dq.get(at)), 4 * u * scale * dov * std::fabs(c.k.get(b * 16 + c2)));
              dk_bound[c2] += 4 * u * scale * dov * std::fabs(c.q.get(at));
            }
          }
        for (int64_t c2 = 0; c2 < 16; ++c2) EXPECT_LE(std::fabs(c.dk.get(b * 16 + c2)), dk_bound[c2]);
      }
      RefProblem p = c.problem();
      const RefGrads ref = reference_backward64(p, c.dout.values());
      const RefGrads base = baseline_backward(p, c.dout.values(), DType::f32, DType::f32);
      EXPECT_EQ(accuracy_failure(c.dv.values(), ref.dv, base.dv, DType::f32, 3.0), "");
    });
  }
}

// Sq = 0 writes zeros to dk, dv and dbias (pre-filled with NaN to catch a missing write); Sk = 0
// writes zeros to dq and dbias; B = 0 and H = 0 are no-ops.
TEST(BackwardEdge, num_zero_length) {
  for (const auto [sq, sk] : {std::pair{0, 7}, std::pair{6, 0}}) {
    BackwardCase c(Shape{2, sq, sk, 2, 1, 8, 4}, DType::f32, 330);
    c.set_bias({1, 2, sq == 0 ? 1 : sq, sk == 0 ? 1 : sk}, DType::bf16,
               randn_values(size_t(2 * std::max(sq, 1) * std::max(sk, 1)), 331));
    c.request_dbias();
    for_both(c, [&] {
      for (Buf* g : {&c.dq, &c.dk, &c.dv, &*c.dbias}) g->fill(kNaN);
      c.run_both();
      for (const Buf* g : {&c.dq, &c.dk, &c.dv, &*c.dbias})
        for (double x : g->values()) EXPECT_EQ(x, 0.0);
    });
  }
  for (const Shape s : {Shape{0, 5, 5, 2, 1, 8, 8}, Shape{2, 5, 5, 0, 0, 8, 8}}) {
    BackwardCase c(s, DType::f32, 332);
    for_both(c, [&] { EXPECT_NO_THROW(c.run_both()); });
  }
}

// Logits far beyond exp's range in f32, bf16 and f16: q scaled x5 and x50, fp16 scores up to
// 1e6 before scaling, bf16 q = k = v = 133120. No Inf/NaN; the adversarial rule (k = 5, +1e-3).
TEST(BackwardEdge, num_large_logits_lowp) {
  int seed = 0;
  for (DType dt : {DType::f32, DType::bf16, DType::f16})
    for (double sigma : {5.0, 50.0}) {
      BackwardCase c(Shape{1, 12, 20, 2, 1, 16, 16}, dt, 340 + seed++, sigma);
      c.options.causal = sigma > 10;
      for_both(c, [&] { expect_backward_accurate(c, GradCheck{5.0, 1e-3, {}, true}); });
    }
  BackwardCase half(Shape{1, 8, 8, 1, 1, 16, 16}, DType::f16, 350, 250.0);
  for_both(half, [&] { expect_backward_accurate(half, GradCheck{5.0, 1e-3, {}, true}); });
  BackwardCase same(Shape{1, 8, 8, 1, 1, 16, 16}, DType::bf16, 351);
  for (Buf* t : {&same.q, &same.k, &same.v}) t->fill(133120.0);
  for_both(same, [&] { expect_backward_accurate(same, GradCheck{5.0, 1e-3, {}, true}); });
}

// Saturated softmax, where P * (dP - D) cancels: one key dominating by a logit gap > 200, all
// logits equal (scale 0), logits of +-1e4 in f32.
TEST(BackwardEdge, num_softmax_saturation) {
  const int64_t sq = 10, sk = 14;
  BackwardCase gap(Shape{1, sq, sk, 2, 2, 16, 16}, DType::f32, 360);
  std::vector<double> bias(size_t(2 * sq * sk), 0.0);
  for (int64_t r = 0; r < 2 * sq; ++r) bias[size_t(r * sk + (r * 5) % sk)] = 250.0;
  gap.set_bias({1, 2, sq, sk}, DType::f32, bias);
  gap.request_dbias();
  for_both(gap, [&] { expect_backward_accurate(gap, GradCheck{5.0, 1e-3, {}, true}); });

  BackwardCase equal(Shape{1, sq, sk, 2, 1, 16, 16}, DType::f32, 361);
  equal.options.scale = 0.0f;
  for_both(equal, [&] { expect_backward_accurate(equal, GradCheck{5.0, 1e-3, {}, true}); });

  BackwardCase huge(Shape{1, sq, sk, 2, 1, 16, 16}, DType::f32, 362, 100.0);
  for_both(huge, [&] { expect_backward_accurate(huge, GradCheck{5.0, 1e-3, {}, true}); });
}

// NaN in q or dout row i poisons exactly what depends on it (dq row i and the dk, dv rows of the
// keys that row sees); NaN in a K/V position a mask hides (causal or boolean) is never read; NaN
// in a visible K position poisons the rows that see it. NaN parity with Ref64 checks all of it.
TEST(BackwardEdge, num_nan_inf_propagation) {
  const int64_t sq = 9, sk = 12;
  for (int what = 0; what < 5; ++what) {
    BackwardCase c(Shape{1, sq, sk, 2, 1, 8, 8}, DType::f32, 370 + what);
    c.options.causal = true;
    c.options.align = Align::bottom_right;
    std::vector<uint8_t> m(size_t(sq * sk), 1);
    m[size_t(4 * sk + 2)] = 0;
    for (int64_t i = 0; i < sq; ++i) m[size_t(i * sk + 6)] = 0;  // key 6 hidden from every row
    c.set_mask({1, 1, sq, sk}, m);
    switch (what) {
      case 0: set_row(c.q, 0, 4, 1, kNaN); break;
      case 1: set_row(c.dout, 0, 4, 0, kNaN); break;
      case 2: set_row(c.k, 0, 6, 0, kNaN), set_row(c.v, 0, 6, 0, kNaN); break;  // mask-hidden
      case 3: set_row(c.k, 0, sk - 1, 0, kNaN); break;  // causal hides it from all but the last row
      case 4: c.k.set(8 * 5 + 3, kNaN); break;         // visible to rows 2 ..
    }
    SCOPED_TRACE("case " + std::to_string(what));
    c.options.query_chunk = 4;
    c.options.key_chunk = 5;
    for_both(c, [&] { expect_backward_accurate(c, GradCheck{.expect_zeros = true}); });
  }
}

// Every operand, dout and the gradients included, inside a larger buffer whose padding is NaN:
// no NaN comes out and the gradients are bitwise those of the unpadded run (TESTPLAN 27).
TEST(BackwardEdge, num_oob_nan_poison) {
  BackwardCase c(Shape{2, 11, 13, 4, 2, 12, 10}, DType::bf16, 380);
  c.options.causal = true;
  c.set_mask({2, 1, 11, 13}, random_mask(2 * 11 * 13, 381, 0.8));
  c.set_bias({1, 4, 11, 1}, DType::f32, randn_values(4 * 11, 382));
  c.request_dbias();
  c.options.query_chunk = 4;
  c.options.key_chunk = 8;
  for_both(c, [&] {
    c.run_both();
    Embedded q = embed(c.q, kNaN), k = embed(c.k, kNaN), v = embed(c.v, kNaN), out = embed(c.out, kNaN),
             dout = embed(c.dout, kNaN), lse = embed(c.lse, kNaN), mask = embed(*c.mask, 1),
             bias = embed(*c.bias, kNaN), dq = embed(c.dq, kNaN), dk = embed(c.dk, kNaN),
             dv = embed(c.dv, kNaN), db = embed(*c.dbias, kNaN);
    memattn::Options o = c.options;
    o.mask = &mask.view;
    o.bias = &bias.view;
    memattn::backward(q.view, k.view, v.view, out.view, dout.view, lse.view, dq.view, dk.view, dv.view, o,
                      &db.view);
    for (auto [e, want] : {std::pair{&dq, &c.dq}, std::pair{&dk, &c.dk}, std::pair{&dv, &c.dv},
                           std::pair{&db, &*c.dbias}}) {
      Buf got(want->dtype, want->shape);
      copy_from_view(e->view, got);
      EXPECT_EQ(bitwise_difference(got, *want), "");
    }
  });
}

// Whole chunks masked per row (TESTPLAN 16): a band where each of 600 rows sees 10 keys, and a
// boolean mask hiding exactly the first chunk from some rows and the last from others.
TEST(BackwardEdge, num_chunk_fully_masked) {
  BackwardCase band(Shape{1, 600, 600, 1, 1, 16, 16}, DType::f32, 390);
  band.options.window_left = 9;
  band.options.window_right = 0;
  for_both(band, [&] { expect_backward_accurate(band); });

  const int64_t s = 40, chunk = 8;
  BackwardCase ends(Shape{1, s, s, 2, 1, 8, 8}, DType::f32, 391);
  std::vector<uint8_t> m(size_t(s * s), 1);
  for (int64_t i = 0; i < s; ++i)
    for (int64_t j = 0; j < chunk; ++j) m[size_t(i * s + (i % 2 ? j : s - 1 - j))] = 0;
  ends.set_mask({1, 1, s, s}, m);
  ends.options.query_chunk = chunk;
  ends.options.key_chunk = chunk;
  for_both(ends, [&] { expect_backward_accurate(ends); });
}
