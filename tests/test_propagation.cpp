// NaN and Inf of TESTPLAN section B: propagation from q, K and V and confinement by masks (26),
// infinite values at subnormal softmax weights (26, forward and backward), and NaN-filled padding
// around every operand that must never be read nor written (27).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <iterator>
#include <string>

#include "cpu/amx_tiles.hpp"
#include "support_backward.hpp"

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

namespace {

// Gaps below the row maximum whose weight e^gap is a normal f32 (-87) or a subnormal one (the
// rest, down to 2^-148.6, still at least the smallest subnormal 2^-149). An infinite V there
// gives an infinite output in IEEE arithmetic and Ref64.
const double kTinyWeightGaps[] = {-87, -87.5, -90, -95, -100, -103};
constexpr int64_t kGaps = int64_t(std::size(kTinyWeightGaps));
// Below 2^-126 (gap ln 2^-126 ~ -87.34) an f32 weight is subnormal, and so is its bf16 rounding.
const double kSubnormalGap = std::log(std::ldexp(1.0, -126));

double tiny_weight_gap(int64_t row) { return kTinyWeightGaps[row % kGaps]; }
// Rows of even blocks of kGaps put the gap on the first half of the keys: the chunks there meet
// the infinite value at weight 1 and later chunks rescale it by e^gap (flash's alpha, chunked's
// chunk factor, decode's merge weight). Rows of odd blocks put it on the last key alone: the
// probability e^gap meets the infinite value.
bool gap_on_first_half(int64_t row) { return row / kGaps % 2 == 0; }

// Bias rows (Sk keys each) putting row r's gap tiny_weight_gap(r) on keys [0, Sk/2) or on key
// Sk - 1 (gap_on_first_half), 0 on one key (Sk/2, or Sk - 2: in the chunk or split of key Sk - 1)
// and -30 on the rest. The row sum is about 1, so the probability there is e^gap normalised too
// (the backward's exp(s - lse)), never below the smallest f32 subnormal.
std::vector<double> tiny_weight_bias(int64_t rows, int64_t sk) {
  std::vector<double> bias(size_t(rows * sk), -30.0);
  for (int64_t r = 0; r < rows; ++r) {
    const bool first_half = gap_on_first_half(r);
    const int64_t first = first_half ? 0 : sk - 1, last = first_half ? sk / 2 : sk;
    std::fill(bias.begin() + r * sk + first, bias.begin() + r * sk + last, tiny_weight_gap(r));
    bias[size_t(r * sk + (first_half ? sk / 2 : sk - 2))] = 0.0;
  }
  return bias;
}

// V[:, 0, g, 1] = +inf and V[:, Sk - 1, g, 2] = -inf for every kv head g; q tiny (scores about
// 1e-3) and a [1, 1, Sq, Sk] f32 bias give row i weight e^tiny_weight_gap(i) on one of the two
// (the other has weight e^-30). Ref64 has +inf in column 1 and -inf in column 2 of every row.
void put_inf_at_tiny_weights(Case& c) {
  const Shape& s = c.s;
  fill_randn(c.q, 401, 1e-3);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t g = 0; g < s.Hkv; ++g) {
      c.v.set(kv_index(s, b, 0, g, 1, s.Dv), kInf);
      c.v.set(kv_index(s, b, s.Sk - 1, g, 2, s.Dv), -kInf);
    }
  c.set_bias({1, 1, s.Sq, s.Sk}, DType::f32, tiny_weight_bias(s.Sq, s.Sk));
}

// Calls fn with the dense items' case (query chunks of 4, key chunks of 8) and the decode items'
// (12 queries, 5000 keys in three splits merged by weight); 2 * kGaps rows: each gap on both paths.
void for_each_tiny_weight_case(DType dt, const std::function<void(Case&)>& fn) {
  Case dense(Shape{2, 2 * kGaps, 24, 2, 1, 16, 16}, dt, 402);
  dense.options.query_chunk = 4;
  dense.options.key_chunk = 8;
  Case decode(Shape{1, 2 * kGaps, 5000, 4, 2, 16, 16}, dt, 403);
  for (Case* c : {&dense, &decode}) {
    put_inf_at_tiny_weights(*c);
    fn(*c);
  }
}

}  // namespace

// TESTPLAN 26, Inf in an unmasked V at a key of tiny but nonzero weight (e^-87 .. e^-103, normal
// to deep subnormal in f32): the output is that Inf, as in IEEE arithmetic and Ref64, never NaN,
// on every algorithm, SIMD target and path (dense and decode items, rescale and probability).
// f32 and f16 inputs run the f32 products; bf16 inputs too when MEMATTN_FAMILY=f32_fma.
TEST(Propagation, num_inf_in_v_at_subnormal_weight) {
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    ScopedEnv family("MEMATTN_FAMILY", dt == DType::bf16 ? "f32_fma" : nullptr);
    for_each_tiny_weight_case(dt, [](Case& c) {
      SCOPED_TRACE(describe(c));
      const RefResult ref = reference64(c.problem());
      for_each_row(c.s, [&](int64_t b, int64_t i, int64_t h) {
        const int64_t o = out_row_offset(c.s, b, i, h);
        ASSERT_EQ(ref.out[size_t(o + 1)], kInf);  // the premise: Ref64 is infinite there
        ASSERT_EQ(ref.out[size_t(o + 2)], -kInf);
      });
      expect_accurate_all(c);  // NaN parity and infinities exactly where Ref64 has them
    });
  }
}

// The bf16 tile families (bf16_dot, amx_bf16 and its emulation) round P to bf16 and multiply it
// by V with vdpbf16ps / tdpbf16ps, which treat a subnormal bf16 operand as 0: an infinite V at a
// probability below 2^-126 gives 0 * inf = NaN there (documented in docs/api.md, Subnormals). A
// tiny weight applied in f32 (the rescale of earlier chunks, decode's merge weights) keeps the
// Inf, and so does every normal probability; every other element is finite.
TEST(Propagation, num_inf_in_v_at_subnormal_weight_bf16_families) {
  std::vector<std::pair<std::string, const char*>> runs = {{"amx_bf16_emulated", nullptr}};
  const std::vector<std::string> targets = memattn::supported_targets();
  if (std::find(targets.begin(), targets.end(), "avx512_bf16") != targets.end())
    runs.emplace_back("bf16_dot", "avx512_bf16");
  if (memattn::detail::amx_bf16_usable()) runs.emplace_back("amx_bf16", nullptr);
  for (const auto& run : runs) {
    const std::string& family = run.first;  // names the lambdas below can capture (not bindings)
    const char* const target = run.second;
    ScopedEnv force("MEMATTN_FAMILY", family.c_str());
    for_each_tiny_weight_case(DType::bf16, [&](Case& c) {
      c.options.algorithm = Algorithm::flash;
      c.options.target = target;
      SCOPED_TRACE(family + ": " + describe(c));
      ASSERT_EQ(memattn::tile_family(DType::bf16, c.options), family);
      c.run();
      for_each_row(c.s, [&](int64_t b, int64_t i, int64_t h) {
        const int64_t o = out_row_offset(c.s, b, i, h);
        const bool flushed = !gap_on_first_half(i) && tiny_weight_gap(i) < kSubnormalGap;
        for (int64_t col = 0; col < c.s.Dv; ++col) {
          const double x = c.out.get(o + col);
          const std::string at = "row " + std::to_string(i) + " col " + std::to_string(col);
          if (col == 1) EXPECT_EQ(x, kInf) << at;
          else if (col == 2 && flushed) EXPECT_TRUE(std::isnan(x)) << at << " = " << x;
          else if (col == 2) EXPECT_EQ(x, -kInf) << at;
          else EXPECT_TRUE(std::isfinite(x)) << at << " = " << x;
        }
      });
    });
  }
}

// The backward of the same: one query per batch element b (2 kGaps of them), one +inf in V at
// the key of weight e^tiny_weight_gap(b), q tiny. Ref64 then has dq NaN, dk NaN at that key and
// +-inf at every other (P_j (dP_j - D) with D = +-inf), dv finite. A weight flushed to 0 turns
// the forward's out into NaN, or the backward's own P_j into 0 (0 * inf): NaN where Ref64 has
// +-inf. Naive and flash, flash on every SIMD target.
TEST(BackwardPropagation, num_inf_in_v_at_subnormal_weight) {
  const int64_t batch = 2 * kGaps, sk = 24;
  BackwardCase c(Shape{batch, 1, sk, 1, 1, 16, 16}, DType::f32, 404);
  fill_randn(c.q, 405, 1e-3);
  for (int64_t b = 0; b < batch; ++b)
    c.v.set(kv_index(c.s, b, gap_on_first_half(b) ? 0 : sk - 1, 0, 1, 16), kInf);
  c.set_bias({batch, 1, 1, sk}, DType::f32, tiny_weight_bias(batch, sk));
  c.options.key_chunk = 8;
  const RefGrads ref = reference_backward64(c.problem(), c.dout.values());
  for (int64_t b = 0; b < batch; ++b)  // the premise: +-inf in dk of every batch element
    ASSERT_TRUE(std::any_of(ref.dk.begin() + b * sk * 16, ref.dk.begin() + (b + 1) * sk * 16,
                            [](double x) { return std::isinf(x); }));
  for (double x : ref.dv) ASSERT_TRUE(std::isfinite(x));
  const std::vector<std::string> targets = memattn::supported_targets();
  std::vector<std::pair<Algorithm, const char*>> runs = {{Algorithm::naive, nullptr}};
  for (const std::string& t : targets) runs.emplace_back(Algorithm::flash, t.c_str());
  for (const auto& [alg, target] : runs) {
    c.options.algorithm = alg;
    c.options.target = target;
    SCOPED_TRACE(describe(c));
    expect_backward_accurate(c, GradCheck{.expect_zeros = true});  // NaN and inf exactly as Ref64
  }
}
