// Every SIMD target this CPU runs (supported_targets(), forced through Options.target) against
// Ref64 over the shapes, masks and dtypes whose code paths differ between targets: tails of the
// lane count, boundary chunks, the bf16 dot-product path, and bitwise thread independence.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "support.hpp"

using namespace mt;
using memattn::Algorithm;

namespace {

struct Variant {
  const char* name;
  Shape shape;
  bool causal = false;
  memattn::Align align = memattn::Align::top_left;
  int64_t window_left = -1, window_right = -1;
  int mask_period = 0;  // > 0: a [B,1,Sq,Sk] mask hiding keys j with (i + j) % period == 0
  bool bias = false;
  int64_t key_chunk = 0;
};

std::vector<Variant> variants() {
  return {
      {"square_d64", {2, 130, 130, 2, 2, 64, 64}},
      {"odd_dims", {1, 37, 53, 3, 1, 7, 9}, false, memattn::Align::top_left, -1, -1, 0, false, 16},
      {"head_dim_1", {1, 19, 23, 1, 1, 1, 1}},
      {"d80_gqa", {1, 70, 90, 4, 2, 80, 80}, false, memattn::Align::top_left, -1, -1, 0, false, 32},
      {"dv_ne_d", {2, 33, 65, 2, 1, 24, 40}},
      {"causal_top_left", {1, 100, 140, 2, 2, 32, 32}, true, memattn::Align::top_left, -1, -1, 0, false, 32},
      {"causal_bottom_right", {1, 140, 100, 2, 1, 32, 32}, true, memattn::Align::bottom_right, -1, -1, 0, false, 32},
      {"window", {1, 120, 120, 1, 1, 16, 16}, false, memattn::Align::top_left, 17, 5, 0, false, 16},
      {"mask_and_bias", {2, 41, 77, 2, 2, 32, 32}, false, memattn::Align::top_left, -1, -1, 3, true, 32},
      {"d256", {1, 20, 70, 1, 1, 256, 256}},
  };
}

void configure(Case& c, const Variant& v, const std::string& target) {
  c.options.algorithm = Algorithm::flash;
  c.options.target = target.c_str();
  c.options.causal = v.causal;
  c.options.align = v.align;
  c.options.window_left = v.window_left;
  c.options.window_right = v.window_right;
  c.options.key_chunk = v.key_chunk;
  const Shape& s = v.shape;
  if (v.mask_period > 0) {
    std::vector<uint8_t> m(size_t(s.B * s.Sq * s.Sk));
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t i = 0; i < s.Sq; ++i)
        for (int64_t j = 0; j < s.Sk; ++j) m[size_t((b * s.Sq + i) * s.Sk + j)] = (i + j) % v.mask_period != 0;
    c.set_mask({s.B, 1, s.Sq, s.Sk}, m);
  }
  if (v.bias) {
    std::vector<double> bias(size_t(s.Hq * s.Sq * s.Sk));
    for (size_t i = 0; i < bias.size(); ++i) bias[i] = 0.25 * double(int(i % 7) - 3);
    c.set_bias({1, s.Hq, s.Sq, s.Sk}, DType::f32, bias);
  }
}

}  // namespace

TEST(Targets, EveryTargetMatchesRef64) {
  const auto targets = memattn::supported_targets();
  ASSERT_FALSE(targets.empty());
  for (const std::string& target : targets)
    for (const Variant& v : variants())
      for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
        SCOPED_TRACE(target + " " + v.name + " " + memattn::dtype_name(dt));
        Case c(v.shape, dt, 11);
        configure(c, v, target);
        expect_accurate(c);
      }
}

TEST(Targets, EveryTargetBitwiseAcrossThreads) {
  for (const std::string& target : memattn::supported_targets())
    for (DType dt : {DType::f32, DType::bf16}) {
      SCOPED_TRACE(target + " " + memattn::dtype_name(dt));
      Variant v{"causal", {2, 200, 200, 3, 3, 48, 48}, true};
      Case one(v.shape, dt, 5), many(v.shape, dt, 5);
      configure(one, v, target);
      configure(many, v, target);
      one.options.num_threads = 1;
      many.options.num_threads = 3;
      one.run();
      many.run();
      EXPECT_EQ(one.out.bytes, many.out.bytes);
      EXPECT_EQ(one.lse.bytes, many.lse.bytes);
    }
}

TEST(Targets, UnknownTargetNamesTheChoices) {
  Case c(Shape{1, 4, 4, 1, 1, 8, 8}, DType::f32);
  c.out.fill(7.0);
  c.options.target = "avx9000";
  try {
    c.run();
    FAIL() << "expected an error";
  } catch (const memattn::Error& e) {
    EXPECT_EQ(e.code(), memattn::ErrorCode::invalid_argument);
    const std::string msg = e.what();
    EXPECT_NE(msg.find("avx9000"), std::string::npos) << msg;
    EXPECT_NE(msg.find(memattn::supported_targets().front()), std::string::npos) << msg;
  }
  for (double x : c.out.values()) EXPECT_EQ(x, 7.0);
}
