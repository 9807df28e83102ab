// docs/api.md's per-element and lse error bounds, from each problem's inputs, on every path.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "support.hpp"

using namespace mt;
using memattn::Algorithm;

namespace {

// Unit roundoff of f32, in which every path for f32, bf16 and f16 inputs computes scores, the
// softmax and P V.
constexpr double kU = 0x1p-24;
// The most that flushing one subnormal product, partial sum or probability to zero can lose (the
// bf16 dot-product and AMX instructions flush; elsewhere gradual underflow loses far less).
constexpr double kFlush = 0x1p-126;
// c of the term c u (1 + log2 Sk) that stands for the exp, the sums of the softmax and of P V, the
// rescaling between chunks and the final division (unchanged from the earlier bound).
constexpr double kAccumulation = 16;
// One rounding of P to bf16 before P V (the bf16 tile families: vdpbf16ps and tdpbf16ps take bf16
// operands).
constexpr double kBf16Probabilities = 0x1p-8;
const double kNaN = std::numeric_limits<double>::quiet_NaN();

// gamma_n = n u / (1 - n u): the relative error bound of n roundings (Higham, Lemma 3.1).
double gamma_f32(double n) { return n * kU / (1 - n * kU); }

double unit_roundoff_of_output(DType dt) {
  return dt == DType::bf16 ? 0x1p-8 : dt == DType::f16 ? 0x1p-11 : kU;
}

// Per-element bounds on |out - out_Ref64| and per-row bounds on |lse - lse_Ref64|, laid out as
// out and lse. Fully masked rows get 0: they must be exact (out +0, lse -inf).
struct ErrorBounds {
  std::vector<double> out, lse;
};

// docs/api.md "Accuracy", in fp64 on the exact inputs. For a visible score s_j = scale q.k_j:
//   Delta_j  = gamma_{d+1} |scale| sum_c |q_c||k_jc| + u |s_j| + d 2^-126 |scale|
//              (d products and partial sums, the scale folded into q or applied after the dot,
//              flushed subnormal products), widened by 2 u (m - s_j) for the rounding of the exp
//              argument s_j - m and of the rescaling exponents m_old - m_new (which add up to at
//              most m - s_j for any key);
//   Lambda   = log sum_j p_j e^{Delta_j}, which bounds the lse's share (|dL| <= Lambda);
//   |dL|    <= Lambda + c u (1 + log2 Sk) + 2 u |L|;
//   |dO_c|  <= u_out |O_c| + (u_p + c u (1 + log2 Sk)) sum_j p_j |v_jc|
//              + sum_j p_j (e^{Delta_j + Lambda} - 1) |v_jc| + 2^-126 sum_j |v_jc|,
// since each probability moves by a factor e^{delta_j - dL} with |delta_j - dL| <= Delta_j + Lambda.
ErrorBounds error_bounds(const RefProblem& p, const RefResult& ref, DType out_dtype, double u_p) {
  const Shape& s = p.s;
  ErrorBounds bound{std::vector<double>(ref.out.size(), 0.0), std::vector<double>(ref.lse.size(), 0.0)};
  const double u_out = unit_roundoff_of_output(out_dtype);
  const double accumulation = kAccumulation * kU * (1 + std::log2(double(std::max<int64_t>(s.Sk, 1))));
  const double scale = std::fabs(p.scale);
  std::vector<double> score(size_t(s.Sk)), delta(size_t(s.Sk));
  std::vector<bool> visible(size_t(s.Sk));
  for_each_row(s, [&](int64_t b, int64_t i, int64_t h) {
    const double lse = ref.lse[size_t(lse_offset(s, b, h, i))];
    if (!std::isfinite(lse)) return;
    const int64_t g = h / (s.Hq / s.Hkv);
    const double* q = &p.q[size_t(((b * s.Sq + i) * s.Hq + h) * s.D)];
    double max_score = -std::numeric_limits<double>::infinity();
    for (int64_t j = 0; j < s.Sk; ++j) {
      visible[size_t(j)] = ref_visible(p, b, h, i, j);
      if (!visible[size_t(j)]) continue;
      const double* k = &p.k[size_t(((b * s.Sk + j) * s.Hkv + g) * s.D)];
      double dot = 0, conditioning = 0;
      for (int64_t c = 0; c < s.D; ++c) {
        dot += q[c] * k[c];
        conditioning += std::fabs(q[c] * k[c]);
      }
      score[size_t(j)] = p.scale * dot;
      delta[size_t(j)] = gamma_f32(double(s.D + 1)) * scale * conditioning + kU * std::fabs(score[size_t(j)]) +
                         double(s.D) * kFlush * scale;
      max_score = std::max(max_score, score[size_t(j)]);
    }
    double excess = 0;  // sum_j p_j (e^{Delta_j} - 1), so that Lambda = log1p(excess) keeps its digits
    for (int64_t j = 0; j < s.Sk; ++j) {
      if (!visible[size_t(j)]) continue;
      delta[size_t(j)] += 2 * kU * (max_score - score[size_t(j)]);
      excess += std::exp(score[size_t(j)] - lse) * std::expm1(delta[size_t(j)]);
    }
    const double lambda = std::log1p(excess);
    bound.lse[size_t(lse_offset(s, b, h, i))] = lambda + accumulation + 2 * kU * std::fabs(lse);
    const int64_t o = out_row_offset(s, b, i, h);
    for (int64_t c = 0; c < s.Dv; ++c) {
      double weighted = 0, moved = 0, flushed = 0;  // sum p|v|, sum p (e^{Delta + Lambda} - 1)|v|, sum |v|
      for (int64_t j = 0; j < s.Sk; ++j) {
        if (!visible[size_t(j)]) continue;
        const double v = std::fabs(p.v[size_t(((b * s.Sk + j) * s.Hkv + g) * s.Dv + c)]);
        const double pj = std::exp(score[size_t(j)] - lse);
        weighted += pj * v;
        moved += pj * std::expm1(delta[size_t(j)] + lambda) * v;
        flushed += v;
      }
      bound.out[size_t(o + c)] = u_out * std::fabs(ref.out[size_t(o + c)]) + (u_p + accumulation) * weighted +
                                 moved + kFlush * flushed;
    }
  });
  return bound;
}

// The largest |got - ref| / bound seen, for the report (RecordProperty) and the failure message.
struct WorstRatio {
  double out = 0, lse = 0;
};

// "" when every out element and lse is within its bound (fully masked rows exactly +0 and -inf),
// else the first that is not.
std::string bound_failure(const Buf& out, const Buf& lse, const RefResult& ref, const ErrorBounds& bound,
                          WorstRatio& worst) {
  std::ostringstream failure;
  failure.precision(17);
  const auto check = [&](const char* what, int64_t e, double got, double want, double allowed, double& ratio) {
    if (std::isinf(want)) {
      if (got != want) failure << what << ' ' << e << ": " << got << " where Ref64 has " << want;
      return;
    }
    const double err = std::fabs(got - want);
    if (allowed > 0) ratio = std::max(ratio, err / allowed);
    if (!(err <= allowed))
      failure << what << ' ' << e << ": |" << got << " - " << want << "| = " << err << " > bound " << allowed;
  };
  for (int64_t e = 0; e < lse.numel() && failure.tellp() == 0; ++e)
    check("lse", e, lse.get(e), ref.lse[size_t(e)], bound.lse[size_t(e)], worst.lse);
  for (int64_t e = 0; e < out.numel() && failure.tellp() == 0; ++e)
    check("out", e, out.get(e), ref.out[size_t(e)], bound.out[size_t(e)], worst.out);
  return failure.str();
}

// One way to run a forward: the algorithm, the SIMD target ("" = the best), the tile family forced
// through MEMATTN_FAMILY (null = the planner's choice) and whether that family rounds P to bf16.
struct Path {
  Algorithm algorithm;
  std::string target;
  const char* family = nullptr;
  double u_p = 0;
  std::string name() const {
    std::string n = memattn::algorithm_name(algorithm);
    if (!target.empty()) n += " target " + target;
    if (family) n += std::string(" family ") + family;
    return n;
  }
};

// naive, sequential, chunked, and flash on every supported target with the f32 products (bf16
// inputs forced onto them: the planner would pick a bf16 family, tested on its own below).
std::vector<Path> f32_product_paths(DType dt) {
  std::vector<Path> paths = {{Algorithm::naive, ""}, {Algorithm::sequential, ""}, {Algorithm::chunked, ""}};
  for (const std::string& t : memattn::supported_targets())
    paths.push_back({Algorithm::flash, t, dt == DType::bf16 ? "f32_fma" : nullptr});
  return paths;
}

// A random problem: q and k ~ N(0, sigma^2) (the score conditioning grows as sigma^2), v ~ N(0, 1).
struct Problem {
  Shape shape;
  double sigma;
  uint64_t seed;
  bool causal;
};

// Scales 1, 4 and 16, two seeds, causal or not, grouped-query heads, and several key chunks so the
// chunked and flash paths rescale between chunks. Last, q = k = 0 over many keys: every score is
// exactly 0, so the sums of the softmax and of P V (the c u (1 + log2 Sk) term) carry the error.
std::vector<Problem> random_problems() {
  const Shape shapes[] = {{2, 13, 37, 4, 2, 64, 24}, {1, 9, 70, 3, 1, 128, 40}};
  std::vector<Problem> all;
  uint64_t seed = 1000;
  for (const Shape& s : shapes)
    for (double sigma : {1.0, 4.0, 16.0})
      for (bool causal : {false, true})
        for (int repeat = 0; repeat < 2; ++repeat) all.push_back({s, sigma, ++seed, causal});
  all.push_back({{1, 6, 1500, 2, 1, 32, 16}, 0.0, ++seed, false});
  return all;
}

// Runs every path on the problem in dtype dt and checks out and lse against the bounds from its
// inputs (one Ref64 and one set of bounds per rounding of P).
void expect_within_bounds(const Problem& pr, DType dt, const std::vector<Path>& paths, WorstRatio& worst) {
  Case c(pr.shape, dt, pr.seed, pr.sigma);
  c.options.causal = pr.causal;
  c.options.query_chunk = 8;
  c.options.key_chunk = 16;
  const RefProblem problem = c.problem();
  const RefResult ref = reference64(problem);
  const ErrorBounds plain = error_bounds(problem, ref, dt, 0);
  const ErrorBounds rounded_p = error_bounds(problem, ref, dt, kBf16Probabilities);
  for (const Path& path : paths) {
    ScopedEnv family("MEMATTN_FAMILY", path.family);
    c.options.algorithm = path.algorithm;
    c.options.target = path.target.empty() ? nullptr : path.target.c_str();
    if (path.family) ASSERT_STREQ(memattn::tile_family(dt, c.options), path.family) << path.name();
    c.out.fill(kNaN);
    c.lse.fill(kNaN);
    c.run();
    EXPECT_EQ(bound_failure(c.out, c.lse, ref, path.u_p > 0 ? rounded_p : plain, worst), "")
        << path.name() << ", sigma " << pr.sigma << ", seed " << pr.seed << ": " << describe(c);
  }
}

void record(const WorstRatio& worst) {
  testing::Test::RecordProperty("worst_out_error_over_bound", std::to_string(worst.out));
  testing::Test::RecordProperty("worst_lse_error_over_bound", std::to_string(worst.lse));
}

bool has_target(const std::string& name) {
  const std::vector<std::string> t = memattn::supported_targets();
  return std::find(t.begin(), t.end(), name) != t.end();
}

// The bf16 tile family `path` on every random problem in bf16.
void expect_bf16_family_within_bounds(const Path& path) {
  WorstRatio worst;
  for (const Problem& pr : random_problems()) expect_within_bounds(pr, DType::bf16, {path}, worst);
  record(worst);
}

}  // namespace

// Every algorithm with f32 products (naive, sequential, chunked; flash on every SIMD target) and
// every input dtype, on random inputs of scale 1, 4 and 16 with GQA and causal masks.
TEST(AccuracyBounds, every_algorithm_and_dtype_within_bounds) {
  WorstRatio worst;
  for (DType dt : {DType::f32, DType::bf16, DType::f16})
    for (const Problem& pr : random_problems()) expect_within_bounds(pr, dt, f32_product_paths(dt), worst);
  record(worst);
  EXPECT_GT(worst.out, 0.0);  // the outputs were compared at all
}

// Issue 10's example (f32, Sk = 2, d = 128, inputs of scale 4), on which the earlier bound, blind
// to the rounding of q.k, failed for naive in about 6% of problems and for flash in about 30%: the
// new bounds hold on every algorithm, while the earlier per-element bound (conditioning_failure,
// whose |lse| allowance only partly stands in for the q.k term) still fails on some runs, which
// shows that these problems exercise the q.k term.
TEST(AccuracyBounds, issue_example_short_rows_of_large_scores) {
  const Shape s{1, 8, 2, 2, 1, 128, 64};
  const std::vector<Path> paths = f32_product_paths(DType::f32);
  WorstRatio worst;
  int earlier_bound_failures = 0;
  for (uint64_t seed = 1; seed <= 60; ++seed) {
    expect_within_bounds({s, 4.0, seed, false}, DType::f32, paths, worst);
    Case c(s, DType::f32, seed, 4.0);
    const RefProblem problem = c.problem();
    const RefResult ref = reference64(problem);
    for (const Path& path : paths) {
      c.options.algorithm = path.algorithm;
      c.options.target = path.target.empty() ? nullptr : path.target.c_str();
      c.run();
      if (!conditioning_failure(c.out_values(), problem, ref, DType::f32).empty()) ++earlier_bound_failures;
    }
  }
  record(worst);
  testing::Test::RecordProperty("earlier_bound_failures", earlier_bound_failures);
  EXPECT_GT(earlier_bound_failures, 0)
      << "the earlier bound held everywhere: these problems no longer exercise the q.k term";
}

// bf16_dot: vdpbf16ps products and P rounded to bf16, on the avx512_bf16 target.
TEST(AccuracyBounds, bf16_dot_family_within_bounds) {
  if (!has_target("avx512_bf16")) GTEST_SKIP() << "this CPU has no AVX-512 BF16 (no avx512_bf16 target)";
  expect_bf16_family_within_bounds({Algorithm::flash, "avx512_bf16", "bf16_dot", kBf16Probabilities});
}

// amx_bf16: tdpbf16ps on the AMX tiles, where the CPU and the OS allow them.
TEST(AccuracyBounds, amx_bf16_family_within_bounds) {
  if (std::string(memattn::tile_family(DType::bf16)) != "amx_bf16")
    GTEST_SKIP() << "AMX bf16 tiles are not usable here (tile_family(bf16) is " << memattn::tile_family(DType::bf16)
                 << ")";
  expect_bf16_family_within_bounds({Algorithm::flash, "", "amx_bf16", kBf16Probabilities});
}

// amx_bf16_emulated: the exact scalar emulation of tdpbf16ps, which runs on any CPU.
TEST(AccuracyBounds, amx_bf16_emulated_family_within_bounds) {
  expect_bf16_family_within_bounds({Algorithm::flash, "", "amx_bf16_emulated", kBf16Probabilities});
}
