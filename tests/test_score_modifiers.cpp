// Score modifiers (softcap, ALiBi, attention sinks) in the forward: every algorithm, target and
// tile family against Ref64 (support.cpp's naive_pass, which states their definition in fp64),
// decode shapes whose keys are split, fully masked rows under sinks, and thread-count determinism.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "api/validate.hpp"
#include "cpu/amx_tiles.hpp"
#include "memattn/targets.hpp"
#include "plan/plan.hpp"
#include "support.hpp"

using namespace mt;
using memattn::Align;
using memattn::Algorithm;

namespace {

// One combination of modifiers, applied to a Case of shape s.
struct Modifiers {
  const char* name;
  double softcap = 0;
  int alibi_dims = 0;  // 0: none; 1: [Hq]; 2: [B, Hq]
  bool sinks = false;
  bool bias = false;
};

const Modifiers kCombos[] = {
    {"softcap", 2.0},
    {"alibi[H]", 0, 1},
    {"alibi[B,H]", 0, 2},
    {"sinks", 0, 0, true},
    {"all+bias", 3.0, 2, true, true},
};

// ALiBi slopes as the paper's geometric sequence 2^(-8 (h+1) / H), varied per batch.
std::vector<double> slopes(const Shape& s, int dims) {
  std::vector<double> v;
  for (int64_t b = 0; b < (dims == 2 ? s.B : 1); ++b)
    for (int64_t h = 0; h < s.Hq; ++h) v.push_back(std::exp2(-8.0 * double(h + 1) / double(s.Hq)) * (1 + 0.25 * double(b)));
  return v;
}

void apply(Case& c, const Modifiers& m, uint64_t seed) {
  const Shape& s = c.s;
  c.options.softcap = m.softcap;
  if (m.alibi_dims == 1) c.set_alibi({s.Hq}, slopes(s, 1));
  if (m.alibi_dims == 2) c.set_alibi({s.B, s.Hq}, slopes(s, 2));
  if (m.sinks) c.set_sinks(randn_values(size_t(s.Hq), seed + 101, 0.5, 1.5));
  if (m.bias) c.set_bias({1, s.Hq, s.Sq, s.Sk}, DType::f32, randn_values(size_t(s.Hq * s.Sq * s.Sk), seed + 102));
}

// Masking and shape variants the modifiers must compose with.
struct Variant {
  const char* name;
  Shape s;
  std::function<void(memattn::Options&)> set;
};

std::vector<Variant> variants() {
  return {
      {"plain", {2, 37, 37, 2, 2, 16, 16}, [](memattn::Options&) {}},
      {"causal top_left", {1, 20, 45, 3, 3, 16, 12}, [](memattn::Options& o) { o.causal = true; }},
      {"causal bottom_right Sq>Sk", {1, 45, 20, 2, 2, 16, 16},
       [](memattn::Options& o) { o.causal = true, o.align = Align::bottom_right; }},
      {"window bottom_right", {1, 30, 50, 2, 2, 16, 16},
       [](memattn::Options& o) { o.align = Align::bottom_right, o.window_left = 7, o.window_right = 3; }},
      {"gqa", {2, 24, 40, 4, 2, 16, 16}, [](memattn::Options& o) { o.causal = true; }},
  };
}

// Runs c with the current options and checks out and lse against Ref64 (lse within f32 rounding
// of the row's scores).
void expect_out_and_lse(Case& c) {
  const RefProblem p = c.problem();
  const RefResult ref = reference64(p), base = baseline(p, c.dtype);
  c.out.fill(NAN);
  c.lse.fill(NAN);
  c.run();
  EXPECT_EQ(accuracy_failure(c.out_values(), ref.out, base.out, c.dtype), "") << describe(c);
  const std::vector<double> lse = c.lse.values();
  for (size_t i = 0; i < lse.size(); ++i) {
    if (std::isinf(ref.lse[i])) {
      EXPECT_EQ(lse[i], ref.lse[i]) << "lse[" << i << "] " << describe(c);
      continue;
    }
    // bf16/f16 scores carry their dtype's rounding, softcap's tanh and ALiBi a few f32 ulps.
    const double u = c.dtype == DType::f32 ? 0x1p-20 : unit_roundoff(c.dtype) * 4;
    EXPECT_NEAR(lse[i], ref.lse[i], u * (8 + std::fabs(ref.lse[i]) * 4)) << "lse[" << i << "] " << describe(c);
  }
}

}  // namespace

TEST(ScoreModifiers, ForwardEveryAlgorithmAndTargetAgainstRef64) {
  uint64_t seed = 1;
  for (DType dt : {DType::f32, DType::bf16, DType::f16, DType::f64})
    for (const Variant& var : variants())
      for (const Modifiers& m : kCombos) {
        Case c(var.s, dt, ++seed, 1.5);
        var.set(c.options);
        apply(c, m, seed);
        SCOPED_TRACE(std::string(var.name) + " " + m.name);
        expect_accurate_all(c);
      }
}

TEST(ScoreModifiers, LseHoldsTheSinkAndFullyMaskedRowsGiveTheSink) {
  // Sq > Sk bottom-right: the first 25 rows see no key; with sinks they give out 0, lse = sink.
  for (DType dt : {DType::f32, DType::bf16})
    for (Algorithm alg : {Algorithm::naive, Algorithm::sequential, Algorithm::chunked, Algorithm::flash}) {
      Case c({1, 45, 20, 2, 2, 16, 16}, dt, 5);
      c.options.causal = true, c.options.align = Align::bottom_right, c.options.algorithm = alg;
      apply(c, kCombos[4], 5);
      expect_out_and_lse(c);
      for (int64_t h = 0; h < 2; ++h) {
        EXPECT_EQ(c.lse.get(lse_offset(c.s, 0, h, 0)), float(c.sinks->get(h))) << describe(c);
        for (int64_t x = 0; x < 16; ++x) EXPECT_EQ(c.out.get(out_row_offset(c.s, 0, 0, h) + x), 0.0);
      }
    }
}

TEST(ScoreModifiers, SinkFarAboveEveryScore) {
  // exp(sink - max) overflows: the row's weight goes through logaddexp instead; out ~ e^-90.
  for (Algorithm alg : {Algorithm::naive, Algorithm::flash}) {
    Case c({1, 8, 8, 2, 2, 16, 16}, DType::f32, 6);
    c.options.algorithm = alg;
    c.set_sinks({100.0, 95.0});
    expect_out_and_lse(c);
  }
}

TEST(ScoreModifiers, BottomRightAlibiIsFlashAttentionsAlibi) {
  // FlashAttention adds -slope * |i + seq_k - seq_q - j| (its alibi_slopes with causal
  // bottom-right alignment): the same as an explicit bias of those values.
  const Shape s{1, 5, 12, 2, 2, 16, 16};
  Case with_alibi(s, DType::f32, 7), with_bias(s, DType::f32, 7);
  for (Case* c : {&with_alibi, &with_bias}) c->options.causal = true, c->options.align = Align::bottom_right;
  with_alibi.set_alibi({2}, {0.5, 0.125});
  std::vector<double> bias;
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t i = 0; i < 5; ++i)
      for (int64_t j = 0; j < 12; ++j) bias.push_back(-(h ? 0.125 : 0.5) * double(std::llabs(i + 12 - 5 - j)));
  with_bias.set_bias({1, 2, 5, 12}, DType::f32, bias);
  for (Algorithm alg : {Algorithm::naive, Algorithm::flash}) {
    with_alibi.options.algorithm = with_bias.options.algorithm = alg;
    with_alibi.run();
    with_bias.run();
    const auto a = with_alibi.out_values(), b = with_bias.out_values();
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-6) << i;
  }
}

TEST(ScoreModifiers, DecodeSplitsAndGroupedHeads) {
  // Sk = 5000: the decode items split the keys (checked below), the GQA group's heads share one
  // item, and the sinks join the merge of the splits.
  uint64_t seed = 40;
  for (DType dt : {DType::f32, DType::bf16, DType::f16})
    for (int64_t sq : {1, 2, 4})
      for (const Modifiers& m : kCombos) {
        const Shape s{2, sq, 5000, 8, 2, 32, 32};
        Case c(s, dt, ++seed, 1.5);
        c.options.causal = sq > 1, c.options.align = Align::bottom_right;
        apply(c, m, seed);
        SCOPED_TRACE(describe(c));
        expect_out_and_lse(c);
      }
  const Tensor q = Tensor::contiguous(nullptr, DType::f32, {2, 0, 8, 32});
  const Tensor kv = Tensor::contiguous(nullptr, DType::f32, {2, 0, 2, 32});
  memattn::detail::Params p = memattn::detail::make_forward_params(q, kv, kv, nullptr, nullptr, {});
  p.seq_q = 4, p.seq_k = 5000;
  memattn::detail::plan_forward(p, {});
  EXPECT_TRUE(p.grouped);
  EXPECT_GT(p.splits, 1);
}

TEST(ScoreModifiers, EveryBf16TileFamily) {
  std::vector<std::string> families = {"f32_fma", "amx_bf16_emulated"};
  const std::vector<std::string> targets = memattn::supported_targets();
  if (targets.front() == "avx512_bf16") families.push_back("bf16_dot");
  if (memattn::detail::amx_bf16_usable()) families.push_back("amx_bf16");
  uint64_t seed = 60;
  for (const std::string& family : families) {
    const ScopedEnv env("MEMATTN_FAMILY", family.c_str());
    for (const Shape& s : {Shape{1, 40, 70, 4, 2, 32, 32}, Shape{2, 3, 4500, 4, 2, 32, 32}})
      for (const Modifiers& m : kCombos) {
        Case c(s, DType::bf16, ++seed, 1.5);
        c.options.algorithm = Algorithm::flash;
        c.options.causal = true;
        apply(c, m, seed);
        ASSERT_STREQ(memattn::tile_family(DType::bf16, c.options), family.c_str());
        SCOPED_TRACE(family + " " + describe(c));
        expect_out_and_lse(c);
      }
  }
}

TEST(ScoreModifiers, ForwardBitwiseSameForAnyThreadCount) {
  for (const Shape& s : {Shape{2, 64, 300, 4, 2, 32, 32}, Shape{2, 4, 9000, 8, 2, 32, 32}})
    for (DType dt : {DType::f32, DType::bf16}) {
      Case one(s, dt, 70, 1.5);
      apply(one, kCombos[4], 70);
      one.options.causal = true;
      one.options.num_threads = 1;
      one.run();
      for (int threads : {2, 3}) {
        Case many(s, dt, 70, 1.5);
        apply(many, kCombos[4], 70);
        many.options.causal = true;
        many.options.num_threads = threads;
        many.run();
        EXPECT_EQ(bitwise_difference(many.out, one.out), "") << threads << " threads, " << describe(many);
        EXPECT_EQ(bitwise_difference(many.lse, one.lse), "") << threads << " threads, " << describe(many);
      }
    }
}
