// Variable-length batches: TESTPLAN 7 err_varlen_offsets (every error names the entry and its
// values, outputs untouched, forward, sizing and backward alike) and the backward (dq, dk, dv of
// every sequence bitwise equal to its own dense backward and within the primary rule of Ref64's;
// keys of sequences without queries get zero gradients; any thread count).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "fault_support.hpp"
#include "varlen_support.hpp"

using namespace mt;
using memattn::Align;
using memattn::ErrorCode;

namespace {

const double kNaN = std::numeric_limits<double>::quiet_NaN();

// Forward, workspace_bytes and backward of c all fail with `code` and `parts`, writing nothing.
void expect_varlen_error(VarlenCase& c, ErrorCode code, const std::vector<std::string>& parts) {
  Tensor lse = c.lse.view();
  expect_error([&] { memattn::forward(c.q.view(), c.k.view(), c.v.view(), c.out.view(), &lse, c.options); }, code,
               parts, {&c.out, &c.lse});
  expect_error([&] { (void)memattn::workspace_bytes(c.q.view(), c.k.view(), c.v.view(), c.options); }, code, parts);
  for (Buf* g : {&c.dq, &c.dk, &c.dv}) g->fill(kNaN);
  expect_error([&] { memattn::backward(c.q.view(), c.k.view(), c.v.view(), c.out.view(), c.dout.view(), c.lse.view(),
                                       c.dq.view(), c.dk.view(), c.dv.view(), c.options); },
               code, parts, {&c.dq, &c.dk, &c.dv});
}

VarlenCase error_case() {
  VarlenCase c({4, 0, 6, 2}, {5, 3, 2, 1}, 2, 1, 8, 8, DType::f32, DType::i32, 21);
  c.out.fill(kNaN);
  c.lse.fill(kNaN);
  return c;
}

// Sequence b's gradients cut out of c's packed ones.
RefGrads grads_of(const VarlenCase& c, size_t b) {
  return {VarlenCase::rows(c.dq, c.first_q(b), c.len_q[b]).values(),
          VarlenCase::rows(c.dk, c.first_k(b), c.len_k[b]).values(),
          VarlenCase::rows(c.dv, c.first_k(b), c.len_k[b]).values(), {}};
}

bool structurally_zero(const std::vector<double>& ref) {
  return std::all_of(ref.begin(), ref.end(), [](double x) { return x == 0.0; });
}

}  // namespace

TEST(VarlenErrors, err_varlen_offsets) {
  {
    VarlenCase c = error_case();
    c.cu_q32[0] = 1;
    expect_varlen_error(c, ErrorCode::invalid_argument, {"cu_seqlens_q[0]=1", "must be 0"});
  }
  {
    VarlenCase c = error_case();  // q offsets 0 4 4 10 12
    c.cu_q32[2] = 11;
    expect_varlen_error(c, ErrorCode::invalid_argument, {"cu_seqlens_q[3]=10 < cu_seqlens_q[2]=11"});
  }
  {
    VarlenCase c = error_case();
    c.cu_k32[4] = 10;
    expect_varlen_error(c, ErrorCode::invalid_argument,
                        {"cu_seqlens_k[4]=10 (the last entry) must equal the key total k.shape[1] 11"});
  }
  {
    VarlenCase c = error_case();
    c.cu_k = Tensor::contiguous(c.cu_k32.data(), memattn::DType::i32, {4});
    expect_varlen_error(c, ErrorCode::invalid_argument,
                        {"cu_seqlens_q has 5 entries but cu_seqlens_k has 4", "batch + 1"});
  }
  {
    VarlenCase c = error_case();
    c.options.max_seqlen_q = 5;
    expect_varlen_error(c, ErrorCode::invalid_argument,
                        {"max_seqlen_q=5 is smaller than sequence 2's length 6", "cu_seqlens_q[3] - cu_seqlens_q[2]"});
  }
  {
    VarlenCase c = error_case();
    c.options.max_seqlen_k = 4;
    expect_varlen_error(c, ErrorCode::invalid_argument, {"max_seqlen_k=4", "sequence 0's length 5"});
  }
  {
    VarlenCase c = error_case();
    c.options.max_seqlen_k = -1;
    expect_varlen_error(c, ErrorCode::invalid_argument, {"max_seqlen_k must be >= 0", "got -1"});
  }
  {
    VarlenCase c = error_case();
    std::vector<float> wrong(5, 0.0f);
    c.cu_q = Tensor::contiguous(wrong.data(), memattn::DType::f32, {5});
    expect_varlen_error(c, ErrorCode::wrong_dtype, {"cu_seqlens_q: dtype must be i32 or i64, got f32"});
  }
  {
    VarlenCase c = error_case();
    c.cu_k = Tensor::contiguous(c.cu_k32.data(), memattn::DType::i32, {1, 5});
    expect_varlen_error(c, ErrorCode::invalid_argument, {"cu_seqlens_k: expected 1 dimensions, got 2"});
  }
  {
    VarlenCase c = error_case();
    c.options.cu_seqlens_k = nullptr;
    expect_varlen_error(c, ErrorCode::invalid_argument, {"cu_seqlens_q is set but cu_seqlens_k is null"});
  }
  {
    VarlenCase c = error_case();
    c.options.cu_seqlens_q = c.options.cu_seqlens_k = nullptr;
    c.options.max_seqlen_q = 3;
    expect_varlen_error(c, ErrorCode::invalid_argument, {"max_seqlen_q=3 is given but cu_seqlens_q and cu_seqlens_k are null"});
  }
  {
    VarlenCase c = error_case();  // q as [2, 6, ...]: varlen packs along dim 1 of batch 1
    c.q.shape = {2, 6, 2, 8};
    c.out.shape = {2, 6, 2, 8};
    c.dq.shape = {2, 6, 2, 8};
    c.dout.shape = {2, 6, 2, 8};
    c.k.shape = {1, 11, 1, 8};
    expect_error([&] { memattn::forward(c.q.view(), c.k.view(), c.v.view(), c.out.view(), nullptr, c.options); },
                 ErrorCode::invalid_argument, {"k: batch 1 does not match q batch 2"}, {&c.out});
    c.k.shape = {2, 5, 1, 8};
    c.v.shape = {2, 5, 1, 8};
    Tensor lse = Tensor::contiguous(c.lse.data(), memattn::DType::f32, {2, 2, 6});
    expect_error([&] { memattn::forward(c.q.view(), c.k.view(), c.v.view(), c.out.view(), &lse, c.options); },
                 ErrorCode::invalid_argument, {"batch must be 1 with cu_seqlens", "got 2"}, {&c.out});
  }
  {
    VarlenCase c = error_case();
    Buf mask(memattn::DType::u8, {1, 1, 12, 11});
    mask.fill(1);
    Tensor mv = mask.view();
    c.options.mask = &mv;
    expect_varlen_error(c, ErrorCode::unsupported, {"mask: not supported with cu_seqlens"});
  }
}

// The offsets are an input: an output over their memory is refused before anything is written.
TEST(VarlenErrors, outputs_must_not_overlap_offsets) {
  VarlenCase c = error_case();
  std::vector<float> shared(12 * 2 * 8, kNaN);
  std::memcpy(shared.data(), c.cu_q32.data(), c.cu_q32.size() * sizeof(int32_t));
  const Tensor cu = Tensor::contiguous(shared.data(), memattn::DType::i32, {5});
  c.options.cu_seqlens_q = &cu;
  const Tensor out = Tensor::contiguous(shared.data(), memattn::DType::f32, {1, 12, 2, 8});
  expect_error([&] { memattn::forward(c.q.view(), c.k.view(), c.v.view(), out, nullptr, c.options); },
               ErrorCode::aliasing, {"out and cu_seqlens_q"});
  const Tensor dq = Tensor::contiguous(shared.data(), memattn::DType::f32, {1, 12, 2, 8});
  expect_error([&] { memattn::backward(c.q.view(), c.k.view(), c.v.view(), c.out.view(), c.dout.view(), c.lse.view(),
                                       dq, c.dk.view(), c.dv.view(), c.options); },
               ErrorCode::aliasing, {"dq and cu_seqlens_q"});
}

TEST(VarlenBackward, matches_dense_and_ref64) {
  const std::vector<int64_t> lq[] = {{0, 5, 0, 1, 0}, {1, 1, 1}, {33}, {3, 0, 17, 70, 130}};
  const std::vector<int64_t> lk[] = {{3, 5, 2, 0, 4}, {1, 1, 1}, {20}, {5, 9, 0, 70, 129}};
  for (size_t s = 0; s < 4; ++s)
    for (DType dt : {DType::f32, DType::bf16, DType::f16})
      for (int mode = 0; mode < 3; ++mode) {
        VarlenCase c(lq[s], lk[s], 4, 2, 16, 8, dt, mode == 1 ? DType::i64 : DType::i32, 31 + s);
        c.options.causal = mode >= 1;
        c.options.align = mode == 2 ? Align::bottom_right : Align::top_left;
        c.forward();
        c.backward();
        const std::string what = std::string(memattn::dtype_name(dt)) + ", set " + std::to_string(s) + ", mode " +
                                 std::to_string(mode);
        for (size_t b = 0; b < c.count(); ++b) {
          BackwardCase d = c.dense(b);
          d.run_both();
          const RefGrads got = grads_of(c, b);
          EXPECT_EQ(bitwise_difference(VarlenCase::rows(c.dq, c.first_q(b), c.len_q[b]), d.dq), "") << what << " seq " << b;
          EXPECT_EQ(bitwise_difference(VarlenCase::rows(c.dk, c.first_k(b), c.len_k[b]), d.dk), "") << what << " seq " << b;
          EXPECT_EQ(bitwise_difference(VarlenCase::rows(c.dv, c.first_k(b), c.len_k[b]), d.dv), "") << what << " seq " << b;
          const RefProblem p = d.problem();
          const std::vector<double> dout = d.dout.values();
          const RefGrads ref = reference_backward64(p, dout), base = baseline_backward(p, dout, dt, dt);
          // With one key per row dq and dk are exactly 0 and the rule would compare rounding noise
          // with none (BackwardEdge.num_single_key bounds that noise); the dense call matched above.
          if (!structurally_zero(ref.dq)) EXPECT_EQ(accuracy_failure(got.dq, ref.dq, base.dq, dt, 3.0), "") << what << " dq seq " << b;
          if (!structurally_zero(ref.dk)) EXPECT_EQ(accuracy_failure(got.dk, ref.dk, base.dk, dt, 3.0), "") << what << " dk seq " << b;
          EXPECT_EQ(accuracy_failure(got.dv, ref.dv, base.dv, dt, 3.0), "") << what << " dv seq " << b;
          if (c.len_q[b] == 0)
            for (double x : got.dk) EXPECT_EQ(x, 0.0) << what << " seq " << b << ": no queries, dk must be 0";
        }
      }
}

TEST(VarlenBackward, naive_algorithm_matches_dense) {
  VarlenCase c({3, 0, 9}, {5, 4, 0}, 2, 1, 8, 8, DType::f64, DType::i64);
  c.options.algorithm = memattn::Algorithm::naive;
  c.forward();
  c.backward();
  for (size_t b = 0; b < c.count(); ++b) {
    BackwardCase d = c.dense(b);
    d.run_both();
    EXPECT_EQ(bitwise_difference(VarlenCase::rows(c.dq, c.first_q(b), c.len_q[b]), d.dq), "") << b;
    EXPECT_EQ(bitwise_difference(VarlenCase::rows(c.dk, c.first_k(b), c.len_k[b]), d.dk), "") << b;
  }
}

TEST(VarlenBackward, det_bitwise_any_thread_count_and_workspace) {
  VarlenCase c({130, 1, 0, 77, 200}, {129, 600, 3, 77, 64}, 4, 2, 32, 32, DType::bf16, DType::i32, 9);
  c.options.causal = true;
  c.options.num_threads = 1;
  c.forward();
  c.backward();
  const Buf dq1 = c.dq, dk1 = c.dk, dv1 = c.dv;
  for (int threads : {2, 3}) {
    c.options.num_threads = threads;
    c.backward();
    EXPECT_EQ(bitwise_difference(c.dq, dq1), "") << threads;
    EXPECT_EQ(bitwise_difference(c.dk, dk1), "") << threads;
    EXPECT_EQ(bitwise_difference(c.dv, dv1), "") << threads;
  }
  const size_t need = memattn::backward_workspace_bytes(c.q.view(), c.k.view(), c.v.view(), c.options);
  std::vector<unsigned char> ws(need);
  c.dq.fill(kNaN);
  memattn::backward(c.q.view(), c.k.view(), c.v.view(), c.out.view(), c.dout.view(), c.lse.view(), c.dq.view(),
                    c.dk.view(), c.dv.view(), c.options, nullptr, {ws.data(), need});
  EXPECT_EQ(bitwise_difference(c.dq, dq1), "");
}

// TESTPLAN 27 for the backward: every operand (q, k, v, out, dout, lse) and every gradient inside a
// larger NaN-filled buffer; the gradients bitwise equal to the packed run.
TEST(VarlenBackward, num_oob_nan_poison) {
  VarlenCase c({5, 0, 17, 3}, {9, 4, 17, 0}, 2, 1, 12, 8, DType::f32, DType::i64, 8);
  c.options.causal = true;
  c.forward();
  c.backward();
  Embedded q = embed(c.q, kNaN), k = embed(c.k, kNaN, 2, 1), v = embed(c.v, kNaN), out = embed(c.out, kNaN),
           dout = embed(c.dout, kNaN, 1, 3), lse = embed(c.lse, kNaN), dq = embed(c.dq, kNaN), dk = embed(c.dk, kNaN),
           dv = embed(c.dv, kNaN, 3, 1);
  memattn::backward(q.view, k.view, v.view, out.view, dout.view, lse.view, dq.view, dk.view, dv.view, c.options);
  for (const auto& [view, want] : {std::pair{&dq.view, &c.dq}, std::pair{&dk.view, &c.dk}, std::pair{&dv.view, &c.dv}}) {
    Buf got(want->dtype, want->shape);
    copy_from_view(*view, got);
    EXPECT_EQ(bitwise_difference(got, *want), "");
  }
}
