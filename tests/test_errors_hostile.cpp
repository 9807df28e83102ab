// Hostile but memory-legal arguments (issue 10, "found when tried as a new user would"): enum fields
// holding values outside their enums (as a C caller or a binding can store), unknown target names
// with every algorithm, and stride-0 inputs whose shapes reach 2^62 without any memory. Each gives a
// memattn::Error naming the argument or the overflowing size before anything is written, through
// forward, workspace_bytes, backward and backward_workspace_bytes alike; where the sizes are
// legitimate the answer is exact and cheap. The sanitizer pass runs this file under UBSan.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "fault_support.hpp"
#include "memattn/memattn.h"
#include "support.hpp"
#include "support_backward.hpp"

using namespace mt;
using memattn::Algorithm;
using memattn::Align;
using memattn::ErrorCode;
using memattn::Options;

namespace {

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
constexpr int64_t k2e62 = int64_t(1) << 62;

enum Entry : unsigned { kForward = 1, kWorkspace = 2, kBackward = 4, kBackwardWorkspace = 8 };
constexpr unsigned kEveryEntry = kForward | kWorkspace | kBackward | kBackwardWorkspace;

// Every operand of every entry point, with a mask and a bias (and its gradient), initialised to a
// valid call; tests break the one under test. Options point into the object, so it is not copied.
struct Operands {
  BackwardCase c{Shape{1, 8, 8, 2, 1, 8, 8}, DType::f32, 7};
  Buf mask_buf{DType::u8, {1, 1, 8, 8}}, bias_buf{DType::f32, {1, 2, 8, 8}},
      dbias_buf{DType::f32, {1, 2, 8, 8}};
  Tensor q = c.q.view(), k = c.k.view(), v = c.v.view(), out = c.out.view(), lse = c.lse.view(),
         dout = c.dout.view(), dq = c.dq.view(), dk = c.dk.view(), dv = c.dv.view(),
         mask = mask_buf.view(), bias = bias_buf.view(), dbias = dbias_buf.view();
  Options options;

  Operands() {
    mask_buf.fill(1);
    options.mask = &mask;
    options.bias = &bias;
  }
  Operands(const Operands&) = delete;
  Operands& operator=(const Operands&) = delete;

  void forward() const { memattn::forward(q, k, v, out, &lse, options); }
  size_t workspace_bytes() const { return memattn::workspace_bytes(q, k, v, options); }
  void backward() const { memattn::backward(q, k, v, out, dout, lse, dq, dk, dv, options, &dbias); }
  size_t backward_workspace_bytes() const {
    return memattn::backward_workspace_bytes(q, k, v, options, {true});
  }

  // Each entry point of `entries` must throw `code` with every string of `parts`, writing nothing.
  void expect_error_from(unsigned entries, ErrorCode code, const std::vector<std::string>& parts) {
    if (entries & kForward) {
      SCOPED_TRACE("forward");
      expect_error([&] { forward(); }, code, parts, {&c.out, &c.lse});
    }
    if (entries & kWorkspace) {
      SCOPED_TRACE("workspace_bytes");
      expect_error([&] { (void)workspace_bytes(); }, code, parts);
    }
    if (entries & kBackward) {
      SCOPED_TRACE("backward");
      expect_error([&] { backward(); }, code, parts, {&c.dq, &c.dk, &c.dv, &dbias_buf});
    }
    if (entries & kBackwardWorkspace) {
      SCOPED_TRACE("backward_workspace_bytes");
      expect_error([&] { (void)backward_workspace_bytes(); }, code, parts);
    }
  }
};

// Values a byte-sized enum field can hold beyond its last enumerator.
std::vector<int> values_past(int last) { return {last + 1, 42, 255}; }

std::string supported_list() {
  std::string names;
  for (const std::string& name : memattn::supported_targets()) names += (names.empty() ? "" : ", ") + name;
  return names;
}

}  // namespace

TEST(ErrorsHostile, err_enum_algorithm_outside_the_enum) {
  for (int value : values_past(int(Algorithm::flash))) {
    SCOPED_TRACE(value);
    Operands o;
    o.options.algorithm = Algorithm(value);
    o.expect_error_from(kEveryEntry, ErrorCode::invalid_argument,
                        {"options.algorithm: expected one of automatic, naive, sequential, chunked, "
                         "flash, got " + std::to_string(value)});
  }
}

TEST(ErrorsHostile, err_enum_align_outside_the_enum) {
  for (int value : values_past(int(Align::bottom_right))) {
    SCOPED_TRACE(value);
    Operands o;
    o.options.align = Align(value);
    o.expect_error_from(kEveryEntry, ErrorCode::invalid_argument,
                        {"options.align: expected one of top_left, bottom_right, got " +
                         std::to_string(value)});
  }
}

TEST(ErrorsHostile, err_enum_dtype_outside_the_enum) {
  const struct {
    Tensor Operands::*member;
    const char* name;
    unsigned entries;  // the entry points that take this operand
  } operands[] = {
      {&Operands::q, "q", kEveryEntry},           {&Operands::k, "k", kEveryEntry},
      {&Operands::v, "v", kEveryEntry},           {&Operands::mask, "mask", kEveryEntry},
      {&Operands::bias, "bias", kEveryEntry},     {&Operands::out, "out", kForward | kBackward},
      {&Operands::lse, "lse", kForward | kBackward}, {&Operands::dout, "dout", kBackward},
      {&Operands::dq, "dq", kBackward},           {&Operands::dk, "dk", kBackward},
      {&Operands::dv, "dv", kBackward},           {&Operands::dbias, "dbias", kBackward},
  };
  for (const auto& operand : operands)
    for (int value : values_past(int(DType::i64))) {
      SCOPED_TRACE(std::string(operand.name) + " dtype " + std::to_string(value));
      Operands o;
      (o.*operand.member).dtype = DType(value);
      o.expect_error_from(operand.entries, ErrorCode::invalid_argument,
                          {std::string(operand.name) +
                           ".dtype: expected one of f32, bf16, f16, f64, u8, i32, i64, got " +
                           std::to_string(value)});
    }
}

// The target is checked whatever the algorithm, not only where flash kernels run.
TEST(ErrorsHostile, err_unknown_target_with_every_algorithm) {
  for (Algorithm alg : {Algorithm::automatic, Algorithm::naive, Algorithm::sequential,
                        Algorithm::chunked, Algorithm::flash}) {
    SCOPED_TRACE(memattn::algorithm_name(alg));
    Operands o;
    o.options.algorithm = alg;
    o.options.target = "nonesuch";
    const bool has_backward = alg == Algorithm::automatic || alg == Algorithm::naive || alg == Algorithm::flash;
    o.expect_error_from(has_backward ? kEveryEntry : kForward | kWorkspace, ErrorCode::invalid_argument,
                        {"target: 'nonesuch' is not a SIMD target this build runs on this CPU; "
                         "expected one of " + supported_list()});
    // A known target serves every algorithm.
    const std::string known = memattn::supported_targets().back();
    o.options.target = known.c_str();
    EXPECT_NO_THROW(o.forward());
    if (has_backward) EXPECT_NO_THROW(o.backward());
  }
}

// The C API range-checks its own enum fields first, with its own names; the C++ check behind it
// never sees those values, and a bad target name reaches C++ once and comes back unchanged.
TEST(ErrorsHostile, err_enum_c_api_reports_once) {
  float data[16] = {};
  const memattn_tensor t{data, MEMATTN_F32, 4, {1, 1, 1, 4}, {4, 4, 4, 1}};
  memattn_tensor out = t;
  float out_data[4] = {};
  out.data = out_data;
  memattn_options options = memattn_options_default();
  options.algorithm = memattn_algorithm(42);
  EXPECT_EQ(memattn_forward(&t, &t, &t, &out, nullptr, &options, {}), MEMATTN_INVALID_ARGUMENT);
  const std::string algorithm_message = memattn_last_error();
  EXPECT_EQ(algorithm_message.find("options.algorithm: expected one of MEMATTN_ALGORITHM_AUTOMATIC (0)"), 0u)
      << algorithm_message;
  EXPECT_EQ(algorithm_message.find("options.algorithm", 1), std::string::npos) << algorithm_message;

  options = memattn_options_default();
  options.algorithm = MEMATTN_ALGORITHM_NAIVE;
  options.target = "nonesuch";
  EXPECT_EQ(memattn_forward(&t, &t, &t, &out, nullptr, &options, {}), MEMATTN_INVALID_ARGUMENT);
  const std::string target_message = memattn_last_error();
  EXPECT_EQ(target_message.find("target: 'nonesuch' is not a SIMD target"), 0u) << target_message;
}

namespace {

// A view whose every element is the one float at `data` (all strides 0): any shape, no memory.
Tensor broadcast(float* data, std::initializer_list<int64_t> shape) {
  Tensor t = Tensor::contiguous(data, DType::f32, shape);
  t.strides = {0, 0, 0, 0};
  return t;
}

// An output of `shape` without memory: valid only when some dimension is 0.
Tensor nothing(std::initializer_list<int64_t> shape) { return broadcast(nullptr, shape); }

// q, k, v (and backward's out, dout, lse, which are inputs there) broadcast from one float each,
// so that any shape costs no memory; the outputs have no elements where the shape says so.
struct HugeCall {
  int64_t batch, seq_q, seq_k, heads_q, heads_kv, dim, dim_v;
  float q_value = 0.5f, k_value = 0.25f, v_value = 2.0f, lse_value = 1.0f;
  Options options;

  HugeCall(int64_t batch, int64_t seq_q, int64_t seq_k, int64_t heads_q, int64_t heads_kv, int64_t dim,
           int64_t dim_v)
      : batch(batch), seq_q(seq_q), seq_k(seq_k), heads_q(heads_q), heads_kv(heads_kv), dim(dim), dim_v(dim_v) {}

  Tensor q() { return broadcast(&q_value, {batch, seq_q, heads_q, dim}); }
  Tensor k() { return broadcast(&k_value, {batch, seq_k, heads_kv, dim}); }
  Tensor v() { return broadcast(&v_value, {batch, seq_k, heads_kv, dim_v}); }

  // The entry points of `entries` must each fail with size_overflow and `parts`. forward and
  // backward need outputs without elements (a 0 among batch, seq_q, heads_q and dim_v, resp. every
  // gradient's dims); the workspace queries take any shape.
  void expect_overflow(unsigned entries, const std::vector<std::string>& parts) {
    const Tensor out = broadcast(&v_value, {batch, seq_q, heads_q, dim_v});
    const Tensor lse = broadcast(&lse_value, {batch, heads_q, seq_q});
    if (entries & kForward) {
      SCOPED_TRACE("forward");
      expect_error([&] { memattn::forward(q(), k(), v(), nothing({batch, seq_q, heads_q, dim_v}), nullptr, options); },
                   ErrorCode::size_overflow, parts);
    }
    if (entries & kWorkspace) {
      SCOPED_TRACE("workspace_bytes");
      expect_error([&] { (void)memattn::workspace_bytes(q(), k(), v(), options); }, ErrorCode::size_overflow, parts);
    }
    if (entries & kBackward) {
      SCOPED_TRACE("backward");
      expect_error(
          [&] {
            memattn::backward(q(), k(), v(), out, out, lse, nothing({batch, seq_q, heads_q, dim}),
                              nothing({batch, seq_k, heads_kv, dim}), nothing({batch, seq_k, heads_kv, dim_v}),
                              options);
          },
          ErrorCode::size_overflow, parts);
    }
    if (entries & kBackwardWorkspace) {
      SCOPED_TRACE("backward_workspace_bytes");
      expect_error([&] { (void)memattn::backward_workspace_bytes(q(), k(), v(), options); },
                   ErrorCode::size_overflow, parts);
    }
  }
};

// The option sets of the huge-size tests: the index arithmetic of each mask is what overflowed.
std::vector<Options> mask_variants() {
  std::vector<Options> variants(5);
  variants[1].causal = true;
  variants[2].causal = true;
  variants[2].align = Align::bottom_right;
  variants[2].window_left = 3;
  variants[3].window_left = variants[3].window_right = kMax;
  variants[4].align = Align::bottom_right;
  variants[4].window_left = 0;
  variants[4].window_right = kMax - 1;
  return variants;
}

}  // namespace

// Sequences near 2^62 (stride-0 inputs, outputs without elements): the mask bounds and chunk
// counts would pass int64, so the sizes are refused up front whatever the options.
TEST(ErrorsHostile, err_huge_sequences) {
  const struct {
    int64_t seq_q, seq_k, dim;
    unsigned entries;
  } shapes[] = {
      {k2e62, k2e62, 0, kEveryEntry},
      {kMax, 1, 0, kEveryEntry},
      {1, kMax, 0, kEveryEntry},
      {1, k2e62, 1, kWorkspace | kBackwardWorkspace},
      {k2e62, 3, 1, kWorkspace | kBackwardWorkspace},
  };
  for (const auto& shape : shapes)
    for (const Options& options : mask_variants()) {
      SCOPED_TRACE("seq_q " + std::to_string(shape.seq_q) + " seq_k " + std::to_string(shape.seq_k) +
                   " causal " + std::to_string(options.causal) + " window " +
                   std::to_string(options.window_left) + "," + std::to_string(options.window_right));
      HugeCall call{1, shape.seq_q, shape.seq_k, 1, 1, shape.dim, shape.dim};
      call.options = options;
      call.expect_overflow(shape.entries,
                           {"2 * max(seq_q, seq_k) overflows int64 (seq_q " + std::to_string(shape.seq_q) +
                            ", seq_k " + std::to_string(shape.seq_k) + ")"});
    }
}

// batch * heads * seq: the work items and row counts of every pass.
TEST(ErrorsHostile, err_huge_row_counts) {
  const int64_t e32 = int64_t(1) << 32, e40 = int64_t(1) << 40;
  HugeCall pairs{e32, 1, 1, e32, e32, 0, 0};
  pairs.expect_overflow(kEveryEntry,
                        {"batch * heads_q overflows int64 (batch 4294967296, heads_q 4294967296)"});
  HugeCall rows{1, e40, e40, e32, e32, 0, 0};
  rows.expect_overflow(kEveryEntry, {"batch * heads_q * seq_q overflows int64 (batch 1, "
                                     "heads_q 4294967296, seq_q 1099511627776)"});
  // (forward is left out: without the check it would walk 2^32 heads of 2^40 keys each)
  HugeCall keys{1, 1, e40, e32, e32, 0, 0};
  keys.expect_overflow(kWorkspace | kBackward | kBackwardWorkspace,
                       {"batch * heads_kv * seq_k overflows int64 (batch 1, heads_kv 4294967296, "
                        "seq_k 1099511627776)"});
}

// Head dims near 2^62: the planners' per-key sizes would pass int64. With batch 0 nothing has an
// element, and still the sizes are refused rather than planned with wrapped values.
TEST(ErrorsHostile, err_huge_head_dims) {
  const std::string parts = "4 * (dim + dim_v + 1) overflows int64 (dim ";
  HugeCall empty{0, 1, 1, 1, 1, k2e62, k2e62};
  empty.expect_overflow(kEveryEntry, {parts + std::to_string(k2e62) + ", dim_v " + std::to_string(k2e62) + ")"});
  HugeCall wide{1, 2, 3, 1, 1, int64_t(1) << 61, int64_t(1) << 60};
  wide.expect_overflow(kWorkspace | kBackwardWorkspace, {parts + std::to_string(int64_t(1) << 61)});
  // Just inside the bound, the flash workspace itself is what overflows.
  HugeCall inside{1, 2, 3, 1, 1, int64_t(1) << 59, int64_t(1) << 59};
  inside.expect_overflow(kWorkspace | kBackwardWorkspace, {"workspace size overflows"});
}

// The largest accepted sequence (2^62 - 1 keys, stride 0) with masks that leave each row a few keys
// near either end: cheap, and exact. Every key holds the same k and v, so a row that sees n keys
// has out = v and lse = score + log n.
TEST(ErrorsHostile, err_huge_sequences_largest_accepted_is_exact) {
  const int64_t seq_k = k2e62 - 1, seq_q = 4, heads = 2, dim = 1;  // seq_k * dim elements fit int64
  Buf q(DType::f32, {1, seq_q, heads, dim}), out(DType::f32, {1, seq_q, heads, dim}),
      lse(DType::f32, {1, heads, seq_q});
  fill_randn(q, 5);
  float k_value = 0.75f, v_value = 2.0f;
  const Tensor k = broadcast(&k_value, {1, seq_k, 1, dim}), v = broadcast(&v_value, {1, seq_k, 1, dim});
  const struct {
    const char* name;
    bool causal;
    Align align;
    int64_t window_left, window_right;
    int64_t (*keys_seen)(int64_t row);
  } masks[] = {
      {"causal top-left, window 1 left", true, Align::top_left, 1, -1,
       [](int64_t i) { return std::min<int64_t>(i + 1, 2); }},
      {"causal bottom-right, window 2 left", true, Align::bottom_right, 2, -1,
       [](int64_t) { return int64_t(3); }},
      {"bottom-right, window 2 left and unbounded right", false, Align::bottom_right, 2, kMax,
       [](int64_t i) { return 6 - i; }},
  };
  for (const auto& mask : masks)
    for (Algorithm alg : {Algorithm::automatic, Algorithm::sequential}) {
      SCOPED_TRACE(std::string(mask.name) + ", " + memattn::algorithm_name(alg));
      Options o;
      o.algorithm = alg;
      o.causal = mask.causal;
      o.align = mask.align;
      o.window_left = mask.window_left;
      o.window_right = mask.window_right;
      Tensor lse_view = lse.view();
      out.fill(-7.25);
      ASSERT_NO_THROW(memattn::forward(q.view(), k, v, out.view(), &lse_view, o));
      for (double x : out.values()) ASSERT_EQ(x, 2.0);
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t i = 0; i < seq_q; ++i) {
          double score = 0;
          for (int64_t c = 0; c < dim; ++c) score += q.get((i * heads + h) * dim + c) * k_value;
          score *= double(float(1 / std::sqrt(double(dim))));
          const double want = score + std::log(double(mask.keys_seen(i)));
          EXPECT_NEAR(lse.get(h * seq_q + i), want, 1e-5 * std::max(1.0, std::fabs(want))) << "row " << i;
        }
      EXPECT_GT(memattn::workspace_bytes(q.view(), k, v, o), 0u);
    }
  // One key more and the same call is refused.
  const Tensor k_over = broadcast(&k_value, {1, k2e62, 1, dim}), v_over = broadcast(&v_value, {1, k2e62, 1, dim});
  Options o;
  o.causal = true;
  expect_error([&] { memattn::forward(q.view(), k_over, v_over, out.view(), nullptr, o); },
               ErrorCode::size_overflow, {"2 * max(seq_q, seq_k) overflows int64"}, {&out});
}

// Sizing huge problems is planning only: chunk sizes stop growing with the sequences, so the
// workspace of 2^62 - 1 queries and keys is that of 2^20, and the thread count still decides how
// many slices there are (the work estimate, far beyond int64, is capped at the thread count).
TEST(ErrorsHostile, err_huge_sequences_workspace_is_planned_exactly) {
  for (int threads : {1, 2, 3}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    HugeCall huge{1, k2e62 - 1, k2e62 - 1, 2, 1, 1, 1};
    HugeCall small{1, 1 << 20, 1 << 20, 2, 1, 1, 1};
    huge.options.num_threads = small.options.num_threads = threads;
    for (bool causal : {false, true}) {
      huge.options.causal = small.options.causal = causal;
      EXPECT_EQ(memattn::workspace_bytes(huge.q(), huge.k(), huge.v(), huge.options),
                memattn::workspace_bytes(small.q(), small.k(), small.v(), small.options));
      EXPECT_EQ(memattn::backward_workspace_bytes(huge.q(), huge.k(), huge.v(), huge.options),
                memattn::backward_workspace_bytes(small.q(), small.k(), small.v(), small.options));
    }
  }
}

// Windows are clamped to max(seq_q, seq_k), which already reaches every key from every row: each
// window up to one past that matches Ref64 (which applies it unclamped), and INT64_MAX gives
// bitwise the unbounded result.
TEST(ErrorsHostile, err_window_clamp_is_exact) {
  for (auto [sq, sk] : {std::pair<int64_t, int64_t>{5, 9}, {9, 5}})
    for (Align align : {Align::top_left, Align::bottom_right})
      for (Algorithm alg : {Algorithm::naive, Algorithm::sequential, Algorithm::chunked, Algorithm::flash}) {
        SCOPED_TRACE("Sq " + std::to_string(sq) + " Sk " + std::to_string(sk) + " " +
                     memattn::algorithm_name(alg) + (align == Align::top_left ? " top-left" : " bottom-right"));
        Case unbounded(Shape{1, sq, sk, 2, 1, 8, 8}, DType::f32, 17);
        unbounded.options.algorithm = alg;
        unbounded.options.align = align;
        unbounded.options.key_chunk = 4;
        unbounded.run();
        for (bool left : {true, false})
          for (int64_t w = 0; w <= std::max(sq, sk) + 1; ++w) {
            Case c(Shape{1, sq, sk, 2, 1, 8, 8}, DType::f32, 17);
            c.options = unbounded.options;
            (left ? c.options.window_left : c.options.window_right) = w;
            SCOPED_TRACE((left ? "window_left " : "window_right ") + std::to_string(w));
            expect_accurate(c);
          }
        for (bool left : {true, false}) {
          Case c(Shape{1, sq, sk, 2, 1, 8, 8}, DType::f32, 17);
          c.options = unbounded.options;
          (left ? c.options.window_left : c.options.window_right) = kMax;
          c.run();
          EXPECT_EQ(bitwise_difference(c.out, unbounded.out), "") << (left ? "left" : "right");
          EXPECT_EQ(bitwise_difference(c.lse, unbounded.lse), "") << (left ? "left" : "right");
        }
      }
}

// head_dim 0 with null q and k (legal: they have no elements): every score is 0, so out is the
// mean of v over the keys, and the gradients of q and k are empty while dv is dout / Sk; no
// address is formed from the null bases (UBSan, found by fuzzing).
TEST(Errors, err_null_and_empty_head_dim_0_with_null_q_and_k) {
  const int64_t S = 3, Dv = 2;
  std::vector<float> v{1, 2, 3, 4, 5, 6}, out(S * Dv, -1.0f), lse(S), dout(S * Dv, 1.0f), dv(S * Dv);
  const Tensor q = Tensor::contiguous(nullptr, DType::f32, {1, S, 1, 0});
  const Tensor vt = Tensor::contiguous(v.data(), DType::f32, {1, S, 1, Dv});
  const Tensor ot = Tensor::contiguous(out.data(), DType::f32, {1, S, 1, Dv});
  const Tensor lt = Tensor::contiguous(lse.data(), DType::f32, {1, 1, S});
  for (Algorithm alg : {Algorithm::naive, Algorithm::sequential, Algorithm::chunked, Algorithm::flash}) {
    SCOPED_TRACE(memattn::algorithm_name(alg));
    Options o;
    o.algorithm = alg;
    memattn::forward(q, q, vt, ot, &lt, o);
    for (int64_t i = 0; i < S; ++i)
      for (int64_t e = 0; e < Dv; ++e) EXPECT_FLOAT_EQ(out[size_t(i * Dv + e)], (v[size_t(e)] + v[size_t(Dv + e)] + v[size_t(2 * Dv + e)]) / 3);
    if (alg != Algorithm::naive && alg != Algorithm::flash) continue;
    memattn::backward(q, q, vt, ot, Tensor::contiguous(dout.data(), DType::f32, {1, S, 1, Dv}), lt, q, q,
                      Tensor::contiguous(dv.data(), DType::f32, {1, S, 1, Dv}), o);
    for (float g : dv) EXPECT_FLOAT_EQ(g, 1.0f);  // each key gets 1/3 of each of the 3 rows' dout
  }
}
