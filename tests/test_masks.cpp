// Masks of TESTPLAN section B: whole key chunks masked (16), broadcast masks and biases (29),
// causal alignment (30) and sliding windows, each against an explicit mask or Ref64.
#include <gtest/gtest.h>

#include <functional>

#include "support.hpp"

using namespace mt;
using memattn::Algorithm;
using memattn::Align;

namespace {

const DType kDtypes[] = {DType::f32, DType::bf16, DType::f16, DType::f64};
const DType kBiasDtypes[] = {DType::f32, DType::bf16, DType::f16};

// A [Sq, Sk] mask with mask[i][j] = allow(i, j).
std::vector<uint8_t> mask_of(int64_t sq, int64_t sk, const std::function<bool(int64_t, int64_t)>& allow) {
  std::vector<uint8_t> m(size_t(sq * sk));
  for (int64_t i = 0; i < sq; ++i)
    for (int64_t j = 0; j < sk; ++j) m[size_t(i * sk + j)] = allow(i, j);
  return m;
}

// Runs `a` and `b` (the same problem stated two ways) with every algorithm and expects bitwise
// equal out and lse; then `a` (whose buffers hold the plain problem) against Ref64.
void expect_same_bits(Case& a, Case& b) {
  for (Algorithm alg : algorithms_for(a.dtype)) {
    a.options.algorithm = b.options.algorithm = alg;
    a.run();
    b.run();
    EXPECT_EQ(bitwise_difference(a.out, b.out), "") << describe(a) << " vs " << describe(b);
    EXPECT_EQ(bitwise_difference(a.lse, b.lse), "") << describe(a) << " vs " << describe(b);
  }
  expect_accurate_all(a);
}

}  // namespace

TEST(Masks, num_chunk_fully_masked) {
  // pytorch#127055: S = 600 with key chunks of 64 (10 chunks); a band where every row sees
  // exactly 10 keys, so most chunks are fully masked for most rows.
  const int64_t S = 600;
  const Shape s{1, S, S, 1, 1, 8, 8};
  const auto band = [](int64_t i, int64_t j) {
    const int64_t lo = std::clamp<int64_t>(i - 4, 0, S - 10);
    return j >= lo && j < lo + 10;
  };
  // Rows alternately hide exactly key chunk 0 and exactly the last key chunk (keys 576..599).
  const auto first_or_last = [](int64_t i, int64_t j) { return i % 2 ? j >= 64 : j < 576; };
  for (DType dt : kDtypes)
    for (const auto& allow :
         {std::function<bool(int64_t, int64_t)>(band), std::function<bool(int64_t, int64_t)>(first_or_last)})
      for (int64_t chunk : {int64_t(64), int64_t(0)}) {
        Case c(s, dt, 201);
        c.options.query_chunk = chunk;
        c.options.key_chunk = chunk;
        c.set_mask({1, 1, S, S}, mask_of(S, S, allow));
        SCOPED_TRACE(describe(c));
        expect_accurate_all(c);
        for (double x : c.out_values()) ASSERT_FALSE(std::isnan(x));
      }
  // The same band through the window options (no mask): keys i-4 .. i+5 around the diagonal.
  for (DType dt : kDtypes) {
    Case c(s, dt, 202);
    c.options.key_chunk = 64;
    c.options.window_left = 4;
    c.options.window_right = 5;
    SCOPED_TRACE(describe(c));
    expect_accurate_all(c);
  }
}

namespace {

// Target dims [B, H, Sq, Sk] of the broadcast tests and the shape a pattern keeps of them.
const int64_t kTarget[4] = {2, 3, 9, 13};

std::vector<int64_t> pattern_shape(int bits) {
  std::vector<int64_t> shape(4);
  for (int d = 0; d < 4; ++d) shape[size_t(d)] = bits & (1 << d) ? kTarget[d] : 1;
  return shape;
}

// The pattern's values expanded to the full target, row-major.
std::vector<double> materialise(const std::vector<double>& values, const std::vector<int64_t>& shape) {
  std::vector<double> full;
  for (int64_t b = 0; b < kTarget[0]; ++b)
    for (int64_t h = 0; h < kTarget[1]; ++h)
      for (int64_t i = 0; i < kTarget[2]; ++i)
        for (int64_t j = 0; j < kTarget[3]; ++j) {
          const int64_t idx[4] = {b, h, i, j};
          int64_t off = 0;
          for (int d = 0; d < 4; ++d) off = off * shape[size_t(d)] + (shape[size_t(d)] == 1 ? 0 : idx[d]);
          full.push_back(values[size_t(off)]);
        }
  return full;
}

// The three ways to pass one broadcast operand: its own shape with size-1 dims, a full-shape view
// with stride 0 on the broadcast dims, and the materialised full tensor.
enum class Form { size_one_dims, stride_zero_view, materialised };

// Installs `values` (pattern `shape`) in `c` as mask or bias in `form`.
void install(Case& c, bool as_mask, DType bias_dt, const std::vector<double>& values,
             const std::vector<int64_t>& shape, Form form) {
  const std::vector<int64_t> full(kTarget, kTarget + 4);
  const bool materialised = form == Form::materialised;
  const std::vector<double> v = materialised ? materialise(values, shape) : values;
  const std::vector<int64_t>& sh = materialised ? full : shape;
  if (as_mask) {
    c.set_mask(sh, std::vector<uint8_t>(v.begin(), v.end()));
    // Raw bytes as given (set() stores 0/1): any nonzero byte means attend.
    for (size_t x = 0; x < v.size(); ++x) c.mask->bytes[x] = uint8_t(v[x]);
  } else {
    c.set_bias(sh, bias_dt, v);
  }
  if (form != Form::stride_zero_view) return;
  Tensor& t = as_mask ? c.mask_view : c.bias_view;
  for (int d = 0; d < 4; ++d)
    if (shape[size_t(d)] == 1) t.shape[d] = kTarget[d], t.strides[d] = 0;
}

}  // namespace

TEST(Masks, num_mask_broadcast) {
  const Shape s{kTarget[0], kTarget[2], kTarget[3], kTarget[1], 1, 8, 8};
  std::mt19937_64 g(211);
  for (bool as_mask : {true, false})
    for (int bits = 0; bits < 16; ++bits)
      for (int rotation = 0; rotation < 2; ++rotation) {
        // Broadcasting is dtype-independent: each pattern runs in two of the four dtypes.
        const DType dt = kDtypes[(bits + 2 * rotation + as_mask) % 4];
        const std::vector<int64_t> shape = pattern_shape(bits);
        int64_t n = 1;
        for (int64_t d : shape) n *= d;
        std::vector<double> values(static_cast<size_t>(n));
        // Masks keep ~75%; biases are randn.
        std::uniform_int_distribution<int> keep(0, 3);
        std::normal_distribution<double> randn;
        for (double& x : values) x = as_mask ? keep(g) * 85 : randn(g);  // mask bytes 0, 85, 170, 255
        values[0] = as_mask ? 255 : values[0];  // so that no pattern masks everything
        const DType bias_dt = dt == DType::f64 ? DType::f64 : kBiasDtypes[bits % 3];
        Case full(s, dt, 212);
        install(full, as_mask, bias_dt, values, shape, Form::materialised);
        for (Form form : {Form::size_one_dims, Form::stride_zero_view}) {
          Case c(s, dt, 212);
          install(c, as_mask, bias_dt, values, shape, form);
          for (Case* x : {&c, &full}) x->options.query_chunk = 4, x->options.key_chunk = 8;
          SCOPED_TRACE("pattern " + std::to_string(bits) + " form " + std::to_string(int(form)));
          expect_same_bits(c, full);
        }
      }
}

TEST(Masks, num_mask_broadcast_noncontiguous_bias) {
  // A full bias stored [B, H, Sk, Sq] (transposed view) and one read with last-dim stride 2 from
  // a NaN-filled wider buffer: both bitwise equal to the contiguous bias.
  const Shape s{2, 9, 13, 3, 3, 8, 8};
  for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
    Case plain(s, dt, 221), transposed(s, dt, 221), strided(s, dt, 221);
    std::mt19937_64 g(222);
    std::normal_distribution<double> randn;
    std::vector<double> bias(size_t(2 * 3 * 9 * 13));
    for (double& x : bias) x = randn(g);
    plain.set_bias({2, 3, 9, 13}, dt, bias);
    std::vector<double> t(bias.size());
    for (int64_t bh = 0; bh < 6; ++bh)
      for (int64_t i = 0; i < 9; ++i)
        for (int64_t j = 0; j < 13; ++j)
          t[size_t((bh * 13 + j) * 9 + i)] = bias[size_t((bh * 9 + i) * 13 + j)];
    transposed.set_bias({2, 3, 13, 9}, dt, t);
    transposed.bias_view.shape = {2, 3, 9, 13};
    transposed.bias_view.strides = {3 * 13 * 9, 13 * 9, 1, 9};
    std::vector<double> wide(bias.size() * 2, std::numeric_limits<double>::quiet_NaN());
    for (size_t x = 0; x < bias.size(); ++x) wide[2 * x] = bias[x];
    strided.set_bias({2, 3, 9, 26}, dt, wide);
    strided.bias_view.shape = {2, 3, 9, 13};
    strided.bias_view.strides = {3 * 9 * 26, 9 * 26, 26, 2};
    for (Case* c : {&plain, &transposed, &strided}) c->options.query_chunk = 4, c->options.key_chunk = 8;
    expect_same_bits(plain, transposed);
    expect_same_bits(plain, strided);
  }
}

namespace {

// `built` uses causal/window options; `explicit_` the same visibility as a bool mask computed
// from the documented rule; both must give the same bits.
void expect_matches_explicit(DType dt, int64_t sq, int64_t sk, bool causal, Align align, int64_t left,
                             int64_t right) {
  const Shape s{2, sq, sk, 2, 1, 8, 8};
  Case built(s, dt, 231), explicit_(s, dt, 231);
  built.options.causal = causal;
  built.options.align = align;
  built.options.window_left = left;
  built.options.window_right = right;
  const int64_t diag = align == Align::bottom_right ? sk - sq : 0;
  explicit_.set_mask({1, 1, sq, sk}, mask_of(sq, sk, [&](int64_t i, int64_t j) {
                       if (causal && j > i + diag) return false;
                       if (left >= 0 && j < i + diag - left) return false;
                       return right < 0 || j <= i + diag + right;
                     }));
  for (Case* c : {&built, &explicit_}) c->options.query_chunk = 4, c->options.key_chunk = 8;
  SCOPED_TRACE(describe(built));
  expect_same_bits(built, explicit_);
}

}  // namespace

TEST(Masks, num_causal_alignment) {
  for (DType dt : kDtypes)
    for (const auto& [sq, sk] : {std::pair{7, 23}, std::pair{23, 7}, std::pair{17, 17}})
      for (Align align : {Align::top_left, Align::bottom_right})
        expect_matches_explicit(dt, sq, sk, true, align, -1, -1);
}

TEST(Masks, sliding_window) {
  struct Window {
    bool causal;
    int64_t left, right;
  };
  // Left only, right only, both, with causal, the diagonal alone, wider than the sequences.
  const Window windows[] = {{false, 3, -1}, {false, -1, 2},  {false, 4, 1}, {true, 5, -1},
                            {false, 0, 0},  {true, 100, -1}, {false, 0, 50}};
  // Each (shape, alignment, window) in one dtype, rotating through all four.
  int rotation = 0;
  for (const auto& [sq, sk] : {std::pair{9, 30}, std::pair{30, 9}, std::pair{21, 21}})
    for (Align align : {Align::top_left, Align::bottom_right})
      for (const Window& w : windows)
        expect_matches_explicit(kDtypes[rotation++ % 4], sq, sk, w.causal, align, w.left, w.right);
}
