// Bad arguments, TESTPLAN cases 1-6 and 10-12 plus the option checks: each gives memattn::Error with
// the right code and a message naming the argument, the expected and the given value, before any
// output is written. The valid neighbours of each error (dv != d, Hkv | Hq, scale 0 or negative,
// zero-size tensors with null data) give the right answer. Cases 8 and 9: test_errors_layout.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "fault_support.hpp"
#include "support.hpp"

using namespace mt;
using memattn::Algorithm;
using memattn::ErrorCode;
using memattn::Options;

namespace {

constexpr Algorithm kAlgorithms[] = {Algorithm::naive, Algorithm::sequential, Algorithm::chunked,
                                     Algorithm::flash};

// The standard shape of TESTPLAN's messages: B=2, S=128, H=8, D=64.
Case standard_case(DType dt = DType::f32) { return Case(Shape{2, 128, 128, 8, 8, 64, 64}, dt, 3); }

}  // namespace

TEST(Errors, err_rank_mismatch) {
  Case c = standard_case();
  Call call(c);
  call.k = Tensor::contiguous(c.k.data(), DType::f32, {2, 128, 64});
  expect_call_error(c, call, ErrorCode::invalid_argument,
                    {"q, k, v must have the same rank (4: [B, S, H, D])", "q=[2,128,8,64]",
                     "k=[2,128,64]", "v=[2,128,8,64]"});
  Call bad_out(c);
  bad_out.out = Tensor::contiguous(c.out.data(), DType::f32, {256, 8, 64});
  expect_call_error(c, bad_out, ErrorCode::invalid_argument,
                    {"out: expected 4 dimensions, got 3", "[256,8,64]"}, Sizing::not_involved);
  Call bad_lse(c);
  bad_lse.lse = Tensor::contiguous(c.lse.data(), DType::f32, {2, 8, 128, 1});
  expect_call_error(c, bad_lse, ErrorCode::invalid_argument,
                    {"lse: expected 3 dimensions, got 4", "[2,8,128,1]"}, Sizing::not_involved);
  Call garbage_rank(c);
  garbage_rank.v.ndim = 9;  // a hand-built Tensor: must be rejected, not indexed past shape[3]
  expect_call_error(c, garbage_rank, ErrorCode::invalid_argument, {"same rank", "q=[2,128,8,64]"});
}

TEST(Errors, err_headdim_mismatch) {
  Case c = standard_case();
  Buf k80(DType::f32, {2, 128, 8, 80});
  Call call(c);
  call.k = k80.view();
  expect_call_error(c, call, ErrorCode::invalid_argument, {"q.shape[-1] (64) != k.shape[-1] (80)"});
  // v may have its own head dim; then out must have it too.
  Buf v80(DType::f32, {2, 128, 8, 80});
  Call out_dim(c);
  out_dim.v = v80.view();
  expect_call_error(c, out_dim, ErrorCode::invalid_argument,
                    {"out: shape [2,128,8,64] expected [2,128,8,80]", "head_dim_v"},
                    Sizing::not_involved);
}

TEST(Errors, err_headdim_mismatch_dv_differs_from_d_is_supported) {
  for (Algorithm alg : kAlgorithms)
    for (auto [d, dv] : {std::pair{24, 40}, std::pair{40, 7}}) {
      Case c(Shape{2, 33, 47, 4, 2, d, dv}, DType::f32, 5);
      c.options.algorithm = alg;
      c.options.query_chunk = 8;
      c.options.key_chunk = 16;
      SCOPED_TRACE(std::string(memattn::algorithm_name(alg)) + " d=" + std::to_string(d) +
                   " dv=" + std::to_string(dv));
      EXPECT_EQ(c.out.shape, (std::vector<int64_t>{2, 33, 4, dv}));
      expect_accurate(c);
    }
}

TEST(Errors, err_seq_batch_mismatch) {
  Case c = standard_case();
  Buf v127(DType::f32, {2, 127, 8, 64}), k3(DType::f32, {3, 128, 8, 64}), v1(DType::f32, {1, 128, 8, 64});
  Call seq(c);
  seq.v = v127.view();
  expect_call_error(c, seq, ErrorCode::invalid_argument, {"v: seq 127 does not match k seq 128"});
  Call batch(c);
  batch.k = k3.view();
  expect_call_error(c, batch, ErrorCode::invalid_argument, {"k: batch 3 does not match q batch 2"});
  Call v_batch(c);
  v_batch.v = v1.view();  // no implicit broadcasting over batch
  expect_call_error(c, v_batch, ErrorCode::invalid_argument, {"v: batch 1 does not match q batch 2"});
  Buf out127(DType::f32, {2, 127, 8, 64});
  Call out_seq(c);
  out_seq.out = out127.view();
  expect_call_error(c, out_seq, ErrorCode::invalid_argument,
                    {"out: shape [2,127,8,64] expected [2,128,8,64]"}, Sizing::not_involved);
  Buf lse_short(DType::f32, {2, 8, 127});
  Call lse(c);
  lse.lse = lse_short.view();
  expect_call_error(c, lse, ErrorCode::invalid_argument,
                    {"lse: shape [2,8,127] expected [2,8,128]", "[batch, heads_q, seq_q]"},
                    Sizing::not_involved);
}

TEST(Errors, err_gqa_ratio) {
  Case c(Shape{2, 16, 16, 6, 4, 8, 8}, DType::f32);
  expect_call_error(c, Call(c), ErrorCode::invalid_argument,
                    {"num_heads_q (6) must be a multiple of num_heads_kv (4)"});
  Buf k0(DType::f32, {2, 16, 0, 8}), v0(DType::f32, {2, 16, 0, 8});
  Call zero(c);
  zero.k = k0.view();
  zero.v = v0.view();
  expect_call_error(c, zero, ErrorCode::invalid_argument,
                    {"num_heads_kv must be > 0 when num_heads_q is 6, got 0"});
  Buf v3(DType::f32, {2, 16, 3, 8});
  Call hk_hv(c);
  hk_hv.v = v3.view();
  expect_call_error(c, hk_hv, ErrorCode::invalid_argument, {"v: heads 3 does not match k heads 4"});
  for (int64_t hkv : {1, 2, 3}) {  // the valid ratios around the error
    Case ok(Shape{2, 16, 16, 6, hkv, 8, 8}, DType::f32);
    SCOPED_TRACE("Hkv=" + std::to_string(hkv));
    expect_accurate(ok);
  }
}

TEST(Errors, err_dtype_mix) {
  Case c(Shape{2, 16, 16, 2, 2, 8, 8}, DType::f16);
  Buf q_bf16(DType::bf16, {2, 16, 2, 8});
  Call mix(c);
  mix.q = q_bf16.view();
  expect_call_error(c, mix, ErrorCode::wrong_dtype,
                    {"q, k, v must have the same dtype, or f32 q with k and v both bf16 or both f16 (a KV "
                     "cache); got q=bf16, k=f16, v=f16"});

  Case bytes(Shape{2, 16, 16, 2, 2, 8, 8}, DType::u8);
  expect_call_error(bytes, Call(bytes), ErrorCode::wrong_dtype,
                    {"q: dtype u8 is not supported", "expected one of f32, bf16, f16"});

  Case f64(Shape{2, 16, 16, 2, 2, 8, 8}, DType::f64);
  f64.options.algorithm = Algorithm::flash;
  expect_call_error(f64, Call(f64), ErrorCode::unsupported,
                    {"flash takes f32, bf16 or f16 inputs, got f64", "naive, sequential or chunked"});
  f64.options.algorithm = Algorithm::chunked;
  expect_accurate(f64);

  Buf out_bf16(DType::bf16, {2, 16, 2, 8}), lse_f16(DType::f16, {2, 2, 16});
  Call out(c);
  out.out = out_bf16.view();
  expect_call_error(c, out, ErrorCode::wrong_dtype, {"out: dtype must match q (f16), got bf16"},
                    Sizing::not_involved);
  Call lse(c);
  lse.lse = lse_f16.view();
  expect_call_error(c, lse, ErrorCode::wrong_dtype, {"lse: dtype must be f32, got f16"},
                    Sizing::not_involved);
  for (DType bias_dt : {DType::u8, DType::f64}) {
    Buf bias(bias_dt, {1, 1, 16, 16});
    Tensor bias_view = bias.view();
    Call call(c);
    call.options.bias = &bias_view;
    expect_call_error(c, call, ErrorCode::wrong_dtype,
                      {"bias: dtype must be one of f32, bf16, f16 (f64 with f64 inputs), got " +
                       std::string(memattn::dtype_name(bias_dt))});
  }
}

TEST(Errors, err_mask_shape) {
  Case c = standard_case();
  Buf bias(DType::f32, {2, 1, 128, 129});
  Tensor bias_view = bias.view();
  Call wide(c);
  wide.options.bias = &bias_view;
  expect_call_error(c, wide, ErrorCode::invalid_argument,
                    {"bias shape [2,1,128,129] not broadcastable to [B=2,H=8,Sq=128,Sk=128]; each "
                     "dim must equal the target or be 1"});
  Buf mask(DType::u8, {2, 8, 3, 128});
  Tensor mask_view = mask.view();
  Call rows(c);
  rows.options.mask = &mask_view;
  expect_call_error(c, rows, ErrorCode::invalid_argument,
                    {"mask shape [2,8,3,128] not broadcastable to [B=2,H=8,Sq=128,Sk=128]"});
  Buf float_mask(DType::f32, {1, 1, 128, 128});
  Tensor float_mask_view = float_mask.view();
  Call dtype(c);
  dtype.options.mask = &float_mask_view;
  expect_call_error(c, dtype, ErrorCode::wrong_dtype,
                    {"mask: dtype must be u8 (bool, nonzero = attend), got f32"});
  Buf flat(DType::u8, {128, 128});
  Tensor flat_view = flat.view();
  Call rank(c);
  rank.options.mask = &flat_view;
  expect_call_error(c, rank, ErrorCode::invalid_argument,
                    {"mask: expected 4 dimensions, got 2", "[128,128]"});
}

TEST(Errors, err_null_and_empty) {
  Case c(Shape{2, 16, 16, 2, 2, 8, 8}, DType::f32);
  for (auto [member, name] : {std::pair{&Call::q, "q"}, std::pair{&Call::k, "k"}, std::pair{&Call::v, "v"},
                              std::pair{&Call::out, "out"}, std::pair{&Call::lse, "lse"}}) {
    Call call(c);
    (call.*member).data = nullptr;
    const bool input = member != &Call::out && member != &Call::lse;
    SCOPED_TRACE(name);
    expect_call_error(c, call, ErrorCode::invalid_argument,
                      {std::string(name) + ": data is null but the tensor has shape " +
                       (input || member == &Call::out ? "[2,16,2,8]" : "[2,2,16]")},
                      input ? Sizing::fails_too : Sizing::not_involved);
  }
  Tensor null_mask = Tensor::contiguous(nullptr, DType::u8, {1, 1, 16, 16});
  Call mask(c);
  mask.options.mask = &null_mask;
  expect_call_error(c, mask, ErrorCode::invalid_argument,
                    {"mask: data is null but the tensor has shape [1,1,16,16]"});
  expect_error([&] { memattn::forward(c.q.view(), c.k.view(), c.v.view(), c.out.view(), nullptr, {},
                                      memattn::Workspace{nullptr, size_t(1) << 40}); },
               ErrorCode::invalid_argument, {"workspace: data is null but bytes is 1099511627776"},
               {&c.out});

  // Null data is fine on tensors with no elements, for every algorithm.
  for (Algorithm alg : kAlgorithms) {
    SCOPED_TRACE(memattn::algorithm_name(alg));
    Options o;
    o.algorithm = alg;
    const Tensor none = Tensor::contiguous(nullptr, DType::f32, {0, 16, 2, 8});
    const Tensor none_lse = Tensor::contiguous(nullptr, DType::f32, {0, 2, 16});
    EXPECT_NO_THROW(memattn::forward(none, none, none, none, &none_lse, o));  // B = 0
    const Tensor no_q = Tensor::contiguous(nullptr, DType::f32, {2, 0, 2, 8});
    const Tensor no_lse = Tensor::contiguous(nullptr, DType::f32, {2, 2, 0});
    EXPECT_NO_THROW(memattn::forward(no_q, c.k.view(), c.v.view(), no_q, &no_lse, o));  // Sq = 0
    // Sk = 0: no keys, so every row is fully masked: out = +0, lse = -inf.
    const Tensor no_kv = Tensor::contiguous(nullptr, DType::f32, {2, 0, 2, 8});
    Tensor lse = c.lse.view();
    c.out.fill(-7.25);
    c.lse.fill(-7.25);
    memattn::forward(c.q.view(), no_kv, no_kv, c.out.view(), &lse, o);
    for (double x : c.out.values()) ASSERT_TRUE(x == 0 && !std::signbit(x)) << x;
    for (double x : c.lse.values()) ASSERT_EQ(x, -std::numeric_limits<double>::infinity());
  }
}

TEST(Errors, err_scale_nonfinite) {
  Case c(Shape{2, 16, 16, 2, 2, 8, 8}, DType::f32);
  const float inf = std::numeric_limits<float>::infinity();
  for (auto [scale, text] : {std::pair{std::nanf(""), "nan"}, std::pair{inf, "inf"}, std::pair{-inf, "-inf"}}) {
    Call call(c);
    call.options.scale = scale;
    expect_call_error(c, call, ErrorCode::invalid_argument, {std::string("scale must be finite, got ") + text});
  }
}

TEST(Errors, err_scale_nonfinite_zero_gives_mean_of_visible_values) {
  for (Algorithm alg : kAlgorithms) {
    Case c(Shape{1, 40, 40, 2, 1, 8, 6}, DType::f32, 9, 10.0);
    c.options.algorithm = alg;
    c.options.scale = 0.0f;
    c.options.causal = true;  // row i sees keys 0..i, so every row has its own mean
    c.options.query_chunk = 8;
    c.options.key_chunk = 16;
    SCOPED_TRACE(memattn::algorithm_name(alg));
    expect_accurate(c);
    const std::vector<double> v = c.v.values(), out = c.out_values();
    for (int64_t i = 0; i < 40; ++i)
      for (int64_t h = 0; h < 2; ++h)
        for (int64_t e = 0; e < 6; ++e) {
          double mean = 0;
          for (int64_t j = 0; j <= i; ++j) mean += v[size_t(j * 6 + e)];
          mean /= double(i + 1);
          ASSERT_NEAR(out[size_t((i * 2 + h) * 6 + e)], mean, 1e-5 * (1 + std::fabs(mean)))
              << "row " << i << " head " << h << " feature " << e;
        }
  }
}

TEST(Errors, err_scale_nonfinite_negative_scale_matches_ref64) {
  for (DType dt : {DType::f32, DType::bf16})
    for (Algorithm alg : kAlgorithms) {
      Case c(Shape{2, 29, 35, 2, 1, 16, 16}, dt, 11);
      c.options.algorithm = alg;
      c.options.scale = -0.7f;
      c.options.key_chunk = 16;
      SCOPED_TRACE(std::string(memattn::dtype_name(dt)) + " " + memattn::algorithm_name(alg));
      expect_accurate(c);
    }
}

// f64 inputs get the scale exactly (0.1 and 1/sqrt(24) are not floats): Ref64 uses the double,
// so a scale rounded to float would miss the f64 accuracy floor by about 1e-8.
// A finite double scale that float cannot hold would make every score infinite: refused for
// f32/bf16/f16 inputs (whose scores are float), used as given with f64 inputs (found by fuzzing).
TEST(Errors, err_scale_beyond_float_range) {
  for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
    Case c(Shape{1, 4, 4, 1, 1, 8, 8}, dt, 3);
    c.options.scale = -1e39;
    expect_call_error(c, Call(c), ErrorCode::invalid_argument,
                      {"scale -1e+39 is beyond the float range of the scores for " +
                       std::string(memattn::dtype_name(dt)) + " inputs"});
  }
  Case f64(Shape{1, 4, 4, 1, 1, 8, 8}, DType::f64, 3, 1e-40);
  f64.options.scale = 1e39;
  f64.options.algorithm = Algorithm::naive;
  expect_accurate(f64);
}

TEST(Errors, err_scale_is_exact_for_f64_inputs) {
  for (std::optional<double> scale : {std::optional<double>(0.1), std::optional<double>()})
    for (Algorithm alg : {Algorithm::naive, Algorithm::sequential, Algorithm::chunked}) {
      Case c(Shape{2, 9, 13, 2, 1, 24, 24}, DType::f64, 12);
      c.options.algorithm = alg;
      c.options.scale = scale;
      SCOPED_TRACE(std::string(memattn::algorithm_name(alg)) + (scale ? " scale 0.1" : " default"));
      expect_accurate(c);
    }
}

// Scores are f32 for f32, bf16 and f16 inputs; whether flash multiplies the queries or the dot
// products by the scale must not make finite scores overflow (docs/api.md, "scale").
namespace {

// q of magnitude `q_sigma` clamped to +-q_limit (so that every element is a finite float), k of
// magnitude `k_sigma`: scores of about scale * q_sigma * k_sigma * sqrt(D).
Case magnitude_case(DType dt, double scale, double q_sigma, double q_limit, double k_sigma) {
  Case c(Shape{2, 19, 37, 2, 1, 16, 16}, dt, 71);
  fill_randn(c.q, 72, q_sigma);
  for (int64_t i = 0; i < c.q.numel(); ++i) c.q.set(i, std::clamp(c.q.get(i), -q_limit, q_limit));
  fill_randn(c.k, 73, k_sigma);
  c.options.scale = scale;
  c.options.key_chunk = 16;  // steady-state and boundary chunks, with and without causal
  return c;
}

double max_abs(const std::vector<double>& x) {
  double m = 0;
  for (double e : x) m = std::max(m, std::fabs(e));
  return m;
}

}  // namespace

// |scale| > 1: scale * q may exceed FLT_MAX while every score is finite (the case: scale
// 1e20, q ~ 1e20, k ~ 1e-38, scores ~ 1e2); at scale 2 with |q| up to 3e38 the pre-scaled query
// overflows by a factor of 2 only. Every algorithm and target must match Ref64.
TEST(Errors, err_scale_large_with_huge_queries_is_exact) {
  const double flt_max = std::numeric_limits<float>::max();
  for (bool causal : {false, true}) {
    for (auto [scale, q_sigma, q_limit, k_sigma] :
         {std::tuple{1e20, 1e20, flt_max, 1e-38}, std::tuple{2.0, 1e38, 3e38, 1e-38},
          std::tuple{1.0, 1e38, 3e38, 1e-38}}) {
      Case c = magnitude_case(DType::f32, scale, q_sigma, q_limit, k_sigma);
      c.options.causal = causal;
      const double scores = scale * max_abs(c.q.values()) * max_abs(c.k.values());
      ASSERT_GT(scores, 1.0) << "the scores must matter";
      if (scale > 1) ASSERT_GT(scale * max_abs(c.q.values()), flt_max) << "the premise: scale * q overflows";
      SCOPED_TRACE(describe(c));
      expect_accurate_all(c);
    }
    // bf16 keeps f32's exponent range; k is kept normal (|k| >= 2e-38), since the avx512_bf16
    // dot product flushes subnormals.
    Case b = magnitude_case(DType::bf16, 1e18, 1e21, flt_max, 1e-37);
    for (int64_t i = 0; i < b.k.numel(); ++i) b.k.set(i, b.k.get(i) + std::copysign(2e-38, b.k.get(i)));
    ASSERT_GT(1e18 * max_abs(b.q.values()), flt_max) << "the premise: scale * q overflows";
    b.options.causal = causal;
    SCOPED_TRACE(describe(b));
    expect_accurate_all(b);
  }
}

// |scale| <= 1: the queries are pre-scaled, which cannot overflow, so flash stays exact where the
// unscaled q.k would not be a float (1e-38 * (1e30 x 1e9) * 16 terms: q.k ~ 1e40, scores ~ 10).
// The reference algorithms multiply the dot product and need it finite (docs/api.md).
TEST(Errors, err_scale_small_with_overflowing_dot_products_is_exact) {
  for (bool causal : {false, true}) {
    Case c = magnitude_case(DType::f32, 1e-38, 1e30, 1e31, 1e9);
    c.options.causal = causal;
    c.options.algorithm = Algorithm::flash;
    c.run();
    const RefResult ref = reference64(c.problem());
    const std::vector<double> out = c.out_values(), lse = c.lse.values();
    ASSERT_GT(max_abs(ref.lse), 5.0) << "the scores must matter";
    for (size_t i = 0; i < out.size(); ++i)
      ASSERT_NEAR(out[i], ref.out[i], 1e-4 * (1 + std::fabs(ref.out[i]))) << "element " << i;
    for (size_t i = 0; i < lse.size(); ++i)
      ASSERT_NEAR(lse[i], ref.lse[i], 1e-5 * std::max(1.0, std::fabs(ref.lse[i]))) << "row " << i;
  }
}

TEST(Errors, err_size_overflow) {
  Buf small(DType::f32, {16});
  TestAllocator allocator;
  const int64_t e16 = int64_t(1) << 16;
  // B*S*H*D = 2^64 elements: the element count overflows int64.
  const Tensor huge = Tensor::contiguous(small.data(), DType::f32, {e16, e16, e16, e16});
  const Tensor one = Tensor::contiguous(small.data(), DType::f32, {1, 1, 1, 1});
  for (Algorithm alg : kAlgorithms) {
    Options o;
    o.algorithm = alg;
    expect_error([&] { memattn::forward(huge, one, one, one, nullptr, o); }, ErrorCode::size_overflow,
                 {"q: tensor size overflows int64", "[65536,65536,65536,65536]"}, {&small});
    expect_error([&] { (void)memattn::workspace_bytes(one, huge, huge, o); }, ErrorCode::size_overflow,
                 {"k: tensor size overflows int64"});
  }
  // 2^62 f32 elements fit int64, their 2^64 bytes do not.
  const int64_t e31 = int64_t(1) << 31;
  const Tensor wide = Tensor::contiguous(small.data(), DType::f32, {1, e31, e31, 1});
  expect_error([&] { (void)memattn::workspace_bytes(wide, wide, wide, {}); }, ErrorCode::size_overflow,
               {"q: tensor size overflows int64"});
  // Broadcast inputs (stride 0: one element at small[0]) of 2^60 queries of 4 features fit, but
  // their output (at small[8], past the inputs) has 2^62 f32 elements: 2^64 bytes.
  void* past_inputs = static_cast<float*>(small.data()) + 8;
  const int64_t n60 = int64_t(1) << 60;
  const Tensor bq = Tensor::strided(small.data(), DType::f32, {1, n60, 1, 4}, {0, 0, 0, 0});
  const Tensor bkv = Tensor::strided(small.data(), DType::f32, {1, 1, 1, 4}, {0, 0, 0, 0});
  const Tensor big_out = Tensor::contiguous(past_inputs, DType::f32, {1, n60, 1, 4});
  expect_error([&] { memattn::forward(bq, bkv, bkv, big_out, nullptr, {}); }, ErrorCode::size_overflow,
               {"out: tensor size overflows int64", "[1,1152921504606846976,1,4]"}, {&small});
  // Valid tensors whose naive score matrix (2^40 x 2^40) overflows the workspace arithmetic.
  const int64_t n40 = int64_t(1) << 40;
  const Tensor q40 = Tensor::strided(small.data(), DType::f32, {1, n40, 1, 1}, {0, 0, 0, 0});
  const Tensor out40 = Tensor::contiguous(past_inputs, DType::f32, {1, n40, 1, 1});
  memattn::Options naive;
  naive.algorithm = Algorithm::naive;
  expect_error([&] { (void)memattn::workspace_bytes(q40, q40, q40, naive); }, ErrorCode::size_overflow,
               {"workspace size overflows"});
  expect_error([&] { memattn::forward(q40, q40, q40, out40, nullptr, naive); }, ErrorCode::size_overflow,
               {"workspace size overflows"}, {&small});
  EXPECT_EQ(allocator.allocations(), 0) << "an overflowing call allocated before failing";
}

TEST(Errors, err_options) {
  Case c(Shape{2, 16, 16, 2, 2, 8, 8}, DType::f32);
  const auto expect_option_error = [&](auto set, const std::string& text) {
    Call call(c);
    set(call.options);
    expect_call_error(c, call, ErrorCode::invalid_argument, {text});
  };
  expect_option_error([](Options& o) { o.window_left = -2; },
                      "window_left must be -1 (unbounded) or >= 0, got -2");
  expect_option_error([](Options& o) { o.window_right = -7; },
                      "window_right must be -1 (unbounded) or >= 0, got -7");
  expect_option_error([](Options& o) { o.query_chunk = -1; },
                      "query_chunk must be 0 (automatic) or > 0, got -1");
  expect_option_error([](Options& o) { o.key_chunk = -64; },
                      "key_chunk must be 0 (automatic) or > 0, got -64");
  expect_option_error([](Options& o) { o.num_threads = -1; },
                      "num_threads must be 0 (all) or > 0, got -1");
}
