// Variable-length batches (cu_seqlens), forward: TESTPLAN 21 num_varlen_degenerate (every sequence
// equals its own dense call bitwise and Ref64 by the primary rule, under causal in both alignments,
// windows, GQA, every dtype, i32 and i64 offsets, every algorithm, key splits), 27 (NaN padding
// around and beside the sequences is never read), 37 (any thread count) and the workspace contract.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "fault_support.hpp"
#include "varlen_support.hpp"

using namespace mt;
using memattn::Algorithm;
using memattn::Align;
using memattn::ErrorCode;

namespace {

const double kNaN = std::numeric_limits<double>::quiet_NaN();

struct Lengths {
  std::vector<int64_t> q, k;
};

// TESTPLAN 21's shapes, and a mix with seq_q != seq_k both ways, zero-length sequences on either
// side and lengths across the flash chunk sizes.
const Lengths kLengths[] = {
    {{0, 5, 0, 1, 0}, {0, 5, 0, 1, 0}},   {{0, 5, 0, 1, 0}, {3, 7, 2, 0, 4}}, {{1, 1, 1}, {1, 1, 1}},
    {{37}, {37}},                          {{1, 0, 1, 1}, {4, 3, 0, 9}},      {{3, 0, 17, 64, 130}, {5, 9, 0, 70, 129}},
};

// Sequence b of c, checked: out and lse rows bitwise equal to the dense batch-1 call of the same
// options, and out within the primary rule of Ref64 (Base_dt as the baseline); rows without keys
// give out = 0, lse = -inf.
void expect_sequences_match(VarlenCase& c, const std::string& what) {
  for (size_t b = 0; b < c.count(); ++b) {
    BackwardCase d = c.dense(b);
    d.out.fill(kNaN);
    d.lse.fill(kNaN);
    d.run();
    const Buf got = VarlenCase::rows(c.out, c.first_q(b), c.len_q[b]);
    EXPECT_EQ(bitwise_difference(got, d.out), "") << what << ", sequence " << b;
    const std::vector<double> lse = c.lse_of(b), want_lse = d.lse.values();
    for (size_t i = 0; i < lse.size(); ++i)
      EXPECT_TRUE(lse[i] == want_lse[i] || (std::isnan(lse[i]) && std::isnan(want_lse[i])))
          << what << ", sequence " << b << " lse " << i << ": " << lse[i] << " vs " << want_lse[i];
    const RefProblem p = d.problem();
    const RefResult ref = reference64(p);
    EXPECT_EQ(accuracy_failure(got.values(), ref.out, baseline(p, c.dtype).out, c.dtype), "")
        << what << ", sequence " << b;
    for (size_t i = 0; i < lse.size(); ++i)
      if (std::isinf(ref.lse[i])) EXPECT_EQ(lse[i], ref.lse[i]) << what << ", sequence " << b;
      else EXPECT_NEAR(lse[i], ref.lse[i], 2e-4 * std::max(1.0, std::fabs(ref.lse[i]))) << what << ", sequence " << b;
  }
}

}  // namespace

TEST(Varlen, num_varlen_degenerate_matches_dense_and_ref64) {
  for (const Lengths& l : kLengths)
    for (DType dt : {DType::f32, DType::bf16, DType::f16})
      for (int mode = 0; mode < 4; ++mode) {
        VarlenCase c(l.q, l.k, 4, 2, 16, 12, dt, mode % 2 ? DType::i64 : DType::i32, 11);
        c.options.causal = mode >= 1;
        c.options.align = mode == 2 ? Align::bottom_right : Align::top_left;
        if (mode == 3) c.options.window_left = 3, c.options.window_right = 2;
        c.forward();
        expect_sequences_match(c, std::string(memattn::dtype_name(dt)) + ", mode " + std::to_string(mode) +
                                      ", lengths of " + std::to_string(l.q.size()) + " sequences");
      }
}

TEST(Varlen, max_seqlen_q_1_with_zero_length_entries) {
  VarlenCase c({0, 1, 0, 1, 0}, {4, 0, 3, 2, 0}, 2, 1, 8, 8, DType::f32);
  c.options.max_seqlen_q = 1;
  c.options.max_seqlen_k = 4;  // exactly the longest: accepted
  c.options.causal = true;
  c.options.align = Align::bottom_right;
  c.forward();
  expect_sequences_match(c, "max_seqlen_q = 1");
  c.options.max_seqlen_k = 400;  // larger than needed: accepted as well
  c.forward();
  expect_sequences_match(c, "max_seqlen_k = 400");
}

TEST(Varlen, every_algorithm_and_f64) {
  for (DType dt : {DType::f32, DType::f64})
    for (Algorithm a : algorithms_for(dt)) {
      VarlenCase c({3, 0, 9, 1}, {5, 2, 0, 12}, 3, 3, 8, 8, dt, DType::i64, 5);
      c.options.algorithm = a;
      c.options.causal = true;
      c.options.align = Align::bottom_right;
      c.forward();
      expect_sequences_match(c, std::string(memattn::algorithm_name(a)) + " " + memattn::dtype_name(dt));
    }
}

// Decode-shaped sequences (a few queries against thousands of keys) take split keys and merged
// partials per sequence; a sequence of the same call keeps its own partials.
TEST(Varlen, key_splits_of_decode_sequences) {
  VarlenCase c({1, 2, 1, 4}, {3000, 10, 4500, 0}, 4, 1, 16, 16, DType::bf16, DType::i32, 3);
  c.forward();
  expect_sequences_match(c, "decode splits");
}

TEST(Varlen, det_bitwise_any_thread_count) {
  VarlenCase c({130, 1, 0, 77, 200}, {129, 2500, 3, 77, 64}, 4, 2, 32, 32, DType::f32, DType::i32, 9);
  c.options.causal = true;
  c.options.num_threads = 1;
  c.forward();
  const Buf out1 = c.out, lse1 = c.lse;
  for (int threads : {2, 3}) {
    c.options.num_threads = threads;
    c.forward();
    EXPECT_EQ(bitwise_difference(c.out, out1), "") << threads << " threads";
    EXPECT_EQ(bitwise_difference(c.lse, lse1), "") << threads << " threads";
  }
}

// TESTPLAN 27: q, k, v inside larger NaN-filled buffers (padding beyond every dim, and the tail
// beyond the last sequence); out bitwise equal to the packed run.
TEST(Varlen, num_oob_nan_poison) {
  VarlenCase c({5, 0, 17, 3}, {9, 4, 17, 0}, 2, 2, 12, 8, DType::f32, DType::i32, 4);
  c.options.causal = true;
  c.forward();
  const Buf want = c.out;
  const Embedded q = embed(c.q, kNaN, 1, 3), k = embed(c.k, kNaN, 2, 5), v = embed(c.v, kNaN, 1, 4);
  Embedded out = embed(c.out, kNaN, 1, 1);
  memattn::forward(q.view, k.view, v.view, out.view, nullptr, c.options);
  Buf got(c.out.dtype, c.out.shape);
  copy_from_view(out.view, got);
  EXPECT_EQ(bitwise_difference(got, want), "");
}

// NaN in one sequence's keys and values reaches that sequence's rows only.
TEST(Varlen, nan_stays_in_its_sequence) {
  VarlenCase c({4, 6, 5}, {7, 8, 6}, 2, 1, 8, 8, DType::f32);
  c.forward();
  const Buf clean = c.out;
  for (int64_t j = c.first_k(1); j < c.first_k(2); ++j)
    for (int64_t e = 0; e < 8; ++e) c.k.set(j * 8 + e, kNaN), c.v.set(j * 8 + e, kNaN);
  c.forward();
  const int64_t row = 2 * 8;  // heads_q * dim_v
  EXPECT_TRUE(same_bytes(c.out, clean, 0, c.first_q(1) * row));
  EXPECT_TRUE(same_bytes(c.out, clean, c.first_q(2) * row, c.len_q[2] * row));
  for (int64_t i = c.first_q(1) * row; i < c.first_q(2) * row; ++i) EXPECT_TRUE(std::isnan(c.out.get(i)));
}

TEST(Varlen, workspace_contract) {
  VarlenCase c({1, 40, 0, 3}, {3000, 33, 5, 0}, 4, 2, 16, 16, DType::f32);
  const size_t need = memattn::workspace_bytes(c.q.view(), c.k.view(), c.v.view(), c.options);
  EXPECT_GT(need, 0u);
  c.forward();
  const Buf want = c.out;
  std::vector<unsigned char> ws(need);
  c.out.fill(kNaN);
  memattn::forward(c.q.view(), c.k.view(), c.v.view(), c.out.view(), nullptr, c.options, {ws.data(), need});
  EXPECT_EQ(bitwise_difference(c.out, want), "");
  c.out.fill(kNaN);
  expect_error([&] { memattn::forward(c.q.view(), c.k.view(), c.v.view(), c.out.view(), nullptr, c.options,
                                      {ws.data(), need - 1}); },
               ErrorCode::workspace_too_small, {"workspace"}, {&c.out});
  // Only zero-length sequences: nothing to compute, nothing needed.
  VarlenCase none({0, 0}, {0, 0}, 1, 1, 4, 4, DType::f32);
  EXPECT_EQ(memattn::workspace_bytes(none.q.view(), none.k.view(), none.v.view(), none.options), 0u);
  none.forward();
}

// The family does not depend on the sequences: tile_family ignores cu_seqlens as it ignores masks.
TEST(Varlen, tile_family_ignores_offsets) {
  VarlenCase c({3}, {3}, 1, 1, 4, 4, DType::f32);
  c.options.max_seqlen_q = 3;
  EXPECT_STREQ(memattn::tile_family(DType::f32, c.options), memattn::tile_family(DType::f32));
}

// A call without sequences (cu_seqlens [0]; attention_with_kvcache with batch 0) computes nothing
// but is refused where a call with sequences would be: f64 on flash, forward and backward.
TEST(Varlen, EmptyCallsRefusedLikeCallsWithSequences) {
  for (const std::vector<int64_t>& lengths : {std::vector<int64_t>{}, std::vector<int64_t>{2}}) {
    VarlenCase c(lengths, lengths, 2, 1, 4, 4, DType::f64);
    c.options.algorithm = memattn::Algorithm::flash;
    SCOPED_TRACE(lengths.empty() ? "no sequence" : "one sequence");
    expect_error([&] { c.forward(); }, ErrorCode::unsupported, {"algorithm: flash takes f32, bf16 or f16"});
    c.options.algorithm = memattn::Algorithm::naive;
    c.forward();
    c.options.algorithm = memattn::Algorithm::flash;
    expect_error([&] { c.backward(); }, ErrorCode::unsupported, {"flash"});
  }
  Buf q(DType::f64, {0, 1, 2, 4}), cache(DType::f64, {0, 3, 1, 4}), out(DType::f64, {0, 1, 2, 4});
  Buf lens(DType::i32, {0});
  expect_error(
      [&] {
        memattn::attention_with_kvcache(q.view(), cache.view(), cache.view(), lens.view(), nullptr, out.view(), nullptr,
                                        memattn::Options{}, {});
      },
      ErrorCode::unsupported, {"algorithm: flash takes f32, bf16 or f16"});
}
