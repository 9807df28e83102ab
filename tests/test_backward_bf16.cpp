// The flash backward's bf16 paths (issue 8), each forced by MEMATTN_FAMILY: its products on
// vdpbf16ps (bf16_dot) or on AMX tiles (amx_bf16, amx_bf16_emulated), P and dS rounded to bf16,
// held to TESTPLAN's primary rule against Ref64 across masks, biases, GQA, odd head dims and key
// counts (the AMX families tile head dims that are multiples of 32 and take bf16_dot on the
// others); bitwise the same for any thread count; and not the f32 products in disguise (the f32
// family gives other bits). Skipped where the CPU lacks AVX512_BF16 (or AMX, for amx_bf16).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "support_backward.hpp"

using namespace mt;
using memattn::Algorithm;
using memattn::Align;

namespace {

const double kNaN = std::numeric_limits<double>::quiet_NaN();

bool has_bf16_dot() {
  const std::vector<std::string> targets = memattn::supported_targets();
  return std::find(targets.begin(), targets.end(), "avx512_bf16") != targets.end();
}

// A bf16 flash case on the vdpbf16ps target, with chunks small enough that several query tiles
// and key chunks, their odd ends and the pass boundaries are crossed.
BackwardCase dot_case(Shape s, uint64_t seed, int64_t query_chunk = 6, int64_t key_chunk = 10) {
  BackwardCase c(s, DType::bf16, seed);
  c.options.algorithm = Algorithm::flash;
  c.options.target = "avx512_bf16";
  c.options.query_chunk = query_chunk;
  c.options.key_chunk = key_chunk;
  return c;
}

// Every test once per bf16 family, forced for its duration.
class BackwardBf16 : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    // Asked without the forced family, which throws where AMX is not usable.
    const ScopedEnv unforced("MEMATTN_FAMILY", nullptr);
    if (std::string(GetParam()) == "amx_bf16" && std::string(memattn::tile_family(DType::bf16)) != "amx_bf16")
      GTEST_SKIP() << "no usable AMX-BF16 on this machine";
  }
  ScopedEnv family_{"MEMATTN_FAMILY", GetParam()};
};

// Row (b, i, h) of a [B, S, H, D] buffer set to x.
void set_row(Buf& t, int64_t b, int64_t i, int64_t h, double x) {
  const int64_t S = t.shape[1], H = t.shape[2], D = t.shape[3];
  for (int64_t c = 0; c < D; ++c) t.set(((b * S + i) * H + h) * D + c, x);
}

// Do a and b differ in any byte?
bool differ(const Buf& a, const Buf& b) { return !bitwise_difference(a, b).empty(); }

}  // namespace

// Odd and even head dims, dv != d: the odd ones zero-pad the last pair of every product, and
// both even dims read the key chunks in place (no mask, every key live).
TEST_P(BackwardBf16, num_head_dims) {
  int seed = 0;
  for (const auto [d, dv] : {std::pair{1, 1}, std::pair{3, 5}, std::pair{63, 64}, std::pair{65, 33},
                             std::pair{64, 64}, std::pair{128, 96}, std::pair{16, 65}})
    for (bool causal : {false, true}) {
      BackwardCase c = dot_case(Shape{2, 13, 19, 4, 2, d, dv}, 8000 + seed++);
      c.options.causal = causal;
      SCOPED_TRACE("d " + std::to_string(d) + " dv " + std::to_string(dv));
      expect_backward_accurate(c);
    }
}

// Masks, biases and grouped heads: causal both ways, a sliding window, a boolean mask, a bias with
// its gradient, GQA; odd key and query counts, seq_q != seq_k, odd and even chunks.
TEST_P(BackwardBf16, num_masks_bias_gqa) {
  for (int variant = 0; variant < 8; ++variant) {
    const int64_t sq = 17 + 4 * variant, sk = 37 - 2 * variant;
    const bool gqa = variant % 2 == 0;
    // d = dv = multiples of 32 (AMX tiles) but in variants 5 and 7.
    BackwardCase c = dot_case(Shape{2, sq, sk, 4, gqa ? 1 : 4, variant == 7 ? 24 : 32, variant == 5 ? 40 : 64},
                              8100 + variant,
                              5 + variant % 3, 7 + 2 * (variant % 4));
    c.options.causal = variant % 4 == 1 || variant == 6;
    c.options.align = variant % 3 == 0 ? Align::bottom_right : Align::top_left;
    if (variant == 2 || variant == 6) c.options.window_left = 5, c.options.window_right = 2;
    if (variant % 4 == 3) c.set_mask({2, 1, sq, sk}, random_mask(size_t(2 * sq * sk), 8200 + variant, 0.7));
    if (variant >= 4) {
      c.set_bias({1, 4, sq, sk}, variant == 5 ? DType::bf16 : DType::f32,
                 randn_values(size_t(4 * sq * sk), 8300 + variant));
      c.request_dbias();
    }
    SCOPED_TRACE("variant " + std::to_string(variant));
    expect_backward_accurate(c);
  }
}

// The planner's own chunks (128 queries, 256 keys) on a longer sequence, where whole key chunks
// are read in place, with and without the causal mask.
TEST_P(BackwardBf16, num_default_chunks) {
  for (bool causal : {false, true}) {
    BackwardCase c = dot_case(Shape{1, 300, 530, 2, 1, 64, 64}, 8400 + causal, 0, 0);
    c.options.causal = causal;
    SCOPED_TRACE(causal ? "causal" : "full");
    expect_backward_accurate(c);
  }
}

// Non-finite inputs on the bf16 path: NaN in a q or dout row poisons what depends on it, NaN in a
// K/V position a mask hides is never read, NaN in a visible key poisons the rows that see it, and
// a fully masked row's NaN q is never read (its gradient is 0). NaN parity with Ref64.
TEST_P(BackwardBf16, num_nan_inf_propagation) {
  const int64_t sq = 9, sk = 12;
  for (int what = 0; what < 6; ++what) {
    BackwardCase c = dot_case(Shape{1, sq, sk, 2, 1, 32, 32}, 8500 + what, 4, 5);
    c.options.causal = true;
    c.options.align = Align::bottom_right;
    std::vector<uint8_t> m(size_t(sq * sk), 1);
    m[size_t(4 * sk + 2)] = 0;
    for (int64_t i = 0; i < sq; ++i) m[size_t(i * sk + 6)] = 0;  // key 6 hidden from every row
    if (what == 5) std::fill_n(m.begin() + 7 * sk, sk, uint8_t(0));  // row 7 sees nothing
    c.set_mask({1, 1, sq, sk}, m);
    switch (what) {
      case 0: set_row(c.q, 0, 4, 1, kNaN); break;
      case 1: set_row(c.dout, 0, 4, 0, kNaN); break;
      case 2: set_row(c.k, 0, 6, 0, kNaN), set_row(c.v, 0, 6, 0, kNaN); break;
      case 3: set_row(c.v, 0, sk - 1, 0, std::numeric_limits<double>::infinity()); break;
      case 4: c.k.set(32 * 5 + 3, kNaN); break;
      case 5: set_row(c.q, 0, 7, 0, kNaN), set_row(c.q, 0, 7, 1, kNaN); break;
    }
    SCOPED_TRACE("case " + std::to_string(what));
    expect_backward_accurate(c, GradCheck{.expect_zeros = true});
  }
}

// Every gradient bitwise the same on 1, 2 and 3 threads, with causal, GQA and a dbias reduced over
// broadcast dims.
TEST_P(BackwardBf16, det_bitwise_any_thread_count) {
  BackwardCase c = dot_case(Shape{2, 150, 170, 4, 2, 40, 24}, 8600, 16, 32);
  c.options.causal = true;
  c.set_bias({1, 4, 1, 170}, DType::f32, randn_values(4 * 170, 8601));
  c.request_dbias();
  expect_same_bits_any_thread_count(c, {2, 3});
}

// The f32 family runs the same backward on the f32 GEMM: both pass the rule, and their gradients
// differ in some bits (P and dS rounded to bf16, other summation orders), so the family did not
// fall back to the f32 products.
TEST_P(BackwardBf16, num_dot_path_is_taken) {
  BackwardCase c = dot_case(Shape{1, 40, 70, 2, 1, 32, 32}, 8700, 16, 32);
  expect_backward_accurate(c);
  const Buf dq = c.dq, dk = c.dk, dv = c.dv;
  ScopedEnv f32("MEMATTN_FAMILY", "f32_fma");
  c.run_backward();  // from the same forward: only the backward's products change
  EXPECT_TRUE(differ(c.dq, dq)) << "dq";
  EXPECT_TRUE(differ(c.dk, dk)) << "dk";
  EXPECT_TRUE(differ(c.dv, dv)) << "dv";
}

INSTANTIATE_TEST_SUITE_P(Families, BackwardBf16, ::testing::Values("bf16_dot", "amx_bf16_emulated", "amx_bf16"),
                         [](const ::testing::TestParamInfo<const char*>& i) { return std::string(i.param); });

// The AMX backward on the hardware gives the emulation's bits (causal, GQA, dbias, partial tiles).
TEST(BackwardAmx, HardwareMatchesEmulationBitwise) {
  if (std::string(memattn::tile_family(DType::bf16)) != "amx_bf16") GTEST_SKIP() << "no usable AMX-BF16 here";
  BackwardCase c = dot_case(Shape{2, 70, 90, 4, 2, 64, 32}, 8800, 32, 48);
  c.options.causal = true;
  c.set_bias({1, 4, 1, 90}, DType::f32, randn_values(4 * 90, 8801));
  c.request_dbias();
  ScopedEnv hw("MEMATTN_FAMILY", "amx_bf16");
  expect_backward_accurate(c);
  const Buf dq = c.dq, dk = c.dk, dv = c.dv, dbias = *c.dbias;
  ScopedEnv emulated("MEMATTN_FAMILY", "amx_bf16_emulated");
  expect_backward_accurate(c);
  EXPECT_FALSE(differ(c.dq, dq)) << "dq";
  EXPECT_FALSE(differ(c.dk, dk)) << "dk";
  EXPECT_FALSE(differ(c.dv, dv)) << "dv";
  EXPECT_FALSE(differ(*c.dbias, dbias)) << "dbias";
}

// Head dims the AMX tiles do not take run the bf16 dot products, bit for bit.
TEST(BackwardAmx, UntiledHeadDimsTakeTheDotProducts) {
  if (!has_bf16_dot()) GTEST_SKIP() << "no AVX512_BF16 on this CPU";
  BackwardCase c = dot_case(Shape{1, 30, 41, 2, 1, 48, 32}, 8900, 16, 16);
  ScopedEnv dot("MEMATTN_FAMILY", "bf16_dot");
  expect_backward_accurate(c);
  const Buf dq = c.dq, dk = c.dk, dv = c.dv;
  ScopedEnv emulated("MEMATTN_FAMILY", "amx_bf16_emulated");
  c.run_backward();  // from the same forward
  EXPECT_FALSE(differ(c.dq, dq) || differ(c.dk, dk) || differ(c.dv, dv));
}

// memattn::backward_tile_family names the family whose products the backward runs: forcing the
// reported family gives the default call's bits, for head dims the AMX tiles take and for others;
// f32 inputs and the naive algorithm report f32_fma and none.
TEST(BackwardTileFamily, ReportsTheFamilyThatRuns) {
  ScopedEnv no_family("MEMATTN_FAMILY", nullptr);
  for (const auto [d, dv] : {std::pair{64, 32}, std::pair{48, 32}}) {
    BackwardCase c(Shape{1, 33, 40, 2, 1, d, dv}, DType::bf16, 9000 + d);
    c.options.algorithm = Algorithm::flash;
    const std::string family = memattn::backward_tile_family(c.q.view(), c.k.view(), c.v.view(), c.options);
    const bool amx_here = std::string(memattn::tile_family(DType::bf16, c.options)) == "amx_bf16";
    const std::string t = memattn::selected_target(c.options);
    EXPECT_EQ(family, amx_here && d % 32 == 0 ? "amx_bf16" : t == "avx512_bf16" ? "bf16_dot" : "f32_fma") << d;
    expect_backward_accurate(c);
    const Buf dq = c.dq, dk = c.dk, dv_ = c.dv;
    ScopedEnv forced("MEMATTN_FAMILY", family.c_str());
    c.run_backward();  // from the default forward's out and lse: the family forced on the backward alone
    EXPECT_FALSE(differ(c.dq, dq) || differ(c.dk, dk) || differ(c.dv, dv_)) << family << " d " << d;
  }
  {  // decode-shaped (8 rows per group, dim a multiple of 16): dot products on the f32 products
    BackwardCase c(Shape{1, 2, 40, 8, 2, 64, 32}, DType::bf16, 9050);
    EXPECT_STREQ(memattn::backward_tile_family(c.q.view(), c.k.view(), c.v.view(), c.options), "f32_fma");
    expect_backward_accurate(c);
    const Buf dq = c.dq, dk = c.dk, dv_ = c.dv;
    ScopedEnv forced("MEMATTN_FAMILY", "f32_fma");
    c.run_backward();
    EXPECT_FALSE(differ(c.dq, dq) || differ(c.dk, dk) || differ(c.dv, dv_));
  }
  BackwardCase f(Shape{1, 3, 4, 1, 1, 32, 32}, DType::f32, 9100);
  EXPECT_STREQ(memattn::backward_tile_family(f.q.view(), f.k.view(), f.v.view(), f.options), "f32_fma");
  f.options.algorithm = Algorithm::naive;
  EXPECT_STREQ(memattn::backward_tile_family(f.q.view(), f.k.view(), f.v.view(), f.options), "none");
}

// Its errors are the backward's: a bad operand is named, an unknown MEMATTN_FAMILY is rejected.
TEST(BackwardTileFamily, ErrorsAreTheBackwardsErrors) {
  BackwardCase c(Shape{1, 3, 4, 1, 1, 32, 32}, DType::bf16, 9200);
  Buf bad(DType::f32, {1, 4, 1, 32});
  try {
    memattn::backward_tile_family(c.q.view(), bad.view(), c.v.view(), c.options);
    ADD_FAILURE() << "a k of another dtype was accepted";
  } catch (const memattn::Error& e) {
    EXPECT_NE(std::string(e.what()).find("k"), std::string::npos) << e.what();
  }
  ScopedEnv bogus("MEMATTN_FAMILY", "bogus");
  EXPECT_THROW(memattn::backward_tile_family(c.q.view(), c.k.view(), c.v.view(), c.options), memattn::Error);
}
