// Score modifiers in the backward: the fp64 definition's analytic gradients (support_backward.cpp)
// and the library's f64 naive backward against finite differences, dsinks included; naive and
// flash on f32, bf16 and f16 against Ref64 on every backward family; determinism across threads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "memattn/targets.hpp"
#include "support_backward.hpp"

using namespace mt;
using memattn::Align;
using memattn::Algorithm;

namespace {

// softcap / ALiBi ([Hq] or [B, Hq]) / sinks / bias, each optional.
struct Mods {
  const char* name;
  double softcap = 0;
  int alibi_dims = 0;
  bool sinks = false;
  bool bias = false;
};

const Mods kMods[] = {
    {"softcap", 1.5},
    {"alibi", 0, 2},
    {"sinks", 0, 0, true},
    {"all+bias", 2.0, 1, true, true},
};

void apply(BackwardCase& c, const Mods& m, uint64_t seed) {
  const Shape& s = c.s;
  c.options.softcap = m.softcap;
  std::vector<double> slopes;
  for (int64_t x = 0; x < (m.alibi_dims == 2 ? s.B : 1) * s.Hq; ++x) slopes.push_back(0.3 / double(x + 1));
  if (m.alibi_dims == 1) c.set_alibi({s.Hq}, slopes);
  if (m.alibi_dims == 2) c.set_alibi({s.B, s.Hq}, slopes);
  if (m.sinks) {
    c.set_sinks(randn_values(size_t(s.Hq), seed + 11, 0.5, 1.0));
    c.request_dsinks();
  }
  if (m.bias) {
    c.set_bias({1, s.Hq, s.Sq, s.Sk}, DType::f32, randn_values(size_t(s.Hq * s.Sq * s.Sk), seed + 12));
    c.request_dbias();
  }
}

// max |a - b| relative to max |b|.
double relative_error(const std::vector<double>& a, const std::vector<double>& b) {
  double err = 0, scale = 1e-300;
  for (size_t i = 0; i < a.size(); ++i) err = std::max(err, std::fabs(a[i] - b[i])), scale = std::max(scale, std::fabs(b[i]));
  return err / scale;
}

}  // namespace

TEST(ScoreModifiersBackward, DefinitionAndF64NaiveMatchFiniteDifferences) {
  // The analytic fp64 gradients of the test's definition, and the library's f64 naive backward,
  // against central differences of the definition's forward (h = 1e-5: error ~1e-9 relative).
  uint64_t seed = 1;
  for (bool causal : {false, true})
    for (const Mods& m : kMods) {
      BackwardCase c({2, 5, 7, 2, 1, 4, 3}, DType::f64, ++seed, 1.5);
      c.options.algorithm = Algorithm::naive;
      c.options.causal = causal, c.options.align = Align::bottom_right;
      apply(c, m, seed);
      SCOPED_TRACE(std::string(m.name) + (causal ? " causal" : ""));
      c.run_both();
      const RefProblem p = c.problem();
      const std::vector<double> dout = c.dout.values();
      const RefGrads fd = finite_difference_grads(p, dout, 1e-5);
      const RefGrads ref = reference_backward64(p, dout);
      const RefGrads got = c.grads();
      const struct {
        const char* name;
        const std::vector<double> &fd, &ref, &got;
      } grads[] = {{"dq", fd.dq, ref.dq, got.dq}, {"dk", fd.dk, ref.dk, got.dk}, {"dv", fd.dv, ref.dv, got.dv},
                   {"dbias", fd.dbias, ref.dbias, got.dbias}, {"dsinks", fd.dsinks, ref.dsinks, got.dsinks}};
      for (const auto& g : grads) {
        ASSERT_EQ(g.fd.size(), g.got.size()) << g.name;
        EXPECT_LT(relative_error(g.ref, g.fd), 1e-7) << g.name << " (definition)";
        // dsinks is stored as f32.
        EXPECT_LT(relative_error(g.got, g.fd), std::string(g.name) == "dsinks" ? 1e-6 : 1e-7) << g.name;
      }
      EXPECT_FALSE(got.dsinks.empty() && m.sinks);
    }
}

TEST(ScoreModifiersBackward, NaiveAndFlashAgainstRef64) {
  uint64_t seed = 20;
  const Shape shapes[] = {{1, 33, 47, 4, 2, 16, 16}, {2, 40, 24, 2, 2, 32, 32}};
  for (DType dt : {DType::f32, DType::bf16, DType::f16})
    for (Algorithm alg : {Algorithm::naive, Algorithm::flash})
      for (const Shape& s : shapes)
        for (Align align : {Align::top_left, Align::bottom_right})
          for (const Mods& m : kMods) {
            BackwardCase c(s, dt, ++seed, 1.5);
            c.options.algorithm = alg;
            c.options.causal = true, c.options.align = align;
            apply(c, m, seed);
            SCOPED_TRACE(std::string(m.name) + " " + describe(c));
            expect_backward_accurate(c);
          }
}

TEST(ScoreModifiersBackward, WindowAndSmallChunks) {
  // Several key and query chunks per item, so the modifiers meet chunk boundaries, boundary masks
  // and the steady state.
  uint64_t seed = 50;
  for (DType dt : {DType::f32, DType::bf16})
    for (const Mods& m : kMods) {
      BackwardCase c({1, 70, 90, 2, 1, 16, 16}, dt, ++seed, 1.5);
      c.options.algorithm = Algorithm::flash;
      c.options.window_left = 20, c.options.window_right = 5;
      c.options.query_chunk = 16, c.options.key_chunk = 16;
      apply(c, m, seed);
      SCOPED_TRACE(describe(c));
      expect_backward_accurate(c);
    }
}

TEST(ScoreModifiersBackward, EveryBf16BackwardFamily) {
  // bf16 backward families: head dims that are multiples of 32 let MEMATTN_FAMILY force AMX.
  std::vector<std::string> families = {"f32_fma", "amx_bf16_emulated"};
  if (memattn::supported_targets().front() == "avx512_bf16") families.push_back("bf16_dot");
  uint64_t seed = 70;
  for (const std::string& family : families) {
    const ScopedEnv env("MEMATTN_FAMILY", family.c_str());
    for (const Mods& m : kMods) {
      BackwardCase c({1, 40, 56, 2, 1, 32, 32}, DType::bf16, ++seed, 1.5);
      c.options.algorithm = Algorithm::flash;
      c.options.causal = true;
      apply(c, m, seed);
      ASSERT_STREQ(memattn::backward_tile_family(c.q.view(), c.k.view(), c.v.view(), c.options), family.c_str());
      SCOPED_TRACE(family + " " + describe(c));
      expect_backward_accurate(c);
    }
  }
}

TEST(ScoreModifiersBackward, CoarseLseRowsKeepTheSink) {
  // Large scores (|lse| > 16) make the flash backward correct its f32 lse from a sweep of the
  // keys; that sweep must count the sink too, or P would lose the sink's share.
  // Each head's sink is set to its median lse without sinks, so that the sink takes about half of
  // the rows' weight.
  BackwardCase c({1, 20, 30, 2, 2, 16, 16}, DType::f32, 90, 3.0);
  c.options.algorithm = Algorithm::flash;
  c.run();
  std::vector<double> sinks;
  for (int64_t h = 0; h < 2; ++h) {
    std::vector<double> row_lse;
    for (int64_t i = 0; i < 20; ++i) row_lse.push_back(c.lse.get(lse_offset(c.s, 0, h, i)));
    std::nth_element(row_lse.begin(), row_lse.begin() + 10, row_lse.end());
    sinks.push_back(row_lse[10]);
    EXPECT_GT(row_lse[10], 16.0) << "the case must have coarse lse rows";
  }
  c.set_sinks(sinks);
  c.request_dsinks();
  expect_backward_accurate(c);
}

TEST(ScoreModifiersBackward, BitwiseSameForAnyThreadCount) {
  for (Algorithm alg : {Algorithm::naive, Algorithm::flash})
    for (DType dt : {DType::f32, DType::bf16}) {
      BackwardCase c({3, 40, 60, 4, 2, 16, 16}, dt, 100, 1.5);
      c.options.algorithm = alg;
      c.options.causal = true;
      apply(c, kMods[3], 100);
      expect_same_bits_any_thread_count(c, {2, 3}, describe(c) + " ");
      const Buf want = *c.dsinks;
      for (int t : {2, 3}) {
        c.options.num_threads = t;
        c.run_both();
        EXPECT_EQ(bitwise_difference(*c.dsinks, want), "") << t << " threads " << describe(c);
      }
    }
}
