// NaN and Inf of TESTPLAN section B for the forward pass: propagation from q, K and V and
// confinement by masks (26), and NaN-filled padding around every operand that must never be read
// nor written (27).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>

#include "support.hpp"

using namespace mt;
using memattn::Algorithm;
using memattn::Align;

namespace {

const DType kDtypes[] = {DType::f32, DType::bf16, DType::f16, DType::f64};
const DType kLowDtypes[] = {DType::f32, DType::bf16, DType::f16};
const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

}  // namespace

namespace {

// What a poisoned input must do: affected rows non-finite (else only matching Ref64); the other
// rows bitwise equal to the clean run (else only finite: a kernel may take another summation
// path for a chunk holding a non-finite value, which TESTPLAN 26 allows for K/V but not for q).
struct Confined {
  bool affected_nonfinite = true;
  bool others_bitwise = true;
};

// The NaN/Inf case: `poison` changes the inputs of a copy of the clean problem, `affected` says
// which rows it may change; every output must also match Ref64 (NaN and Inf exactly where it has
// them).
void expect_poison_confined(const std::string& what, DType dt, const std::function<void(Case&)>& setup,
                            const std::function<void(Case&)>& poison,
                            const std::function<bool(const Case&, int64_t, int64_t, int64_t)>& affected,
                            Confined expect = {}) {
  const Shape s{2, 12, 16, 4, 2, 8, 8};
  Case clean(s, dt, 71), dirty(s, dt, 71);
  for (Case* c : {&clean, &dirty}) {
    c->options.query_chunk = 4;
    c->options.key_chunk = 8;
    setup(*c);
  }
  poison(dirty);
  SCOPED_TRACE(what + ": " + describe(dirty));
  expect_accurate_all(dirty);  // NaN and Inf exactly where Ref64 has them
  for (Algorithm alg : algorithms_for(dt)) {
    clean.options.algorithm = dirty.options.algorithm = alg;
    clean.run();
    dirty.run();
    for_each_row(s, [&](int64_t b, int64_t i, int64_t h) {
      const int64_t o = out_row_offset(s, b, i, h);
      if (affected(dirty, b, i, h)) {
        bool finite = true;
        for (int64_t c = 0; c < s.Dv; ++c) finite &= std::isfinite(dirty.out.get(o + c));
        if (expect.affected_nonfinite)
          EXPECT_FALSE(finite) << describe(dirty) << " row " << b << ',' << i << ',' << h;
      } else if (expect.others_bitwise) {
        EXPECT_TRUE(same_bytes(dirty.out, clean.out, o, s.Dv))
            << describe(dirty) << " independent row " << b << ',' << i << ',' << h << " changed";
      } else {
        for (int64_t c = 0; c < s.Dv; ++c)
          EXPECT_TRUE(std::isfinite(dirty.out.get(o + c)))
              << describe(dirty) << " independent row " << b << ',' << i << ',' << h;
      }
    });
  }
}

// Does row (b, i, h) see key j of the Case's masks?
bool sees(const Case& c, int64_t b, int64_t i, int64_t h, int64_t j) {
  return ref_visible(c.problem(), b, h, i, j);
}

// Index of k[b, j, g, x] (or v with dim Dv).
int64_t kv_index(const Shape& s, int64_t b, int64_t j, int64_t g, int64_t x, int64_t dim) {
  return ((b * s.Sk + j) * s.Hkv + g) * dim + x;
}

// Causal top-left with Sq < Sk (keys 12..15 visible to no row) and a 75% random mask that keeps
// key 0 for every row (so no row is empty).
void causal_and_mask(Case& c) {
  const Shape& s = c.s;
  c.options.causal = true;
  std::vector<uint8_t> m = random_mask(size_t(s.B * s.Hq * s.Sq * s.Sk), 72, 0.75);
  for (size_t r = 0; r < m.size(); r += size_t(s.Sk)) m[r] = 1;
  c.set_mask({s.B, s.Hq, s.Sq, s.Sk}, m);
}

}  // namespace

TEST(Propagation, num_nan_inf_propagation) {
  const auto row = [](int64_t b0, int64_t i0, int64_t h0) {
    return [=](const Case&, int64_t b, int64_t i, int64_t h) { return b == b0 && i == i0 && h == h0; };
  };
  // Rows of batch 0 whose query head reads kv head 1 and that see key 6.
  const auto sees_k6 = [](const Case& c, int64_t b, int64_t i, int64_t h) {
    return b == 0 && h / 2 == 1 && sees(c, b, i, h, 6);
  };
  const auto nowhere = [](const Case&, int64_t, int64_t, int64_t) { return false; };
  // Key 7 hidden from every row by the bool mask; key 14 lies beyond every causal diagonal.
  const auto hide_key7 = [](Case& c) {
    causal_and_mask(c);
    for (int64_t r = 0; r < c.mask->numel(); r += c.s.Sk) c.mask->set(r + 7, 0);
  };
  const auto bias_minus_inf = [](int64_t i, int64_t j_first, int64_t j_last) {
    return [=](Case& c) {
      std::vector<double> bias(size_t(c.s.Sq * c.s.Sk), 0.0);
      std::fill(bias.begin() + i * c.s.Sk + j_first, bias.begin() + i * c.s.Sk + j_last + 1, -kInf);
      c.set_bias({1, 1, c.s.Sq, c.s.Sk}, c.dtype, bias);
    };
  };
  for (DType dt : kLowDtypes) {
    expect_poison_confined(
        "NaN in q row (1,5,3)", dt, causal_and_mask,
        [](Case& c) { c.q.set(((1 * 12 + 5) * 4 + 3) * 8 + 2, kNaN); }, row(1, 5, 3));
    for (double bad : {kNaN, kInf, -kInf}) {
      // An infinite key component gives scores of +-inf: +inf rows become NaN, -inf drops the key.
      expect_poison_confined("K[0,6,1,0] = " + std::to_string(bad), dt, causal_and_mask,
                             [bad](Case& c) { c.k.set(kv_index(c.s, 0, 6, 1, 0, 8), bad); }, sees_k6,
                             {std::isnan(bad), false});
      expect_poison_confined("V[0,6,1,3] = " + std::to_string(bad), dt, causal_and_mask,
                             [bad](Case& c) { c.v.set(kv_index(c.s, 0, 6, 1, 3, 8), bad); }, sees_k6,
                             {true, false});
    }
    for (int64_t key : {7, 14})
      expect_poison_confined(
          "NaN in masked key " + std::to_string(key), dt, hide_key7,
          [key](Case& c) {
            for (int64_t g = 0; g < 2; ++g)
              for (int64_t x = 0; x < 8; ++x)
                c.k.set(kv_index(c.s, 1, key, g, x, 8), kNaN), c.v.set(kv_index(c.s, 1, key, g, x, 8), kNaN);
          },
          nowhere);
    // window_left 2: key 1 is visible to rows 0-3 only.
    expect_poison_confined(
        "NaN in V left of a window", dt, [](Case& c) { c.options.window_left = 2; },
        [](Case& c) { c.v.set(kv_index(c.s, 0, 1, 0, 0, 8), kNaN); },
        [](const Case&, int64_t b, int64_t i, int64_t h) { return b == 0 && h < 2 && i <= 3; });
    // An additive -inf bias is not a mask: NaN in V at a key with -inf bias still poisons (0 * NaN).
    expect_poison_confined(
        "NaN in V under a -inf bias", dt, bias_minus_inf(9, 6, 6),
        [](Case& c) { c.v.set(kv_index(c.s, 0, 6, 1, 3, 8), kNaN); },
        [](const Case&, int64_t b, int64_t, int64_t h) { return b == 0 && h / 2 == 1; }, {true, false});
    // NaN in q must not be turned into zeros by the empty-row logic: a row whose bias is -inf
    // everywhere is not masked, so NaN in its q gives NaN.
    expect_poison_confined(
        "NaN in q of an all -inf bias row", dt, bias_minus_inf(2, 0, 15),
        [](Case& c) { c.q.set(((0 * 12 + 2) * 4 + 1) * 8, kNaN); }, row(0, 2, 1));
  }
}

TEST(Propagation, num_oob_nan_poison) {
  // Every operand inside a larger buffer whose padding (around each dim) is NaN (mask padding:
  // "attend"): out must be bitwise equal to the unpadded run and its own padding untouched.
  const Shape s{2, 13, 21, 4, 2, 12, 10};
  for (DType dt : kDtypes) {
    Case c(s, dt, 91);
    c.options.query_chunk = 4;
    c.options.key_chunk = 8;
    c.options.causal = true;
    c.options.align = Align::bottom_right;
    c.set_mask({s.B, 1, s.Sq, s.Sk}, random_mask(size_t(s.B * s.Sq * s.Sk), 92, 0.8));
    c.set_bias({1, s.Hq, s.Sq, s.Sk}, dt, randn_values(size_t(s.Hq * s.Sq * s.Sk), 93));
    Embedded q = embed(c.q, kNaN), k = embed(c.k, kNaN), v = embed(c.v, kNaN);
    Embedded mask = embed(*c.mask, 1.0), bias = embed(*c.bias, kNaN);
    Embedded out = embed(c.out, kNaN), lse = embed(c.lse, kNaN);
    memattn::Options o = c.options;
    o.mask = &mask.view;
    o.bias = &bias.view;
    for (Algorithm alg : algorithms_for(dt)) {
      c.options.algorithm = o.algorithm = alg;
      SCOPED_TRACE(describe(c));
      c.run();
      memattn::forward(q.view, k.view, v.view, out.view, &lse.view, o);
      Buf got_out(dt, c.out.shape), got_lse(DType::f32, c.lse.shape);
      copy_from_view(out.view, got_out);
      copy_from_view(lse.view, got_lse);
      EXPECT_EQ(bitwise_difference(got_out, c.out), "");
      EXPECT_EQ(bitwise_difference(got_lse, c.lse), "");
      for (double x : got_out.values()) ASSERT_FALSE(std::isnan(x));
      for (const Embedded* e : {&out, &lse}) {
        const std::vector<double> all = e->storage.values();
        const auto nans = std::count_if(all.begin(), all.end(), [](double x) { return std::isnan(x); });
        EXPECT_EQ(nans, e->storage.numel() - e->view.numel()) << "the padding of an output was written";
      }
    }
  }
}
