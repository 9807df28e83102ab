// Layout errors, TESTPLAN cases 8 and 9: self-overlapping outputs and outputs that alias an input
// are rejected before anything is written, while every legitimate layout (negative strides, input
// last-dim stride 2, interleaved views of one packed buffer) is accepted and gives bitwise the
// result of the contiguous run.
#include <gtest/gtest.h>

#include <cmath>

#include "fault_support.hpp"
#include "support.hpp"

using namespace mt;
using memattn::Algorithm;
using memattn::ErrorCode;

namespace {

constexpr Algorithm kAlgorithms[] = {Algorithm::naive, Algorithm::sequential, Algorithm::chunked,
                                     Algorithm::flash};

// Element offset of row-major element `linear` of `shape` under `strides`.
int64_t strided_offset(int64_t linear, const std::vector<int64_t>& shape,
                       const std::vector<int64_t>& strides) {
  int64_t offset = 0;
  for (size_t d = shape.size(); d-- > 0;) {
    offset += (linear % shape[d]) * strides[d];
    linear /= shape[d];
  }
  return offset;
}

// A logical tensor stored with arbitrary element strides at `offset` inside `storage`.
struct Placed {
  Buf* storage;
  int64_t offset;
  std::vector<int64_t> shape, strides;

  Tensor view() const {
    Tensor t;
    t.data = static_cast<unsigned char*>(storage->data()) + offset * memattn::dtype_size(storage->dtype);
    t.dtype = storage->dtype;
    t.ndim = int(shape.size());
    for (size_t d = 0; d < shape.size(); ++d) t.shape[d] = shape[d], t.strides[d] = strides[d];
    return t;
  }
  void write(const Buf& src) const {
    for (int64_t i = 0; i < src.numel(); ++i) storage->set(offset + strided_offset(i, shape, strides), src.get(i));
  }
  Buf read() const {  // back to a contiguous buffer, value for value (bitwise for non-NaN)
    Buf out(storage->dtype, shape);
    for (int64_t i = 0; i < out.numel(); ++i) out.set(i, storage->get(offset + strided_offset(i, shape, strides)));
    return out;
  }
};

// `src` copied into a fresh buffer with `strides` (any signs); the other elements hold `pad`.
struct Relaid {
  Buf storage;
  Placed placed;
  Relaid(const Buf& src, std::vector<int64_t> strides, double pad) {
    int64_t lo = 0, hi = 0;
    for (size_t d = 0; d < src.shape.size(); ++d)
      (strides[d] < 0 ? lo : hi) += (src.shape[d] - 1) * strides[d];
    storage = Buf(src.dtype, {hi - lo + 1});
    storage.fill(pad);
    placed = Placed{&storage, -lo, src.shape, std::move(strides)};
    placed.write(src);
  }
  Relaid(const Relaid&) = delete;
};

// The contiguous run of `c` (out and lse), against which every other layout must be bitwise equal.
struct Expected {
  std::vector<unsigned char> out, lse;
};
Expected contiguous_run(Case& c) {
  c.run();
  return {c.out.bytes, c.lse.bytes};
}

}  // namespace

TEST(Errors, err_stride_constraints) {
  Case c(Shape{2, 16, 16, 2, 2, 8, 8}, DType::f32);
  Call zero(c);
  zero.out.strides[1] = 0;
  expect_call_error(c, zero, ErrorCode::invalid_argument,
                    {"out: stride[1] is 0 on a dimension of size 16; an output must not overlap itself"},
                    Sizing::not_involved);
  Call heads(c);
  heads.out.strides[2] = 1;
  expect_call_error(c, heads, ErrorCode::invalid_argument,
                    {"out: strides [256,16,1,1] with shape [2,16,2,8] make elements overlap"},
                    Sizing::not_involved);
  Call spread(c);
  spread.out.strides[3] = -2;  // 8 features reach 14 elements, past the head stride of 8
  expect_call_error(c, spread, ErrorCode::invalid_argument,
                    {"out: strides [256,16,8,-2] with shape [2,16,2,8] make elements overlap"},
                    Sizing::not_involved);
  Call lse(c);
  lse.lse.strides[2] = 0;
  expect_call_error(c, lse, ErrorCode::invalid_argument, {"lse: stride[2] is 0 on a dimension of size 16"},
                    Sizing::not_involved);

  // Stride 0 on a size-1 output dim writes each element once: accepted.
  Case one(Shape{1, 16, 16, 2, 2, 8, 8}, DType::f32);
  const Expected want = contiguous_run(one);
  Call call(one);
  call.out.strides[0] = 0;
  call.lse.strides[0] = 0;
  one.out.fill(-7.25);
  call.forward();
  EXPECT_EQ(one.out.bytes, want.out);
  EXPECT_EQ(one.lse.bytes, want.lse);
}

TEST(Errors, err_stride_constraints_negative_strides_work) {
  for (DType dt : {DType::f32, DType::bf16})
    for (Algorithm alg : kAlgorithms) {
      SCOPED_TRACE(std::string(memattn::dtype_name(dt)) + " " + memattn::algorithm_name(alg));
      const Shape s{2, 37, 29, 4, 2, 24, 20};
      Case c(s, dt, 13);
      c.options.algorithm = alg;
      c.options.query_chunk = 8;
      c.options.key_chunk = 16;
      std::vector<double> bias_values(size_t(s.B * s.Sq * s.Sk));
      for (size_t i = 0; i < bias_values.size(); ++i) bias_values[i] = std::sin(double(i));
      c.set_bias({s.B, 1, s.Sq, s.Sk}, DType::f32, bias_values);
      const Expected want = contiguous_run(c);

      // Each operand reversed along different dims (features included).
      Relaid q(c.q, {s.Sq * s.Hq * s.D, -s.Hq * s.D, s.D, -1}, 0);
      Relaid k(c.k, {-s.Sk * s.Hkv * s.D, s.Hkv * s.D, -s.D, 1}, 0);
      Relaid v(c.v, {s.Sk * s.Hkv * s.Dv, -s.Hkv * s.Dv, -s.Dv, -1}, 0);
      Relaid bias(*c.bias, {-s.Sq * s.Sk, s.Sq * s.Sk, s.Sk, -1}, 0);
      Relaid out(c.out, {-s.Sq * s.Hq * s.Dv, -s.Hq * s.Dv, s.Dv, -1}, -7.25);
      Relaid lse(c.lse, {s.Hq * s.Sq, -s.Sq, -1}, -7.25);
      memattn::Options o = c.options;
      const Tensor bias_view = bias.placed.view(), lse_view = lse.placed.view();
      o.bias = &bias_view;
      memattn::forward(q.placed.view(), k.placed.view(), v.placed.view(), out.placed.view(), &lse_view, o);
      EXPECT_EQ(out.placed.read().bytes, want.out);
      EXPECT_EQ(lse.placed.read().bytes, want.lse);

      // Keys and values in reverse sequence order with contiguous rows: the layout the flash
      // path would read in place, were it not for the negative row pitch (UB found by fuzzing).
      Relaid k_rows(c.k, {s.Sk * s.Hkv * s.D, -s.Hkv * s.D, s.D, 1}, 0);
      Relaid v_rows(c.v, {s.Sk * s.Hkv * s.Dv, -s.Hkv * s.Dv, s.Dv, 1}, 0);
      Relaid out2(c.out, {s.Sq * s.Hq * s.Dv, s.Hq * s.Dv, s.Dv, 1}, -7.25);
      memattn::forward(c.q.view(), k_rows.placed.view(), v_rows.placed.view(), out2.placed.view(),
                       nullptr, o);
      EXPECT_EQ(out2.placed.read().bytes, want.out);
    }
}

TEST(Errors, err_stride_constraints_input_last_dim_stride_2_works) {
  for (DType dt : {DType::f32, DType::bf16, DType::f16})
    for (Algorithm alg : kAlgorithms) {
      SCOPED_TRACE(std::string(memattn::dtype_name(dt)) + " " + memattn::algorithm_name(alg));
      const Shape s{2, 21, 35, 2, 1, 17, 9};
      Case c(s, dt, 17);
      c.options.algorithm = alg;
      c.options.key_chunk = 16;
      const Expected want = contiguous_run(c);
      // Every other element; the gaps are NaN, so reading one would show in the output.
      const auto doubled = [](const Buf& b) {
        std::vector<int64_t> st(4);
        for (int64_t d = 3, step = 2; d >= 0; step *= b.shape[size_t(d)], --d) st[size_t(d)] = step;
        return st;
      };
      Relaid q(c.q, doubled(c.q), NAN), k(c.k, doubled(c.k), NAN), v(c.v, doubled(c.v), NAN);
      Tensor lse = c.lse.view();
      c.out.fill(-7.25);
      memattn::forward(q.placed.view(), k.placed.view(), v.placed.view(), c.out.view(), &lse, c.options);
      EXPECT_EQ(c.out.bytes, want.out);
      EXPECT_EQ(c.lse.bytes, want.lse);
    }
}

TEST(Errors, err_alias_output) {
  const Shape s{2, 16, 16, 2, 2, 8, 8};  // q, k, v and out all [2,16,2,8]
  Case c(s, DType::f32);
  const std::string single = " refer to a single memory location";
  for (auto [member, name] : {std::pair{&Call::q, "q"}, std::pair{&Call::k, "k"}, std::pair{&Call::v, "v"}}) {
    SCOPED_TRACE(name);
    Call same(c);
    same.out = same.*member;
    expect_error([&] { same.forward(); }, ErrorCode::aliasing,
                 {std::string("some elements of out and ") + name + single}, {&c.lse});
  }
  // out one head row behind q in a shared buffer: a partial overlap.
  Buf shared(DType::f32, {c.q.numel() + s.D});
  const Placed q_in_shared{&shared, 0, c.q.shape, {256, 16, 8, 1}};
  q_in_shared.write(c.q);
  Call shifted(c);
  shifted.q = q_in_shared.view();
  shifted.out = Placed{&shared, s.D, c.out.shape, {256, 16, 8, 1}}.view();
  expect_error([&] { shifted.forward(); }, ErrorCode::aliasing, {"out and q" + single}, {&shared, &c.lse});

  Case masked(s, DType::f32);
  masked.set_bias({2, 2, 16, 16}, DType::f32, std::vector<double>(1024, 0.5));
  Call bias(masked);
  bias.out = Tensor::contiguous(masked.bias->data(), DType::f32, {2, 16, 2, 8});
  expect_error([&] { bias.forward(); }, ErrorCode::aliasing, {"out and bias" + single},
               {&*masked.bias, &masked.lse});
  Call mask(c);
  const Tensor mask_in_out = Tensor::contiguous(c.out.data(), DType::u8, {1, 1, 16, 16});
  mask.options.mask = &mask_in_out;
  expect_error([&] { mask.forward(); }, ErrorCode::aliasing, {"out and mask" + single}, {&c.out, &c.lse});
  Call lse_out(c);
  lse_out.lse = Tensor::contiguous(c.out.data(), DType::f32, {2, 2, 16});
  expect_error([&] { lse_out.forward(); }, ErrorCode::aliasing, {"out and lse" + single}, {&c.out});
  Call lse_q(c);
  lse_q.lse = Tensor::contiguous(c.q.data(), DType::f32, {2, 2, 16});
  expect_error([&] { lse_q.forward(); }, ErrorCode::aliasing, {"lse and q" + single}, {&c.q, &c.out});
}

TEST(Errors, err_alias_output_packed_interleaved_views_are_accepted) {
  const Shape s{2, 16, 16, 2, 2, 8, 8};
  const int64_t S = s.Sq, H = s.Hq, D = s.D;
  for (Algorithm alg : kAlgorithms) {
    SCOPED_TRACE(memattn::algorithm_name(alg));
    Case c(s, DType::f32, 19);
    c.options.algorithm = alg;
    c.options.key_chunk = 8;
    const Expected want = contiguous_run(c);
    Tensor lse = c.lse.view();

    // q, k, v and out as the four slots of one [B, S, 4, H, D] buffer.
    Buf qkvo(DType::f32, {s.B, S, 4, H, D});
    qkvo.fill(-7.25);
    const auto slot = [&](int64_t n) { return Placed{&qkvo, n * H * D, c.q.shape, {S * 4 * H * D, 4 * H * D, D, 1}}; };
    slot(0).write(c.q);
    slot(1).write(c.k);
    slot(2).write(c.v);
    memattn::forward(slot(0).view(), slot(1).view(), slot(2).view(), slot(3).view(), &lse, c.options);
    EXPECT_EQ(slot(3).read().bytes, want.out);
    EXPECT_EQ(slot(0).read().bytes, c.q.bytes) << "an input was overwritten";

    // out in the second half of each feature row of a [B, S, H, 2D] buffer whose first half is q.
    Buf halves(DType::f32, {s.B, S, H, 2 * D});
    const Placed q_half{&halves, 0, c.q.shape, {S * H * 2 * D, H * 2 * D, 2 * D, 1}};
    const Placed out_half{&halves, D, c.out.shape, {S * H * 2 * D, H * 2 * D, 2 * D, 1}};
    q_half.write(c.q);
    memattn::forward(q_half.view(), c.k.view(), c.v.view(), out_half.view(), &lse, c.options);
    EXPECT_EQ(out_half.read().bytes, want.out);
    EXPECT_EQ(q_half.read().bytes, c.q.bytes) << "an input was overwritten";
  }
}

TEST(Errors, err_alias_output_head_dim_slices_of_different_widths) {
  // q (d = 24) and out (dv = 8) side by side in each 32-wide row of one buffer: disjoint, accepted.
  const Shape s{2, 16, 16, 2, 2, 24, 8};
  Case c(s, DType::f32, 23);
  const Expected want = contiguous_run(c);
  const std::vector<int64_t> row_strides{s.Sq * s.Hq * 32, s.Hq * 32, 32, 1};
  Buf rows(DType::f32, {s.B, s.Sq, s.Hq, 32});
  const Placed q{&rows, 0, c.q.shape, row_strides}, out{&rows, 24, c.out.shape, row_strides};
  q.write(c.q);
  Tensor lse = c.lse.view();
  memattn::forward(q.view(), c.k.view(), c.v.view(), out.view(), &lse, c.options);
  EXPECT_EQ(out.read().bytes, want.out);
  EXPECT_EQ(q.read().bytes, c.q.bytes) << "an input was overwritten";
  // out moved 4 features left overlaps the last 4 features of q.
  Call overlap(c);
  overlap.q = q.view();
  overlap.out = Placed{&rows, 20, c.out.shape, row_strides}.view();
  expect_error([&] { overlap.forward(); }, ErrorCode::aliasing,
               {"some elements of out and q refer to a single memory location"}, {&rows, &c.lse});
}
