// memattn::tile_family: the family each dtype, algorithm, target and MEMATTN_FAMILY resolve to,
// checked against what forward() computes (the reported family's forced run is bitwise the
// default run, the other families' are not), and MEMATTN_FAMILY's errors from every entry point.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cpu/amx_tiles.hpp"
#include "memattn/memattn.hpp"
#include "support.hpp"

using memattn::Algorithm;
using memattn::DType;
using memattn::ErrorCode;
using memattn::Options;

using mt::ScopedEnv;

namespace {

// Every test starts from a plain environment: the library's own choice of target and family.
class TileFamilyQuery : public ::testing::Test {
 protected:
  ScopedEnv no_family_{"MEMATTN_FAMILY", nullptr}, no_target_{"MEMATTN_TARGET", nullptr};
};

using Failure = std::pair<ErrorCode, std::string>;
// The code and message of the memattn::Error `call` throws; nullopt when it returns.
std::optional<Failure> failure_of(const std::function<void()>& call) {
  try {
    call();
  } catch (const memattn::Error& e) {
    return Failure{e.code(), e.what()};
  }
  return std::nullopt;
}

Options with_target(const std::string& target, Algorithm algorithm = Algorithm::automatic) {
  Options o;
  o.target = target.empty() ? nullptr : target.c_str();
  o.algorithm = algorithm;
  return o;
}

bool has_target(const std::string& name) {
  const std::vector<std::string> all = memattn::supported_targets();
  return std::find(all.begin(), all.end(), name) != all.end();
}

// "" (the library's choice) and every target this CPU runs.
std::vector<std::string> every_target() {
  std::vector<std::string> all = memattn::supported_targets();
  all.insert(all.begin(), "");
  return all;
}

// What a bf16 flash call should run on `target` ("" = the best), from what the CPU offers rather
// than from the planner: AMX wherever it is usable, else the target's bf16 dot product, else f32.
std::string expected_bf16_family(const std::string& target) {
  if (memattn::detail::amx_bf16_usable()) return "amx_bf16";
  const std::string t = target.empty() ? memattn::supported_targets().front() : target;
  return t == "avx512_bf16" ? "bf16_dot" : "f32_fma";
}

// Families that can run bf16 on `target` here, as MEMATTN_FAMILY names them.
std::vector<std::string> bf16_families(const std::string& target) {
  std::vector<std::string> f = {"f32_fma", "amx_bf16_emulated"};
  if ((target.empty() ? memattn::supported_targets().front() : target) == "avx512_bf16")
    f.push_back("bf16_dot");
  if (memattn::detail::amx_bf16_usable()) f.push_back("amx_bf16");
  return f;
}

TEST_F(TileFamilyQuery, F32AndF16RunTheF32Gemm) {
  for (const std::string& t : every_target())
    for (DType dt : {DType::f32, DType::f16}) {
      EXPECT_STREQ(memattn::tile_family(dt, with_target(t)), "f32_fma") << t << " " << memattn::dtype_name(dt);
      EXPECT_STREQ(memattn::tile_family(dt, with_target(t, Algorithm::flash)), "f32_fma") << t;
    }
  EXPECT_STREQ(memattn::tile_family(DType::f32), "f32_fma");  // default options
}

TEST_F(TileFamilyQuery, Bf16OnTheBf16DotTarget) {
  if (!has_target("avx512_bf16")) GTEST_SKIP() << "this CPU has no AVX-512 BF16 (no avx512_bf16 target)";
  // AMX, where usable, is preferred to the dot product whatever the target.
  const char* want = memattn::detail::amx_bf16_usable() ? "amx_bf16" : "bf16_dot";
  EXPECT_STREQ(memattn::tile_family(DType::bf16, with_target("avx512_bf16")), want);
  EXPECT_STREQ(memattn::tile_family(DType::bf16, with_target("avx512_bf16", Algorithm::flash)), want);
  EXPECT_EQ(memattn::tile_family(DType::bf16), expected_bf16_family(""));
}

TEST_F(TileFamilyQuery, Bf16OnTargetsWithoutTheDotProduct) {
  const char* want = memattn::detail::amx_bf16_usable() ? "amx_bf16" : "f32_fma";
  size_t checked = 0;
  for (const std::string& t : memattn::supported_targets())
    if (t != "avx512_bf16") {
      EXPECT_STREQ(memattn::tile_family(DType::bf16, with_target(t)), want) << t;
      ++checked;
    }
  EXPECT_GT(checked, 0u);  // every CPU runs some target without vdpbf16ps (scalar at least)
  for (const std::string& t : every_target())
    EXPECT_EQ(memattn::tile_family(DType::bf16, with_target(t)), expected_bf16_family(t)) << t;
}

TEST_F(TileFamilyQuery, ReferenceAlgorithmsRunNone) {
  for (Algorithm a : {Algorithm::naive, Algorithm::sequential, Algorithm::chunked})
    for (DType dt : {DType::f32, DType::bf16, DType::f16, DType::f64})
      EXPECT_STREQ(memattn::tile_family(dt, with_target("", a)), "none")
          << memattn::algorithm_name(a) << " " << memattn::dtype_name(dt);
  EXPECT_STREQ(memattn::tile_family(DType::f64), "none");  // automatic is chunked for f64
  // MEMATTN_FAMILY is read by flash calls only, as forward() does.
  ScopedEnv bogus("MEMATTN_FAMILY", "bogus");
  EXPECT_STREQ(memattn::tile_family(DType::f32, with_target("", Algorithm::naive)), "none");
}

TEST_F(TileFamilyQuery, ForcedFamilies) {
  {
    ScopedEnv env("MEMATTN_FAMILY", "amx_bf16_emulated");
    for (const std::string& t : every_target())
      EXPECT_STREQ(memattn::tile_family(DType::bf16, with_target(t)), "amx_bf16_emulated") << t;
    for (DType dt : {DType::f32, DType::f16}) {
      const auto f = failure_of([dt] { memattn::tile_family(dt); });
      ASSERT_TRUE(f) << memattn::dtype_name(dt);
      EXPECT_EQ(f->first, ErrorCode::unsupported);
      EXPECT_NE(f->second.find(std::string("MEMATTN_FAMILY: amx_bf16_emulated cannot run this call (dtype ") +
                               memattn::dtype_name(dt)),
                std::string::npos)
          << f->second;
    }
  }
  {
    ScopedEnv env("MEMATTN_FAMILY", "f32_fma");
    for (const std::string& t : every_target())
      EXPECT_STREQ(memattn::tile_family(DType::bf16, with_target(t)), "f32_fma") << t;
  }
  {
    ScopedEnv env("MEMATTN_FAMILY", "bf16_dot");
    for (const std::string& t : every_target()) {
      const std::vector<std::string> runs = bf16_families(t);
      const auto f = failure_of([&t] { memattn::tile_family(DType::bf16, with_target(t)); });
      if (std::find(runs.begin(), runs.end(), "bf16_dot") != runs.end()) {
        EXPECT_FALSE(f) << t << ": " << f->second;
        EXPECT_STREQ(memattn::tile_family(DType::bf16, with_target(t)), "bf16_dot") << t;
      } else {
        ASSERT_TRUE(f) << t;
        EXPECT_EQ(f->first, ErrorCode::unsupported) << t;
        EXPECT_NE(f->second.find("MEMATTN_FAMILY: bf16_dot cannot run this call (dtype bf16, target "),
                  std::string::npos) << f->second;
      }
    }
  }
  {
    ScopedEnv env("MEMATTN_FAMILY", "amx_bf16");
    const auto f = failure_of([] { memattn::tile_family(DType::bf16); });
    if (memattn::detail::amx_bf16_usable()) {
      EXPECT_FALSE(f) << f->second;
      EXPECT_STREQ(memattn::tile_family(DType::bf16), "amx_bf16");
    } else {
      ASSERT_TRUE(f);
      EXPECT_EQ(f->first, ErrorCode::unsupported);
    }
  }
  {
    ScopedEnv env("MEMATTN_FAMILY", "");  // empty: as if unset
    EXPECT_STREQ(memattn::tile_family(DType::f32), "f32_fma");
    EXPECT_EQ(memattn::tile_family(DType::bf16), expected_bf16_family(""));
  }
}

TEST_F(TileFamilyQuery, UnknownFamilyNamesTheChoices) {
  for (const char* value : {"bogus", "AMX_BF16", "amx"}) {
    ScopedEnv env("MEMATTN_FAMILY", value);
    for (DType dt : {DType::f32, DType::bf16}) {
      const auto f = failure_of([dt] { memattn::tile_family(dt); });
      ASSERT_TRUE(f) << value;
      EXPECT_EQ(f->first, ErrorCode::invalid_argument);
      EXPECT_EQ(f->second, std::string("MEMATTN_FAMILY: expected f32_fma, bf16_dot, amx_bf16 or "
                                       "amx_bf16_emulated, got ") + value);
    }
  }
}

TEST_F(TileFamilyQuery, OtherErrorsAreACallsErrors) {
  const auto expect_failure = [](const std::function<void()>& call, ErrorCode code, const std::string& part) {
    const auto f = failure_of(call);
    ASSERT_TRUE(f) << part;
    EXPECT_EQ(f->first, code) << f->second;
    EXPECT_NE(f->second.find(part), std::string::npos) << f->second;
  };
  expect_failure([] { memattn::tile_family(DType::f32, with_target("nope")); }, ErrorCode::invalid_argument,
                 "target: 'nope' is not a SIMD target this build runs on this CPU; expected one of ");
  {
    ScopedEnv env("MEMATTN_TARGET", "nope");
    expect_failure([] { memattn::tile_family(DType::bf16); }, ErrorCode::invalid_argument,
                   "MEMATTN_TARGET: 'nope' is not a SIMD target");
  }
  expect_failure([] { memattn::tile_family(DType::f64, with_target("", Algorithm::flash)); },
                 ErrorCode::unsupported, "algorithm: flash takes f32, bf16 or f16 inputs, got f64");
  expect_failure([] { memattn::tile_family(DType::u8); }, ErrorCode::wrong_dtype,
                 "dtype: expected one of f32, bf16, f16, f64, got u8");
  expect_failure([] { memattn::tile_family(DType(42)); }, ErrorCode::invalid_argument,
                 "dtype: expected one of f32, bf16, f16, f64, got 42");
  Options bad;
  bad.num_threads = -1;
  expect_failure([&bad] { memattn::tile_family(DType::f32, bad); }, ErrorCode::invalid_argument,
                 "num_threads must be 0 (all) or > 0, got -1");
  bad = Options{};
  bad.algorithm = Algorithm(42);
  expect_failure([&bad] { memattn::tile_family(DType::f32, bad); }, ErrorCode::invalid_argument,
                 "options.algorithm: expected one of automatic");
  // A mask or bias of any shape is not read: it does not change the family.
  mt::Buf mask(DType::u8, {3, 5, 7, 9});
  memattn::Tensor mask_view = mask.view();
  Options masked;
  masked.mask = masked.bias = &mask_view;
  EXPECT_STREQ(memattn::tile_family(DType::f32, masked), "f32_fma");
}

// forward() and workspace_bytes() fail on a bad MEMATTN_FAMILY exactly as tile_family() does,
// before anything is written.
TEST_F(TileFamilyQuery, ForwardRaisesTheFamilyErrors) {
  struct Bad {
    const char* family;
    DType dtype;
    std::string target;
    ErrorCode code;
  };
  std::vector<Bad> cases = {{"bogus", DType::f32, "", ErrorCode::invalid_argument},
                            {"bogus", DType::bf16, "", ErrorCode::invalid_argument},
                            {"amx_bf16_emulated", DType::f32, "", ErrorCode::unsupported},
                            {"amx_bf16_emulated", DType::f16, "", ErrorCode::unsupported},
                            {"bf16_dot", DType::f32, "", ErrorCode::unsupported},
                            // the last target is the most basic one (scalar or emu128): no vdpbf16ps
                            {"bf16_dot", DType::bf16, memattn::supported_targets().back(), ErrorCode::unsupported}};
  if (!memattn::detail::amx_bf16_usable()) cases.push_back({"amx_bf16", DType::bf16, "", ErrorCode::unsupported});
  for (const Bad& b : cases) {
    SCOPED_TRACE(std::string(b.family) + " " + memattn::dtype_name(b.dtype) + " target '" + b.target + "'");
    mt::Case c({1, 9, 11, 2, 1, 16, 16}, b.dtype, 3);
    c.options = with_target(b.target, Algorithm::flash);
    c.out.fill(7.0);
    c.lse.fill(7.0);
    ScopedEnv env("MEMATTN_FAMILY", b.family);
    const auto planned = failure_of([&] { memattn::tile_family(b.dtype, c.options); });
    const auto ran = failure_of([&] { c.run(); });
    const auto sized = failure_of([&] { memattn::workspace_bytes(c.q.view(), c.k.view(), c.v.view(), c.options); });
    ASSERT_TRUE(ran);
    EXPECT_EQ(ran->first, b.code) << ran->second;
    EXPECT_NE(ran->second.find("MEMATTN_FAMILY: "), std::string::npos) << ran->second;
    EXPECT_EQ(planned, ran);
    EXPECT_EQ(sized, ran);
    for (double x : c.out.values()) ASSERT_EQ(x, 7.0) << "out was written by a failing call";
    for (double x : c.lse.values()) ASSERT_EQ(x, 7.0) << "lse was written by a failing call";
  }
}

// Out and lse of one call, kept to compare bitwise.
struct Result {
  mt::Buf out, lse;
  bool same_bits(const Result& r) const {
    return mt::bitwise_difference(out, r.out).empty() && mt::bitwise_difference(lse, r.lse).empty();
  }
};

// The family tile_family() reports is the one forward() runs: on every target, the default call is
// bitwise the call forced (MEMATTN_FAMILY) onto the reported family and bitwise different from
// the calls forced onto each other family (whose products round differently), and every family
// is accurate. The emulated AMX family counts its instructions, so its run is seen to happen.
TEST_F(TileFamilyQuery, ReportedFamilyIsTheOneThatRuns) {
  mt::Case c({1, 40, 150, 2, 1, 64, 48}, DType::bf16, 11);
  const mt::RefProblem problem = c.problem();
  const mt::RefResult ref = mt::reference64(problem), base = mt::baseline(problem, DType::bf16);
  const auto run = [&c] {
    c.out.fill(std::numeric_limits<double>::quiet_NaN());
    c.run();
    return Result{c.out, c.lse};
  };
  for (const std::string& t : every_target()) {
    SCOPED_TRACE("target '" + t + "'");
    c.options = with_target(t);
    const std::string reported = memattn::tile_family(DType::bf16, c.options);
    EXPECT_EQ(reported, expected_bf16_family(t));
    const Result plain = run();
    std::map<std::string, Result> forced;
    for (const std::string& family : bf16_families(t)) {
      SCOPED_TRACE("MEMATTN_FAMILY=" + family);
      ScopedEnv env("MEMATTN_FAMILY", family.c_str());
      ASSERT_EQ(memattn::tile_family(DType::bf16, c.options), family);
      const uint64_t emulated_before = memattn::detail::AmxEmulated::executed();
      forced.emplace(family, run());
      if (family == "amx_bf16_emulated") EXPECT_GT(memattn::detail::AmxEmulated::executed(), emulated_before);
      const std::vector<double> got = forced.at(family).out.values();
      EXPECT_EQ(mt::accuracy_failure(got, ref.out, base.out, DType::bf16), "");
      EXPECT_EQ(mt::conditioning_failure(got, problem, ref, DType::bf16), "");
    }
    ASSERT_EQ(forced.count(reported), 1u);
    EXPECT_TRUE(forced.at(reported).same_bits(plain)) << "the default call did not run " << reported;
    for (const auto& [family, result] : forced) {
      // The emulation reproduces the AMX instructions bit for bit: the two are one family's results.
      const bool amx_twins = reported.rfind("amx_bf16", 0) == 0 && family.rfind("amx_bf16", 0) == 0;
      if (family != reported && !amx_twins)
        EXPECT_FALSE(result.same_bits(plain)) << family << " gives the default call's bits, yet "
                                              << reported << " was reported";
    }
  }
}

// f32 and f16 calls run the f32 GEMM on every target: bitwise the call forced onto f32_fma.
TEST_F(TileFamilyQuery, F32CallsAreTheForcedF32Gemm) {
  for (DType dt : {DType::f32, DType::f16}) {
    mt::Case c({1, 20, 70, 2, 2, 32, 32}, dt, 5);
    for (const std::string& t : every_target()) {
      SCOPED_TRACE(std::string(memattn::dtype_name(dt)) + " target '" + t + "'");
      c.options = with_target(t);
      c.run();
      const Result plain{c.out, c.lse};
      ScopedEnv env("MEMATTN_FAMILY", "f32_fma");
      c.out.fill(std::numeric_limits<double>::quiet_NaN());
      c.run();
      EXPECT_TRUE((Result{c.out, c.lse}.same_bits(plain)));
    }
  }
}

}  // namespace
