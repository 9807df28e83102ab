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

TEST(RingErrors, SlidingWindowIsUnsupported) {
  RingCase c(kShape, DType::f32, true, Placement::zigzag);
  c.options.attention.window_left = 4;
  expect_same_error_everywhere([&] { c.forward(); }, ErrorCode::unsupported,
                               "rank 0: options.attention.window_left/right must be -1");
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
