// Numerical edge cases of TESTPLAN section B for the forward pass: fully masked rows (15), huge
// finite negative biases (17), one key (18), empty dims (20), adversarial magnitudes (24, 25),
// subnormals, subnormal softmax weights and the caller's MXCSR around forward, backward and merge
// (28), lse (32). NaN/Inf cases are in test_propagation.cpp.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

#include "cpu/kernels.hpp"
#include "support_backward.hpp"

using namespace mt;
using memattn::Algorithm;
using memattn::Align;

namespace {

const DType kDtypes[] = {DType::f32, DType::bf16, DType::f16, DType::f64};
const DType kLowDtypes[] = {DType::f32, DType::bf16, DType::f16};
const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

// Fully masked rows (`empty` true) must be +0 with lse -inf; every other row must be bitwise equal
// to the same row of `open`, a run of the same problem with those rows left visible. No NaN anywhere.
void expect_empty_rows(Case& masked, Case& open,
                       const std::function<bool(int64_t, int64_t, int64_t)>& empty) {
  for (Algorithm alg : algorithms_for(masked.dtype)) {
    masked.options.algorithm = open.options.algorithm = alg;
    masked.out.fill(kNaN);
    masked.run();
    open.run();
    const Shape& s = masked.s;
    int64_t empties = 0;
    for_each_row(s, [&](int64_t b, int64_t i, int64_t h) {
      const int64_t o = out_row_offset(s, b, i, h), l = lse_offset(s, b, h, i);
      if (empty(b, i, h)) {
        ++empties;
        for (int64_t c = 0; c < s.Dv; ++c) {
          const double x = masked.out.get(o + c);
          EXPECT_TRUE(x == 0 && !std::signbit(x))
              << describe(masked) << " row " << b << ',' << i << ',' << h << " col " << c << " = " << x;
        }
        EXPECT_EQ(masked.lse.get(l), -kInf) << describe(masked);
      } else {
        EXPECT_TRUE(same_bytes(masked.out, open.out, o, s.Dv))
            << describe(masked) << " neighbour row " << b << ',' << i << ',' << h << " changed";
        EXPECT_TRUE(same_bytes(masked.lse, open.lse, l, 1)) << describe(masked);
      }
    });
    EXPECT_GT(empties, 0) << "the test masks no row";
    for (double x : masked.out_values()) ASSERT_FALSE(std::isnan(x)) << describe(masked);
  }
  expect_accurate_all(masked);
}

}  // namespace

TEST(Numerics, num_fully_masked_row) {
  const Shape s{2, 20, 37, 2, 1, 16, 16};
  const auto is_masked = [](int64_t b, int64_t i, int64_t h) {
    return (b == 1 && i == 5 && h == 0) || (b == 0 && i == 19 && h == 1) || (b == 0 && i == 0 && h == 0) ||
           (b == 1 && i == 8 && h == 1);
  };
  for (DType dt : kDtypes) {
    SCOPED_TRACE(memattn::dtype_name(dt));
    // A boolean mask row all false.
    {
      Case masked(s, dt, 11), open(s, dt, 11);
      for (Case* c : {&masked, &open}) c->options.query_chunk = 8, c->options.key_chunk = 16;
      std::vector<uint8_t> m = random_mask(size_t(s.B * s.Hq * s.Sq * s.Sk), 5, 0.8);
      open.set_mask({s.B, s.Hq, s.Sq, s.Sk}, m);
      for_each_row(s, [&](int64_t b, int64_t i, int64_t h) {
        if (is_masked(b, i, h)) std::fill_n(m.begin() + ((b * s.Hq + h) * s.Sq + i) * s.Sk, s.Sk, uint8_t(0));
      });
      masked.set_mask({s.B, s.Hq, s.Sq, s.Sk}, m);
      expect_empty_rows(masked, open, is_masked);
    }
    // An additive bias row all -inf (a [B, 1, Sq, Sk] bias: the row is empty in every head).
    {
      Case masked(s, dt, 12), open(s, dt, 12);
      std::vector<double> bias = randn_values(size_t(s.B * s.Sq * s.Sk), 6);
      open.set_bias({s.B, 1, s.Sq, s.Sk}, dt, bias);
      const auto bias_masked = [](int64_t b, int64_t i, int64_t) {
        return (b == 1 && i == 5) || (b == 0 && i == 19);
      };
      for (int64_t b = 0; b < s.B; ++b)
        for (int64_t i = 0; i < s.Sq; ++i)
          if (bias_masked(b, i, 0)) std::fill_n(bias.begin() + (b * s.Sq + i) * s.Sk, s.Sk, -kInf);
      masked.set_bias({s.B, 1, s.Sq, s.Sk}, dt, bias);
      expect_empty_rows(masked, open, bias_masked);
    }
    // Bottom-right causal with Sq > Sk: rows i < Sq - Sk see no key. `open` is the same mask made
    // explicit with those rows opened.
    {
      const Shape t{1, 20, 7, 2, 2, 16, 16};
      Case masked(t, dt, 13), open(t, dt, 13);
      masked.options.causal = true;
      masked.options.align = Align::bottom_right;
      masked.options.query_chunk = 4;
      open.options.query_chunk = 4;
      std::vector<uint8_t> m(size_t(t.Sq * t.Sk));
      for (int64_t i = 0; i < t.Sq; ++i)
        for (int64_t j = 0; j < t.Sk; ++j) m[size_t(i * t.Sk + j)] = i < t.Sq - t.Sk || j <= i + t.Sk - t.Sq;
      open.set_mask({1, 1, t.Sq, t.Sk}, m);
      expect_empty_rows(masked, open, [&](int64_t, int64_t i, int64_t) { return i < t.Sq - t.Sk; });
    }
  }
}

TEST(Numerics, num_finite_large_negative_mask) {
  const Shape s{1, 12, 30, 2, 2, 16, 16};
  // Rows 0-3: one huge finite bias on every key (softmax of equal scores: mean(V), not 0);
  // rows 4-7: the huge bias on half of the keys; rows 8-11: scores around -100.
  for (DType dt : kDtypes)
    for (const auto& [huge, bias_dt] : {std::pair{-1e30, DType::f32}, std::pair{-65504.0, DType::f16}}) {
      Case c(s, dt, 21);
      c.options.query_chunk = 4;
      c.options.key_chunk = 8;
      std::vector<double> bias = randn_values(size_t(s.Sq * s.Sk), 22, -100.0);
      for (int64_t i = 0; i < s.Sq; ++i)
        for (int64_t j = 0; j < s.Sk; ++j)
          if (i < 4 || (i < 8 && (i + j) % 2 == 0)) bias[size_t(i * s.Sk + j)] = huge;
      c.set_bias({1, 1, s.Sq, s.Sk}, bias_dt, bias);
      SCOPED_TRACE(describe(c));
      expect_accurate_all(c);
      for (double x : c.out_values()) ASSERT_TRUE(std::isfinite(x));
      if (huge != -1e30) continue;
      // The premise: with -1e30 the scores vanish in the sum, and Ref64 is mean(V) for rows 0-3.
      const RefResult ref = reference64(c.problem());
      for (int64_t i = 0; i < 4; ++i)
        for (int64_t h = 0; h < s.Hq; ++h)
          for (int64_t d = 0; d < s.Dv; ++d) {
            double mean = 0;
            for (int64_t j = 0; j < s.Sk; ++j) mean += c.v.get((j * s.Hkv + h) * s.Dv + d) / double(s.Sk);
            ASSERT_NEAR(ref.out[size_t(out_row_offset(s, 0, i, h) + d)], mean, 1e-12);
          }
    }
}

TEST(Numerics, num_single_key) {
  const Shape s{2, 9, 1, 4, 2, 7, 5};
  for (DType dt : kDtypes)
    for (std::optional<float> scale : {std::optional<float>(), std::optional(-3.0f), std::optional(0.0f),
                                       std::optional(1000.0f), std::optional(1e-30f)})
      for (bool with_bias : {false, true}) {
        Case c(s, dt, 31, 3.0);
        c.options.scale = scale;
        if (with_bias)
          c.set_bias({s.B, s.Hq, s.Sq, 1}, dt, randn_values(size_t(s.B * s.Hq * s.Sq), 32, 0, 100));
        for (Algorithm alg : algorithms_for(dt)) {
          c.options.algorithm = alg;
          c.out.fill(kNaN);
          c.run();
          for_each_row(s, [&](int64_t b, int64_t i, int64_t h) {
            const size_t es = memattn::dtype_size(dt);
            const int64_t v_row = (b * s.Hkv + h / (s.Hq / s.Hkv)) * s.Dv;
            EXPECT_EQ(std::memcmp(&c.out.bytes[size_t(out_row_offset(s, b, i, h)) * es],
                                  &c.v.bytes[size_t(v_row) * es], size_t(s.Dv) * es),
                      0)
                << describe(c) << ": out row " << b << ',' << i << ',' << h << " is not V[0]";
          });
        }
      }
}

namespace {

// Pages that fault on any access: the data of operands that must not be read.
struct NoAccess {
  size_t bytes = size_t(sysconf(_SC_PAGESIZE)) * 4;
  void* data = mmap(nullptr, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ~NoAccess() { munmap(data, bytes); }
};

}  // namespace

TEST(Numerics, num_zero_length) {
  NoAccess forbidden;
  ASSERT_NE(forbidden.data, MAP_FAILED);
  for (DType dt : kDtypes)
    for (Algorithm alg : algorithms_for(dt)) {
      memattn::Options o;
      o.algorithm = alg;
      SCOPED_TRACE(std::string(memattn::dtype_name(dt)) + " " + memattn::algorithm_name(alg));
      // Sq = 0: nothing to compute; K and V (in unreadable memory) are not touched.
      {
        const Tensor q = Tensor::contiguous(nullptr, dt, {2, 0, 2, 8});
        const Tensor kv = Tensor::contiguous(forbidden.data, dt, {2, 5, 2, 8});
        const Tensor out = Tensor::contiguous(nullptr, dt, {2, 0, 2, 8});
        const Tensor lse = Tensor::contiguous(nullptr, DType::f32, {2, 2, 0});
        EXPECT_NO_THROW(memattn::forward(q, kv, kv, out, &lse, o));
        // An empty output with all-zero strides (as numpy makes them) overlaps nothing.
        const Tensor flat_out = Tensor::strided(nullptr, dt, {2, 0, 2, 8}, {0, 0, 0, 0});
        const Tensor flat_lse = Tensor::strided(nullptr, DType::f32, {2, 2, 0}, {0, 0, 0});
        EXPECT_NO_THROW(memattn::forward(q, kv, kv, flat_out, &flat_lse, o));
      }
      // Sk = 0: every row is empty, out exactly +0 and lse -inf (pre-filled with NaN).
      {
        Case c(Shape{2, 3, 0, 2, 1, 8, 6}, dt, 41);
        c.options = o;
        c.out.fill(kNaN);
        c.lse.fill(kNaN);
        c.run();
        for (double x : c.out_values()) EXPECT_TRUE(x == 0 && !std::signbit(x)) << x;
        for (double x : c.lse.values()) EXPECT_EQ(x, -kInf);
      }
      // B = 0 and H = 0: no-ops; every non-empty operand lives in unreadable memory.
      for (const auto& [b, hq] : {std::pair{int64_t(0), int64_t(2)}, std::pair{int64_t(2), int64_t(0)}}) {
        const Tensor q = Tensor::contiguous(forbidden.data, dt, {b, 3, hq, 8});
        const Tensor kv = Tensor::contiguous(forbidden.data, dt, {b, 5, 2, 8});
        const Tensor out = Tensor::contiguous(forbidden.data, dt, {b, 3, hq, 8});
        const Tensor lse = Tensor::contiguous(forbidden.data, DType::f32, {b, hq, 3});
        EXPECT_NO_THROW(memattn::forward(q, kv, kv, out, &lse, o));
      }
    }
}

TEST(Numerics, num_large_logits_lowp) {
  // f16 with |q.k| up to ~1e6 (beyond f16's 65504 before scaling): S must be held in f32.
  {
    Case c(Shape{1, 24, 40, 2, 1, 16, 16}, DType::f16, 51, 250.0);
    c.options.query_chunk = 8;
    c.options.key_chunk = 16;
    double top = 0;
    for (int64_t i = 0; i < 24; ++i)
      for (int64_t j = 0; j < 40; ++j)
        for (int64_t h = 0; h < 2; ++h) {
          double d = 0;
          for (int64_t x = 0; x < 16; ++x) d += c.q.get((i * 2 + h) * 16 + x) * c.k.get(j * 16 + x);
          top = std::max(top, std::fabs(d));
        }
    ASSERT_GT(top, 65504.0 * 4);
    SCOPED_TRACE(describe(c));
    expect_accurate_all(c, 5.0, 1e-3);
  }
  // bf16 q = k = v = 133120 (pytorch#121558): every score equal and huge; out must be 133120.
  {
    Case c(Shape{1, 9, 21, 2, 2, 16, 16}, DType::bf16, 52);
    for (Buf* b : {&c.q, &c.k, &c.v}) b->fill(133120.0);
    c.options.key_chunk = 8;
    SCOPED_TRACE(describe(c));
    expect_accurate_all(c, 5.0, 1e-3);
    for (double x : c.out_values()) ASSERT_EQ(x, 133120.0);
  }
  // randn q and k scaled by 5 and 50, in each dtype.
  for (DType dt : kLowDtypes)
    for (double sigma : {5.0, 50.0}) {
      Case c(Shape{2, 19, 45, 2, 1, 24, 24}, dt, 53, sigma);
      c.options.query_chunk = 8;
      c.options.key_chunk = 16;
      SCOPED_TRACE(describe(c));
      expect_accurate_all(c, 5.0, 1e-3);
    }
}

TEST(Numerics, num_softmax_saturation) {
  const Shape s{1, 16, 33, 2, 2, 16, 16};
  for (DType dt : kDtypes) {
    // One key per row dominates by a logit gap > 200: out = V[that key].
    {
      Case c(s, dt, 61);
      c.options.key_chunk = 8;
      std::vector<double> bias(size_t(s.Sq * s.Sk), 0.0);
      for (int64_t i = 0; i < s.Sq; ++i) bias[size_t(i * s.Sk + (i * 7) % s.Sk)] = 250.0;
      c.set_bias({1, 1, s.Sq, s.Sk}, dt, bias);
      SCOPED_TRACE(describe(c));
      expect_accurate_all(c, 5.0, 1e-3);
      for_each_row(s, [&](int64_t, int64_t i, int64_t h) {
        for (int64_t d = 0; d < s.Dv; ++d)
          EXPECT_NEAR(c.out.get(out_row_offset(s, 0, i, h) + d),
                      c.v.get((((i * 7) % s.Sk) * s.Hkv + h) * s.Dv + d), 1e-2);
      });
    }
    // All logits equal (q = 0): out = mean(V).
    {
      Case c(s, dt, 62);
      c.q.fill(0.0);
      c.options.key_chunk = 8;
      SCOPED_TRACE(describe(c));
      expect_accurate_all(c, 5.0, 1e-3);
      for_each_row(s, [&](int64_t, int64_t i, int64_t h) {
        for (int64_t d = 0; d < s.Dv; ++d) {
          double mean = 0;
          for (int64_t j = 0; j < s.Sk; ++j) mean += c.v.get((j * s.Hkv + h) * s.Dv + d) / double(s.Sk);
          EXPECT_NEAR(c.out.get(out_row_offset(s, 0, i, h) + d), mean, 2e-2);
        }
      });
    }
    // Logits of +-1e4: exp overflows for the raw scores, never after the max is subtracted.
    {
      Case c(s, dt, 63);
      c.options.scale = 2500.0f;
      c.options.key_chunk = 8;
      SCOPED_TRACE(describe(c));
      expect_accurate_all(c, 5.0, 1e-3);
      for (double x : c.out_values()) ASSERT_TRUE(std::isfinite(x));
    }
  }
}

namespace {

// The smallest positive (subnormal) value of dt: the absolute resolution of tiny outputs.
double min_subnormal(DType dt) {
  switch (dt) {
    case DType::f32:
      return std::numeric_limits<float>::denorm_min();
    case DType::bf16:
      return std::ldexp(1.0, -133);
    case DType::f16:
      return std::ldexp(1.0, -24);
    default:
      return std::numeric_limits<double>::denorm_min();
  }
}

// The scale of values whose products and outputs are subnormal in dt: flushing them to zero fails.
double subnormal_scale(DType dt) {
  switch (dt) {
    case DType::f16:
      return 1e-6;
    case DType::bf16:
      return 4e-39;
    case DType::f32:
      return 1e-40;
    default:
      return 1e-310;
  }
}

// The control bits of the caller's floating-point state (x86 MXCSR: DAZ, exception masks,
// rounding, FTZ). The sticky exception flags (bits 0-5) are not state: any arithmetic sets them.
#if defined(__x86_64__)
unsigned read_fp_state() { return _mm_getcsr() & ~0x3fu; }
#else
unsigned read_fp_state() { return 0; }
#endif

}  // namespace

TEST(Numerics, num_subnormal_ftz) {
  const Shape s{1, 17, 29, 2, 1, 16, 16};
  for (DType dt : kDtypes) {
    Case c(s, dt, 101);
    c.options.key_chunk = 8;
    fill_randn(c.v, 102, subnormal_scale(dt));
    const RefProblem p = c.problem();
    const RefResult ref = dt == DType::f64 ? reference_extended(p) : reference64(p);
    const RefResult base = baseline(p, dt);
    for (Algorithm alg : algorithms_for(dt)) {
      c.options.algorithm = alg;
      SCOPED_TRACE(describe(c));
      const unsigned before = read_fp_state();
      c.run();
      EXPECT_EQ(read_fp_state(), before) << "the call changed the caller's floating-point state";
      // The primary rule with the subnormal quantum as the rounding floor.
      const std::vector<double> got = c.out_values();
      double err = 0, base_err = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        err = std::max(err, std::fabs(got[i] - ref.out[i]));
        base_err = std::max(base_err, std::fabs(base.out[i] - ref.out[i]));
      }
      const std::string family = alg == Algorithm::flash ? memattn::tile_family(dt, c.options) : "none";
      if (family == "bf16_dot" || family == "amx_bf16" || family == "amx_bf16_emulated") {
        // Documented (docs/api.md): vdpbf16ps and tdpbf16ps treat subnormal bf16 as zero, so on
        // these families values below the smallest normal bf16 (2^-126) may be flushed: errors
        // stay below it.
        EXPECT_LE(err, std::ldexp(1.0, -126));
        continue;
      }
      EXPECT_LE(err, 2 * base_err + 2 * min_subnormal(dt));
      EXPECT_FALSE(mostly_zero(got));
    }
    // Tiny scores (q and k near the subnormal range): softmax of ~0 scores, normal outputs.
    Case t(s, dt, 103, dt == DType::f16 ? 1e-5 : 1e-20);
    SCOPED_TRACE(describe(t));
    expect_accurate_all(t);
  }
#if defined(__x86_64__)
  // A caller running with FTZ and DAZ set gets them back as they were.
  const unsigned saved = _mm_getcsr();
  _mm_setcsr(saved | 0x8040u);
  Case c(s, DType::f32, 104);
  for (Algorithm alg : algorithms_for(DType::f32)) {
    c.options.algorithm = alg;
    c.run();
    EXPECT_EQ(read_fp_state(), (saved | 0x8040u) & ~0x3fu) << memattn::algorithm_name(alg);
  }
  _mm_setcsr(saved);
#endif
}

namespace {

// The caller states a call must hand back as it found them: the process's own, with FTZ and DAZ
// set, and with FTZ, DAZ and round toward zero.
#if defined(__x86_64__)
constexpr unsigned kFtzDaz = 0x8040u, kRoundTowardZero = 0x6000u;
#endif

// Runs `call` under each of those MXCSR states and expects the control bits unchanged after it.
void expect_fp_state_kept(const std::string& what, const std::function<void()>& call) {
#if defined(__x86_64__)
  const unsigned saved = _mm_getcsr();
  for (unsigned state : {saved, saved | kFtzDaz, saved | kFtzDaz | kRoundTowardZero}) {
    _mm_setcsr(state);
    call();
    const unsigned after = read_fp_state();
    _mm_setcsr(saved);
    EXPECT_EQ(after, state & ~0x3fu) << what << ": the call changed the caller's MXCSR " << std::hex << state;
  }
#else
  call();
#endif
}

}  // namespace

// TESTPLAN 28 around backward (every dtype, naive and flash on every SIMD target) and merge (every
// part dtype): subnormal values flow through, and the caller's MXCSR comes back as it was.
TEST(Numerics, num_subnormal_ftz_backward_and_merge) {
  const Shape s{1, 17, 29, 2, 1, 16, 16};
  for (DType dt : kDtypes) {
    BackwardCase c(s, dt, 106);
    c.options.key_chunk = 8;
    fill_randn(c.v, 107, subnormal_scale(dt));
    c.run();
    for (Algorithm alg : {Algorithm::naive, Algorithm::flash}) {
      if (alg == Algorithm::flash && dt == DType::f64) continue;
      c.options.algorithm = alg;
      for (const std::string& target : memattn::supported_targets()) {
        if (alg == Algorithm::naive && target != memattn::supported_targets().front()) continue;
        c.options.target = target.c_str();
        expect_fp_state_kept("backward " + describe(c), [&] { c.run_backward(); });
      }
    }
    // Two parts holding the same (out, lse): merged, they give out again.
    Buf merged(dt == DType::f64 ? DType::f64 : DType::f32, c.out.shape), merged_lse(DType::f32, c.lse.shape);
    const Tensor outs[] = {c.out.view(), c.out.view()}, lses[] = {c.lse.view(), c.lse.view()};
    const Tensor merged_view = merged.view(), merged_lse_view = merged_lse.view();
    expect_fp_state_kept(std::string("merge ") + memattn::dtype_name(dt),
                         [&] { memattn::merge(outs, lses, merged_view, &merged_lse_view); });
  }
}

// The softmax's exp below the normal range (issue 10): for scores x in [-105, -86] below the
// running max, every SIMD target's weight is within 2 ulp of exp(x), an ulp of a subnormal being
// 2^-149; nonzero wherever exp(x) >= 2^-149, 0 below -104 (where exp(x) < 2^-150 rounds to 0).
// A weight flushed to 0 would turn an infinite value into NaN (Propagation.num_inf_in_v_at_subnormal_weight).
TEST(Numerics, num_subnormal_softmax_weights) {
  using memattn::detail::Kernels;
  const size_t ld = memattn::detail::kPadFloats, keys = 4096;
  for (const Kernels* k : memattn::detail::available_kernels()) {
    SCOPED_TRACE(k->name);
    std::vector<float> st(keys * ld);
    for (size_t i = 0; i < st.size(); ++i) st[i] = -86.0f - 19.0f * float(i) / float(st.size());
    std::fill_n(st.begin(), ld, 0.0f);  // the running max is 0 in every lane
    const std::vector<float> x = st;
    std::vector<float> mx(ld, -INFINITY), sum(ld, 0.0f), alpha(ld);
    k->softmax_step(st.data(), keys, ld, 1.0f, mx.data(), sum.data(), alpha.data());
    double worst = 0;
    for (size_t i = ld; i < st.size(); ++i) {
      const double exact = std::exp(double(x[i]));
      const double ulp = double(std::nextafter(float(exact), INFINITY)) - double(float(exact));
      worst = std::max(worst, std::fabs(double(st[i]) - exact) / ulp);
      if (exact >= std::numeric_limits<float>::denorm_min()) ASSERT_GT(st[i], 0.0f) << "exp(" << x[i] << ")";
      if (x[i] < -104.0f) ASSERT_EQ(st[i], 0.0f) << "exp(" << x[i] << ")";
    }
    EXPECT_LE(worst, 2.0);
  }
}

TEST(Numerics, num_lse_output) {
  const Shape s{2, 33, 47, 2, 1, 16, 16};
  for (DType dt : kDtypes)
    for (bool causal : {false, true})
      for (double sigma : {1.0, 5.0}) {
        Case c(s, dt, 111, sigma);
        c.options.query_chunk = 8;
        c.options.key_chunk = 16;
        c.options.causal = causal;
        c.options.align = Align::bottom_right;
        std::vector<uint8_t> m = random_mask(size_t(s.B * s.Hq * s.Sq * s.Sk), 112, 0.7);
        std::fill_n(m.begin() + ((1 * s.Hq + 0) * s.Sq + 3) * s.Sk, s.Sk, uint8_t(0));  // row (1, 0, 3) empty
        c.set_mask({s.B, s.Hq, s.Sq, s.Sk}, m);
        const RefResult ref = reference64(c.problem());
        // xformers' LSE tolerances: f32 (and f64) inputs 1e-5 relative, bf16/f16 inputs 2e-4.
        const double tol = dt == DType::f32 || dt == DType::f64 ? 1e-5 : 2e-4;
        for (Algorithm alg : algorithms_for(dt)) {
          c.options.algorithm = alg;
          c.lse.fill(kNaN);
          c.run();
          SCOPED_TRACE(describe(c));
          for (int64_t x = 0; x < c.lse.numel(); ++x) {
            const double want = ref.lse[size_t(x)], got = c.lse.get(x);
            if (std::isinf(want))
              EXPECT_EQ(got, want) << "lse " << x;
            else
              EXPECT_LE(std::fabs(got - want), tol * std::max(1.0, std::fabs(want))) << "lse " << x;
          }
          EXPECT_EQ(c.lse.get(lse_offset(s, 1, 0, 3)), -kInf);
        }
      }
}
