// Bad score-modifier arguments (softcap, alibi_slopes, sinks, dsinks): memattn::Error naming the
// argument, the expected and the given value, from every entry point, outputs untouched.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "fault_support.hpp"
#include "support_backward.hpp"

using namespace mt;
using memattn::ErrorCode;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// A valid backward case (B=2, S=6, H=4, Hkv=2) whose options a test breaks; each entry point is
// checked with sentinel-filled outputs.
struct Fixture {
  BackwardCase c{Shape{2, 6, 6, 4, 2, 8, 8}, DType::f32, 3};
  Buf dsinks{DType::f32, {4}};

  Fixture() {
    c.run();  // a valid out and lse for the backward
  }
  void expect_everywhere(ErrorCode code, const std::vector<std::string>& parts) {
    const memattn::Options& o = c.options;
    {
      SCOPED_TRACE("forward");
      expect_error([&] { c.run(); }, code, parts, {&c.out, &c.lse});
    }
    {
      SCOPED_TRACE("workspace_bytes");
      expect_error([&] { (void)memattn::workspace_bytes(c.q.view(), c.k.view(), c.v.view(), o); }, code, parts);
    }
    {
      SCOPED_TRACE("backward");
      expect_error([&] { c.run_backward(); }, code, parts, {&c.dq, &c.dk, &c.dv});
    }
    {
      SCOPED_TRACE("backward_workspace_bytes");
      expect_error([&] { (void)memattn::backward_workspace_bytes(c.q.view(), c.k.view(), c.v.view(), o); }, code,
                   parts);
    }
  }
};

}  // namespace

TEST(ScoreModifierErrors, SoftcapMustBeFiniteAndNonNegative) {
  for (double cap : {-1.0, kNaN, kInf, -kInf}) {
    Fixture f;
    f.c.options.softcap = cap;
    SCOPED_TRACE(cap);
    f.expect_everywhere(ErrorCode::invalid_argument, {"softcap must be finite and >= 0 (0: off), got "});
  }
  Fixture f;  // beyond float for f32 inputs
  f.c.options.softcap = 1e39;
  f.expect_everywhere(ErrorCode::invalid_argument, {"softcap 1e+39 is beyond the float range", "f32 inputs"});
}

TEST(ScoreModifierErrors, AlibiSlopes) {
  {  // wrong dtype
    Fixture f;
    Buf slopes(DType::f64, {4});
    const Tensor t = slopes.view();
    f.c.options.alibi_slopes = &t;
    f.expect_everywhere(ErrorCode::wrong_dtype, {"alibi_slopes: dtype must be f32, got f64"});
  }
  {  // wrong shape
    Fixture f;
    Buf slopes(DType::f32, {3});
    const Tensor t = slopes.view();
    f.c.options.alibi_slopes = &t;
    f.expect_everywhere(ErrorCode::invalid_argument,
                        {"alibi_slopes: shape [3] expected [4] or [2,4] ([heads_q] or [batch, heads_q])"});
  }
  {  // wrong batch
    Fixture f;
    Buf slopes(DType::f32, {3, 4});
    const Tensor t = slopes.view();
    f.c.options.alibi_slopes = &t;
    f.expect_everywhere(ErrorCode::invalid_argument, {"alibi_slopes: shape [3,4] expected [4] or [2,4]"});
  }
  {  // wrong rank
    Fixture f;
    Buf slopes(DType::f32, {1, 2, 4});
    const Tensor t = slopes.view();
    f.c.options.alibi_slopes = &t;
    f.expect_everywhere(ErrorCode::invalid_argument, {"alibi_slopes: expected shape [4] or [2,4]", "got 3 dimensions"});
  }
  {  // a value that is not finite
    Fixture f;
    f.c.set_alibi({2, 4}, {0.5, 0.25, 0.125, 0.0625, 0.5, kInf, 0.125, 0.0625});
    f.expect_everywhere(ErrorCode::invalid_argument, {"alibi_slopes: values must be finite, got inf at [1,1]"});
  }
}

TEST(ScoreModifierErrors, Sinks) {
  {
    Fixture f;
    Buf sinks(DType::f32, {2, 4});
    const Tensor t = sinks.view();
    f.c.options.sinks = &t;
    f.expect_everywhere(ErrorCode::invalid_argument, {"sinks: expected shape [4] ([heads_q]), got 2 dimensions"});
  }
  {
    Fixture f;
    f.c.set_sinks({0.0, 1.0, kNaN, 2.0});
    f.expect_everywhere(ErrorCode::invalid_argument, {"sinks: values must be finite, got nan at [2]"});
  }
  {
    Fixture f;
    f.c.set_sinks({0.0, 1.0, -kInf, 2.0});
    f.expect_everywhere(ErrorCode::invalid_argument, {"sinks: values must be finite, got -inf at [2]"});
  }
  {  // the output may not overlap the sinks
    Fixture f;
    f.c.set_sinks({0.0, 1.0, 0.5, 2.0});
    f.c.sinks_view.data = f.c.out.data();
    expect_error([&] { f.c.run(); }, ErrorCode::aliasing, {"out and sinks"}, {&f.c.out, &f.c.lse});
  }
}

TEST(ScoreModifierErrors, Dsinks) {
  {  // without sinks
    Fixture f;
    f.c.dsinks.emplace(DType::f32, std::vector<int64_t>{4});
    expect_error([&] { f.c.run_backward(); }, ErrorCode::invalid_argument,
                 {"dsinks: a sinks gradient was requested but options.sinks is null"},
                 {&f.c.dq, &f.c.dk, &f.c.dv, &*f.c.dsinks});
  }
  {  // wrong shape and dtype
    Fixture f;
    f.c.set_sinks({0.0, 1.0, 0.5, 2.0});
    f.c.run();
    f.c.dsinks.emplace(DType::f32, std::vector<int64_t>{2});
    expect_error([&] { f.c.run_backward(); }, ErrorCode::invalid_argument,
                 {"dsinks: shape [2] expected [4] ([heads_q], the shape of sinks)"},
                 {&f.c.dq, &f.c.dk, &f.c.dv, &*f.c.dsinks});
    f.c.dsinks.emplace(DType::bf16, std::vector<int64_t>{4});
    expect_error([&] { f.c.run_backward(); }, ErrorCode::wrong_dtype, {"dsinks: dtype must be f32, got bf16"},
                 {&f.c.dq, &f.c.dk, &f.c.dv, &*f.c.dsinks});
  }
  {  // dsinks may not overlap dq
    Fixture f;
    f.c.set_sinks({0.0, 1.0, 0.5, 2.0});
    f.c.run();
    f.c.request_dsinks();
    Tensor dsinks = f.c.dsinks->view();
    dsinks.data = f.c.dq.data();
    expect_error([&] {
      memattn::backward(f.c.q.view(), f.c.k.view(), f.c.v.view(), f.c.out.view(), f.c.dout.view(), f.c.lse.view(),
                        f.c.dq.view(), f.c.dk.view(), f.c.dv.view(), f.c.options, nullptr, {}, &dsinks);
    }, ErrorCode::aliasing, {"dsinks and dq"}, {&f.c.dk, &f.c.dv});
  }
}
