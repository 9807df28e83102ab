// Ring attention's collective errors (one rank's bad argument fails every rank alike, no hang,
// outputs untouched) and its determinism (bitwise run to run and for any thread count).
#include <gtest/gtest.h>

#include <cmath>

#include "ring_support.hpp"

using namespace mt;
using memattn::ErrorCode;
using memattn::dist::Placement;

namespace {

// Runs `call`, expects memattn::Error with `code` whose message starts with `prefix`, and that
// every rank caught the very same message (rank 0's, broadcast).
template <typename Call>
void expect_same_error_everywhere(Call call, ErrorCode code, const std::string& prefix) {
  std::string message = "(no error)";
  ErrorCode got = ErrorCode(0);
  try {
    call();
  } catch (const memattn::Error& e) {
    message = e.what();
    got = e.code();
  }
  EXPECT_EQ(int(got), int(code)) << message;
  EXPECT_EQ(message.rfind(prefix, 0), 0u) << message;
  int length = int(message.size());
  MPI_Bcast(&length, 1, MPI_INT, 0, MPI_COMM_WORLD);
  std::string first(size_t(length), '\0');
  if (world_rank() == 0) first = message;
  MPI_Bcast(first.data(), length, MPI_CHAR, 0, MPI_COMM_WORLD);
  EXPECT_EQ(message, first) << "rank " << world_rank() << " differs from rank 0";
}

bool all_nan(const Buf& b) {
  for (double x : b.values())
    if (!std::isnan(x)) return false;
  return true;
}

const Shape kShape{1, 13, 13, 2, 2, 8, 8};

TEST(RingErrors, OneRanksBadShapeFailsEveryRankAlikeBeforeWriting) {
  RingCase c(kShape, DType::f32, true, Placement::zigzag);
  const int last = world_size() - 1;
  if (world_rank() == last) c.q = Buf(DType::f32, {1, c.mine.seq_q + 1, 2, 8});
  expect_same_error_everywhere([&] { c.forward(); }, ErrorCode::invalid_argument,
                               "rank " + std::to_string(last) + ": q: shape [1,");
  EXPECT_TRUE(all_nan(c.out) && all_nan(c.lse)) << "an output was written";
}

TEST(RingErrors, BackwardBadDtypeOnRankZeroFailsEveryRank) {
  RingCase c(kShape, DType::f32, false, Placement::contiguous);
  c.forward();
  if (world_rank() == 0) c.dk = Buf(DType::bf16, c.dk.shape);
  expect_same_error_everywhere([&] { c.backward(); }, ErrorCode::wrong_dtype,
                               "rank 0: dk: dtype must be f32, got bf16");
  EXPECT_TRUE(all_nan(c.dq)) << "dq was written";
}

TEST(RingErrors, RanksThatDisagreeOnTheOptionsFailAlike) {
  if (world_size() < 2) GTEST_SKIP() << "needs two ranks";
  RingCase c(kShape, DType::f32, false, Placement::contiguous);
  c.options.attention.causal = world_rank() == 1;
  expect_same_error_everywhere(
      [&] { c.forward(); }, ErrorCode::invalid_argument,
      "ranks disagree on options.attention.causal: values range from 0 to 1");
  EXPECT_TRUE(all_nan(c.out));
}

// A bias over every global key, with its rows cut for this rank.
void add_bias(BackwardCase& w) {
  w.set_bias({1, w.s.Hq, w.s.Sq, w.s.Sk}, DType::f32, randn_values(size_t(w.s.Hq * w.s.Sq * w.s.Sk), 5));
}

TEST(RingErrors, MaskSliceOfTheGlobalQueriesFailsEveryRank) {
  // The last rank passes the global rows instead of its own: shape [1,1,13,13], not [..,local,13].
  RingCase c(kShape, DType::f32, true, Placement::zigzag);
  const int last = world_size() - 1;
  if (world_size() == 1) GTEST_SKIP() << "one rank holds every query";
  Buf global(DType::u8, {1, 1, kShape.Sq, kShape.Sk});
  global.fill(1);
  const Tensor view = global.view();
  if (world_rank() == last) c.options.attention.mask = &view;
  const int64_t last_seq_q = memattn::dist::local_slices(c.options, world_size(), last).seq_q;
  expect_same_error_everywhere([&] { c.forward(); }, ErrorCode::invalid_argument,
                               "rank " + std::to_string(last) + ": mask: shape [1,1,13,13] is not rank " +
                                   std::to_string(last) + "'s slice [B=1|1, H=2|1, local seq_q=" +
                                   std::to_string(last_seq_q) + "|1, global seq_k=13|1]");
  EXPECT_TRUE(all_nan(c.out) && all_nan(c.lse)) << "an output was written";
}

TEST(RingErrors, BiasSliceOverLocalKeysFailsEveryRank) {
  // Rank 0's bias covers its local keys only; a slice must reach every global key.
  RingCase c(kShape, DType::f32, false, Placement::contiguous, memattn::Align::top_left, 1,
             MPI_COMM_WORLD, add_bias);
  if (world_size() == 1) GTEST_SKIP() << "one rank holds every key";
  Buf local(DType::f32, {1, kShape.Hq, c.mine.seq_q, c.mine.seq_k});
  local.fill(0);
  const Tensor view = local.view();
  if (world_rank() == 0) c.options.attention.bias = &view;
  const memattn::dist::LocalSlices first = memattn::dist::local_slices(c.options, world_size(), 0);
  expect_same_error_everywhere([&] { c.forward(); }, ErrorCode::invalid_argument,
                               "rank 0: bias: shape [1,2," + std::to_string(first.seq_q) + "," +
                                   std::to_string(first.seq_k) + "] is not rank 0's slice");
  EXPECT_TRUE(all_nan(c.out)) << "out was written";
}

TEST(RingErrors, MisshapedDbiasFailsEveryRankBeforeWriting) {
  RingCase c(kShape, DType::f32, true, Placement::zigzag, memattn::Align::top_left, 1, MPI_COMM_WORLD,
             add_bias);
  c.forward();
  if (world_rank() == 0) c.dbias = Buf(DType::f32, {1, kShape.Hq, c.mine.seq_q, kShape.Sk + 1});
  expect_same_error_everywhere([&] { c.backward(); }, ErrorCode::invalid_argument, "rank 0: dbias: shape [1,2,");
  EXPECT_TRUE(all_nan(c.dq)) << "dq was written";
}

TEST(RingErrors, DbiasWithoutBiasAndSinksAreRefused) {
  RingCase c(kShape, DType::f32, true, Placement::zigzag);
  c.forward();
  Buf dbias(DType::f32, {1, 1, c.mine.seq_q, kShape.Sk});
  const Tensor view = dbias.view();
  expect_same_error_everywhere(
      [&] {
        memattn::dist::ring_backward(c.q.view(), c.k.view(), c.v.view(), c.out.view(), c.dout.view(), c.lse.view(),
                                     c.dq.view(), c.dk.view(), c.dv.view(), c.options, MPI_COMM_WORLD, &view);
      },
      ErrorCode::invalid_argument, "rank 0: dbias: given, but options.attention.bias is null");
  Buf sinks(DType::f32, {kShape.Hq});
  sinks.fill(0);
  const Tensor sinks_view = sinks.view();
  c.options.attention.sinks = &sinks_view;
  expect_same_error_everywhere([&] { c.forward(); }, ErrorCode::unsupported,
                               "rank 0: options.attention.sinks: not supported by ring attention");
}

TEST(RingErrors, RanksThatDisagreeOnTheWindowFailAlike) {
  if (world_size() < 2) GTEST_SKIP() << "needs two ranks";
  RingCase c(kShape, DType::f32, true, Placement::zigzag);
  c.options.attention.window_left = world_rank() == 1 ? 3 : 4;
  expect_same_error_everywhere([&] { c.forward(); }, ErrorCode::invalid_argument,
                               "ranks disagree on options.attention.window_left: values range from 3 to 4");
  EXPECT_TRUE(all_nan(c.out));
}

TEST(RingErrors, DiagonalTooFarIsRefused) {
  RingCase c(kShape, DType::f32, true, Placement::zigzag);
  c.options.attention.diagonal_offset = int64_t(1) << 61;
  expect_same_error_everywhere([&] { c.forward(); }, ErrorCode::size_overflow,
                               "rank 0: options.attention.diagonal_offset 2305843009213693952 with global seq_q 13");
}

TEST(RingErrors, LocalSlicesRejectsBadArguments) {
  memattn::dist::RingOptions o;
  o.seq_q = 8;
  EXPECT_THROW(memattn::dist::local_slices(o, 0, 0), memattn::Error);
  EXPECT_THROW(memattn::dist::local_slices(o, 2, 2), memattn::Error);
  o.seq_q = -1;
  EXPECT_THROW(memattn::dist::local_slices(o, 2, 0), memattn::Error);
}

// Forward and backward twice, and again on 3 threads per rank: the same bytes every time.
TEST(RingDeterminism, BitwiseRunToRunAndAcrossThreadCounts) {
  for (DType dt : {DType::f32, DType::bf16}) {
    RingCase first({2, 29, 29, 4, 2, 32, 16}, dt, true, Placement::zigzag);
    first.options.attention.num_threads = 1;
    first.forward();
    first.backward();
    for (int threads : {1, 3}) {
      RingCase again({2, 29, 29, 4, 2, 32, 16}, dt, true, Placement::zigzag);
      again.options.attention.num_threads = threads;
      again.forward();
      again.backward();
      for (auto [a, b, name] : {std::tuple{&first.out, &again.out, "out"},
                                {&first.lse, &again.lse, "lse"},
                                {&first.dq, &again.dq, "dq"},
                                {&first.dk, &again.dk, "dk"},
                                {&first.dv, &again.dv, "dv"}})
        EXPECT_EQ(bitwise_difference(*b, *a), "")
            << name << " with " << threads << " threads, " << memattn::dtype_name(dt);
    }
  }
}

}  // namespace
