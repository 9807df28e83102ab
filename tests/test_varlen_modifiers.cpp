// Variable-length batches with the score modifiers (softcap, ALiBi, sinks): every sequence equal
// bit for bit to its dense call with the same modifiers, forward and backward, within the accuracy
// rule of Ref64; decode-sized sequences through the split keys; dsinks refused for varlen calls.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "fault_support.hpp"
#include "varlen_support.hpp"

using namespace mt;
using memattn::Align;

namespace {

// dense(b) returns its Case by value: the modifier views it points at are its own members again.
BackwardCase dense_of(const VarlenCase& c, size_t b) {
  BackwardCase d = c.dense(b);
  d.options.alibi_slopes = d.alibi ? &d.alibi_view : nullptr;
  d.options.sinks = d.sinks ? &d.sinks_view : nullptr;
  return d;
}

VarlenCase modified(std::vector<int64_t> lq, std::vector<int64_t> lk, DType dt, bool causal, uint64_t seed) {
  VarlenCase c(std::move(lq), std::move(lk), 4, 2, 16, 12, dt, DType::i32, seed);
  c.options.causal = causal, c.options.align = Align::bottom_right;
  c.set_modifiers(3.0, {0.5, 0.25, 0.125, 0.0625}, {0.5, -1.0, 2.0, 0.0});
  return c;
}

}  // namespace

TEST(VarlenModifiers, ForwardEqualsDensePerSequence) {
  // Lengths with empty sequences on either side, and decode-like rows against more than 2048
  // keys (split keys, merged with the sink as a part).
  const std::vector<int64_t> lq[] = {{3, 0, 17, 1, 40}, {1, 2, 0}};
  const std::vector<int64_t> lk[] = {{5, 9, 0, 33, 40}, {2500, 2100, 7}};
  for (size_t s = 0; s < 2; ++s)
    for (DType dt : {DType::f32, DType::bf16})
      for (bool causal : {false, true}) {
        VarlenCase c = modified(lq[s], lk[s], dt, causal, 5 + s);
        c.forward();
        const std::string what = std::string(memattn::dtype_name(dt)) + ", set " + std::to_string(s) +
                                 (causal ? ", causal" : "");
        for (size_t b = 0; b < c.count(); ++b) {
          BackwardCase d = dense_of(c, b);
          d.out.fill(std::numeric_limits<double>::quiet_NaN());
          d.run();
          const Buf got = VarlenCase::rows(c.out, c.first_q(b), c.len_q[b]);
          EXPECT_EQ(bitwise_difference(got, d.out), "") << what << ", sequence " << b;
          const std::vector<double> lse = c.lse_of(b), want = d.lse.values();
          for (size_t i = 0; i < lse.size(); ++i) EXPECT_EQ(lse[i], want[i]) << what << ", sequence " << b;
          const RefProblem p = d.problem();
          EXPECT_FALSE(p.alibi_slopes.empty() || p.sinks.empty() || p.softcap == 0) << "the modifiers reached Ref64";
          EXPECT_EQ(accuracy_failure(got.values(), reference64(p).out, baseline(p, dt).out, dt), "")
              << what << ", sequence " << b;
        }
      }
}

TEST(VarlenModifiers, BackwardEqualsDensePerSequence) {
  for (DType dt : {DType::f32, DType::bf16}) {
    VarlenCase c = modified({3, 0, 17, 21}, {5, 9, 0, 30}, dt, true, 9);
    c.forward();
    c.backward();
    for (size_t b = 0; b < c.count(); ++b) {
      BackwardCase d = dense_of(c, b);
      d.run_both();
      const std::string what = std::string(memattn::dtype_name(dt)) + ", sequence " + std::to_string(b);
      EXPECT_EQ(bitwise_difference(VarlenCase::rows(c.dq, c.first_q(b), c.len_q[b]), d.dq), "") << what;
      EXPECT_EQ(bitwise_difference(VarlenCase::rows(c.dk, c.first_k(b), c.len_k[b]), d.dk), "") << what;
      EXPECT_EQ(bitwise_difference(VarlenCase::rows(c.dv, c.first_k(b), c.len_k[b]), d.dv), "") << what;
    }
  }
}

// FlashAttention's varlen ALiBi: one row of slopes per sequence ([sequences, heads_q]), each
// sequence equal to its dense call with its own row, forward and backward; a row count that is
// not the sequence count is refused.
TEST(VarlenModifiers, SlopesPerSequence) {
  VarlenCase c({3, 0, 17, 21}, {5, 9, 0, 30}, 4, 2, 16, 12, DType::f32, DType::i64, 21);
  c.options.causal = true, c.options.align = Align::bottom_right;
  std::vector<double> slopes(4 * 4);
  for (size_t e = 0; e < slopes.size(); ++e) slopes[e] = 0.03125 * double(e + 1);
  c.set_modifiers(0.0, slopes, {});
  c.forward();
  c.backward();
  for (size_t b = 0; b < c.count(); ++b) {
    BackwardCase d = dense_of(c, b);
    d.run_both();
    const std::string what = "sequence " + std::to_string(b);
    EXPECT_EQ(bitwise_difference(VarlenCase::rows(c.out, c.first_q(b), c.len_q[b]), d.out), "") << what;
    EXPECT_EQ(bitwise_difference(VarlenCase::rows(c.dq, c.first_q(b), c.len_q[b]), d.dq), "") << what;
    EXPECT_EQ(bitwise_difference(VarlenCase::rows(c.dk, c.first_k(b), c.len_k[b]), d.dk), "") << what;
  }
  // The rows differ, so sequence 3 with sequence 0's slopes would not match (the check can fail).
  BackwardCase wrong = dense_of(c, 3);
  wrong.set_alibi({4}, std::vector<double>(slopes.begin(), slopes.begin() + 4));
  wrong.run();
  EXPECT_NE(bitwise_difference(VarlenCase::rows(c.out, c.first_q(3), c.len_q[3]), wrong.out), "");

  Buf three(DType::f32, {3, 4});
  const Tensor three_view = three.view();
  c.options.alibi_slopes = &three_view;
  c.out.fill(7.0);
  expect_error([&] { memattn::forward(c.q.view(), c.k.view(), c.v.view(), c.out.view(), nullptr, c.options); },
               memattn::ErrorCode::invalid_argument, {"alibi_slopes: shape [3,4] expected [4] or [4,4]", "sequences"},
               {&c.out});
}

TEST(VarlenModifiers, DsinksRefusedForVarlenCalls) {
  VarlenCase c = modified({3, 4}, {5, 6}, DType::f32, false, 3);
  c.forward();
  Buf dsinks(DType::f32, {4});
  dsinks.fill(7.0);
  for (Buf* g : {&c.dq, &c.dk, &c.dv}) g->fill(7.0);
  const Tensor dsinks_view = dsinks.view();
  expect_error(
      [&] {
        memattn::backward(c.q.view(), c.k.view(), c.v.view(), c.out.view(), c.dout.view(), c.lse.view(),
                          c.dq.view(), c.dk.view(), c.dv.view(), c.options, nullptr, {}, &dsinks_view);
      },
      memattn::ErrorCode::unsupported, {"dsinks", "cu_seqlens_q"}, {&c.dq, &c.dk, &c.dv, &dsinks});
}
