// Ring attention over MPI against Ref64 of the gathered problem (TESTPLAN's primary rule), for
// every placement, causal alignment, ragged lengths, GQA, dtypes and the backward; run by ctest
// under mpirun with 1 to 4 ranks (the same cases on every rank count).
#include <gtest/gtest.h>

#include "ring_support.hpp"

using namespace mt;
using memattn::Align;
using memattn::dist::Placement;

namespace {

struct RingParam {
  const char* name;
  Shape shape;
  DType dtype;
  bool causal;
  Placement placement;
  Align align = Align::top_left;
};

// Lengths 37 and 23 divide by none of 2..8 (ragged chunks for every rank count); 3 leaves ranks
// and zigzag chunks empty; 41 vs 23 puts the causal diagonal off the chunk grid of the keys.
const RingParam kCases[] = {
    {"f32_full_contiguous", {2, 37, 37, 2, 2, 16, 16}, DType::f32, false, Placement::contiguous},
    {"f32_full_zigzag", {1, 37, 37, 2, 2, 16, 16}, DType::f32, false, Placement::zigzag},
    {"f32_causal_contiguous", {2, 37, 37, 2, 2, 16, 16}, DType::f32, true, Placement::contiguous},
    {"f32_causal_zigzag", {2, 37, 37, 2, 2, 16, 16}, DType::f32, true, Placement::zigzag},
    {"f32_gqa_causal_zigzag", {1, 37, 37, 4, 2, 16, 8}, DType::f32, true, Placement::zigzag},
    {"f32_gqa_full_contiguous", {1, 23, 23, 6, 2, 8, 16}, DType::f32, false, Placement::contiguous},
    {"bf16_causal_zigzag", {2, 37, 37, 2, 1, 32, 32}, DType::bf16, true, Placement::zigzag},
    {"bf16_full_contiguous", {1, 37, 37, 2, 2, 32, 32}, DType::bf16, false, Placement::contiguous},
    {"f16_causal_contiguous", {1, 37, 37, 2, 2, 16, 16}, DType::f16, true, Placement::contiguous},
    {"f32_tiny_causal_zigzag", {1, 3, 3, 1, 1, 8, 8}, DType::f32, true, Placement::zigzag},
    {"f32_cross_bottom_right_zigzag",
     {1, 23, 41, 2, 2, 16, 16},
     DType::f32,
     true,
     Placement::zigzag,
     Align::bottom_right},
    {"f32_cross_top_left_contiguous",
     {1, 23, 41, 2, 2, 16, 16},
     DType::f32,
     true,
     Placement::contiguous,
     Align::top_left},
    {"f32_short_keys_bottom_right_zigzag",
     {1, 41, 23, 2, 2, 16, 16},
     DType::f32,
     true,
     Placement::zigzag,
     Align::bottom_right},
    {"f32_short_keys_top_left_contiguous",
     {1, 41, 23, 2, 2, 16, 16},
     DType::f32,
     true,
     Placement::contiguous,
     Align::top_left},
    {"f32_cross_full_zigzag", {1, 23, 41, 2, 2, 16, 16}, DType::f32, false, Placement::zigzag},
};

void PrintTo(const RingParam& p, std::ostream* os) { *os << p.name; }

class Ring : public testing::TestWithParam<RingParam> {};

TEST_P(Ring, ForwardAndBackwardMatchTheGatheredProblem) {
  const RingParam& c = GetParam();
  RingCase rc(c.shape, c.dtype, c.causal, c.placement, c.align);
  rc.forward();
  rc.backward();
  expect_ring_accurate(rc, true);
}

INSTANTIATE_TEST_SUITE_P(Cases, Ring, testing::ValuesIn(kCases),
                         [](const testing::TestParamInfo<RingParam>& i) {
                           return std::string(i.param.name);
                         });

// Two rings at once on the halves of MPI_COMM_WORLD (even and odd ranks), with different problems
// and placements: each call uses the communicator it is given, and the two never mix messages.
TEST(RingCommunicator, IndependentRingsOnSplitCommunicators) {
  MPI_Comm half;
  MPI_Comm_split(MPI_COMM_WORLD, world_rank() % 2, world_rank(), &half);
  const bool odd = world_rank() % 2 == 1;
  RingCase c({1, 29, 29, 2, 2, 16, 16}, DType::f32, true,
             odd ? Placement::contiguous : Placement::zigzag, Align::top_left, odd ? 5 : 6, half);
  c.forward();
  c.backward();
  expect_ring_accurate(c, true);
  MPI_Comm_free(&half);
}

// The slices of all ranks tile each sequence exactly once, in order, with chunk lengths that
// differ by at most one (queries; keys too without a causal mask); zigzag rank r holds chunks r
// and 2R-1-r.
TEST(RingLayout, SlicesTileTheSequence) {
  for (int ranks = 1; ranks <= 5; ++ranks)
    for (Placement pl : {Placement::contiguous, Placement::zigzag})
      for (int64_t seq : {0, 1, 7, 37, 64}) {
        memattn::dist::RingOptions o;
        o.placement = pl;
        o.seq_q = seq;
        const int n = ranks * (pl == Placement::zigzag ? 2 : 1);
        std::vector<memattn::dist::Range> chunks(static_cast<size_t>(n));
        for (int r = 0; r < ranks; ++r) {
          const memattn::dist::LocalSlices s = memattn::dist::local_slices(o, ranks, r);
          ASSERT_EQ(s.count, n / ranks);
          chunks[size_t(r)] = s.q[0];
          if (s.count == 2) chunks[size_t(n - 1 - r)] = s.q[1];
          EXPECT_EQ(s.q[0].start, s.k[0].start);
        }
        int64_t next = 0;
        for (const auto& c : chunks) {
          EXPECT_EQ(c.start, next) << "ranks " << ranks << " seq " << seq;
          EXPECT_LE(c.length, seq / n + 1);
          EXPECT_GE(c.length, seq / n);
          next += c.length;
        }
        EXPECT_EQ(next, seq);
      }
}

}  // namespace

// Every rank runs every test; the job fails if any rank fails. Only rank 0 prints the progress;
// the other ranks print their failures, prefixed with their rank.
class RankFailurePrinter : public testing::EmptyTestEventListener {
  void OnTestPartResult(const testing::TestPartResult& r) override {
    if (r.failed())
      std::fprintf(stderr, "[rank %d] %s:%d: %s\n", world_rank(),
                   r.file_name() ? r.file_name() : "?", r.line_number(), r.summary());
  }
};

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  testing::InitGoogleTest(&argc, argv);
  if (world_rank() != 0) {
    testing::TestEventListeners& listeners = testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter);
  }
  int failed = RUN_ALL_TESTS();
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return failed;
}
