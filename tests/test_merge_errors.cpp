// memattn::merge's argument checks: each bad argument gives its ErrorCode and a message naming it,
// the expected and the given value, with out and lse untouched.
#include <gtest/gtest.h>

#include <vector>

#include "fault_support.hpp"
#include "support.hpp"

using namespace mt;
using memattn::ErrorCode;

namespace {

// Two valid f32 parts [2, 5, 3, 7] and outputs; each test breaks one argument.
struct Args {
  Buf o0{DType::f32, {2, 5, 3, 7}}, o1{DType::f32, {2, 5, 3, 7}};
  Buf l0{DType::f32, {2, 3, 5}}, l1{DType::f32, {2, 3, 5}};
  Buf out_buf{DType::f32, {2, 5, 3, 7}}, lse_buf{DType::f32, {2, 3, 5}};
  std::vector<Tensor> outs{o0.view(), o1.view()}, lses{l0.view(), l1.view()};
  Tensor out = out_buf.view(), lse = lse_buf.view();
  memattn::MergeOptions options;

  Args() {
    fill_randn(o0, 1);
    fill_randn(o1, 2);
    fill_randn(l0, 3);
    fill_randn(l1, 4);
  }
  void merge() const { memattn::merge(outs, lses, out, &lse, options); }
  void expect(ErrorCode code, const std::vector<std::string>& parts) {
    expect_error([&] { merge(); }, code, parts, {&out_buf, &lse_buf});
  }
};

}  // namespace

TEST(MergeErrors, counts_ranks_and_shapes) {
  Args a;
  a.lses.pop_back();
  a.expect(ErrorCode::invalid_argument,
           {"outs and lses must have the same length (one lse per part)", "got 2 outs and 1 lses"});
  Args rank;
  rank.out.ndim = 3;
  rank.expect(ErrorCode::invalid_argument, {"out: expected 4 dimensions, got 3"});
  Args garbage;
  garbage.outs[0].ndim = 9;
  garbage.expect(ErrorCode::invalid_argument, {"outs[0]: expected 4 dimensions, got 9"});
  Args shape;
  shape.outs[1].shape[3] = 6;
  shape.expect(ErrorCode::invalid_argument, {"outs[1]: shape [2,5,3,6] expected [2,5,3,7]",
                                             "[batch, seq_q, heads, head_dim_v]"});
  Args lse_rank;
  lse_rank.lses[1].ndim = 4;
  lse_rank.expect(ErrorCode::invalid_argument, {"lses[1]: expected 3 dimensions, got 4"});
  Args lse_shape;
  lse_shape.lses[0] = Tensor::contiguous(lse_shape.l0.data(), DType::f32, {2, 5, 3});
  lse_shape.expect(ErrorCode::invalid_argument,
                   {"lses[0]: shape [2,5,3] expected [2,3,5]", "[batch, heads, seq_q] of out"});
  Args out_lse;
  out_lse.lse = Tensor::contiguous(out_lse.lse_buf.data(), DType::f32, {2, 3, 4});
  out_lse.expect(ErrorCode::invalid_argument, {"lse: shape [2,3,4] expected [2,3,5]"});
  Args null;
  null.outs[1].data = nullptr;
  null.expect(ErrorCode::invalid_argument, {"outs[1]: data is null", "[2,5,3,7]"});
  Args huge;
  huge.outs[0].strides[0] = int64_t(1) << 62;
  huge.expect(ErrorCode::size_overflow, {"outs[0]: tensor size overflows int64"});
  Args threads;
  threads.options.num_threads = -1;
  threads.expect(ErrorCode::invalid_argument, {"num_threads must be 0 (all) or > 0, got -1"});
  Args writable;
  writable.out.strides[1] = 0;
  writable.expect(ErrorCode::invalid_argument, {"out: stride[1] is 0 on a dimension of size 5"});
}

TEST(MergeErrors, dtypes) {
  Args out;
  out.out.dtype = DType::u8;
  out.expect(ErrorCode::wrong_dtype, {"out: dtype u8 is not supported", "f32, bf16, f16, f64"});
  Args part;
  part.outs[0].dtype = DType::u8;
  part.expect(ErrorCode::wrong_dtype, {"outs[0]: dtype u8 is not supported"});
  Args mixed;
  mixed.outs[1].dtype = DType::bf16;
  mixed.expect(ErrorCode::wrong_dtype, {"outs[1]: dtype must match outs[0] (f32), got bf16"});
  Args lse_dtype;
  lse_dtype.lses[1].dtype = DType::f16;
  lse_dtype.expect(ErrorCode::wrong_dtype, {"lses[1]: dtype must be f32, got f16"});
  Args out_lse;
  out_lse.lse.dtype = DType::f64;
  out_lse.expect(ErrorCode::wrong_dtype, {"lse: dtype must be f32, got f64"});
  Args wide;
  wide.out.dtype = DType::f64;
  wide.expect(ErrorCode::wrong_dtype, {"out: dtype f64 cannot receive parts of dtype f32",
                                       "expected one of f32, bf16, f16"});
  Args f64;
  f64.outs[0].dtype = f64.outs[1].dtype = DType::f64;
  f64.expect(ErrorCode::wrong_dtype,
             {"out: dtype f32 cannot receive parts of dtype f64", "expected f64"});
}

TEST(MergeErrors, aliasing) {
  // out one element past outs[1] in a shared buffer: overlapping, but not the same view.
  Args shifted;
  Buf shared(DType::f32, {2 * 5 * 3 * 7 + 1});
  shifted.outs[1] = Tensor::contiguous(shared.data(), DType::f32, {2, 5, 3, 7});
  shifted.out = shifted.outs[1];
  shifted.out.data = static_cast<float*>(shared.data()) + 1;
  shifted.expect(ErrorCode::aliasing,
                 {"some elements of out and outs[1]", "in place, out must be the very same view"});
  Args transposed;  // the same memory in another order is not in place
  transposed.out = Tensor::strided(transposed.o0.data(), DType::f32, {2, 5, 3, 7}, {105, 7, 35, 1});
  transposed.expect(ErrorCode::aliasing, {"out and outs[0]"});
  Args out_lses;
  out_lses.out = Tensor::contiguous(out_lses.l1.data(), DType::f32, {2, 5, 3, 1});
  out_lses.outs = {Tensor::contiguous(out_lses.o0.data(), DType::f32, {2, 5, 3, 1}),
                   Tensor::contiguous(out_lses.o1.data(), DType::f32, {2, 5, 3, 1})};
  out_lses.expect(ErrorCode::aliasing, {"out and lses[1]"});
  Args lse_outs;
  lse_outs.lse = Tensor::contiguous(lse_outs.o1.data(), DType::f32, {2, 3, 5});
  lse_outs.expect(ErrorCode::aliasing, {"lse and outs[1]"});
  Args lse_lses;
  lse_lses.lse = Tensor::strided(lse_lses.l0.data(), DType::f32, {2, 3, 5}, {15, 1, 3});
  lse_lses.expect(ErrorCode::aliasing,
                  {"lse and lses[0]", "in place, lse must be the very same view"});
  Args out_lse;
  out_lse.lse = Tensor::contiguous(out_lse.out_buf.data(), DType::f32, {2, 3, 5});
  out_lse.expect(ErrorCode::aliasing, {"out and lse"});
}

TEST(MergeErrors, valid_neighbours) {
  Args no_lse;  // lse is optional
  memattn::merge(no_lse.outs, no_lse.lses, no_lse.out, nullptr);
  Args empty;  // zero-size tensors may have null data
  for (Tensor* t : {&empty.outs[0], &empty.outs[1], &empty.out}) t->shape[3] = 0, t->data = nullptr;
  empty.merge();
  Args in_place;  // out is outs[1] and lse is lses[0]: merged in place
  in_place.out = in_place.outs[1];
  in_place.lse = in_place.lses[0];
  in_place.merge();
}
