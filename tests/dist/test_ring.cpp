// Ring attention over MPI against Ref64 of the gathered problem (TESTPLAN's primary rule), for
// every placement, causal alignment, sliding windows, diagonal offsets, mask and bias slices,
// ALiBi, ragged lengths, GQA, dtypes and the backward; run by ctest under mpirun with 1 to 4
// ranks (the same cases on every rank count).
#include <gtest/gtest.h>

#include "dist/layout.hpp"
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

// Options that move or bound the diagonal and operands cut per rank: a window (-1 unbounded), a
// diagonal offset, and the extras below.
enum class Extra { none, mask, bias, row_bias_bf16, mask_bias, alibi };

struct MaskParam {
  const char* name;
  Shape shape;
  DType dtype;
  bool causal;
  Placement placement;
  Align align;
  int64_t left, right, offset;
  Extra extra;
};

const MaskParam kMaskCases[] = {
    {"window_5_3_contiguous", {1, 37, 37, 2, 2, 16, 16}, DType::f32, false, Placement::contiguous, Align::top_left, 5, 3, 0, Extra::none},
    // (0, 0) would leave one key per row, whose exact gradients 0 the merged out only meets up
    // to rounding: (0, 1) keeps the zero-width side.
    {"window_0_1_zigzag", {1, 37, 37, 2, 2, 16, 16}, DType::f32, false, Placement::zigzag, Align::top_left, 0, 1, 0, Extra::none},
    {"causal_window_left_zigzag", {2, 37, 37, 2, 1, 16, 16}, DType::f32, true, Placement::zigzag, Align::top_left, 6, -1, 0, Extra::none},
    {"window_right_only_contiguous", {1, 37, 37, 2, 2, 16, 16}, DType::f32, false, Placement::contiguous, Align::top_left, -1, 4, 0, Extra::none},
    {"cross_causal_window_bottom_right_zigzag", {1, 23, 41, 2, 2, 16, 16}, DType::f32, true, Placement::zigzag, Align::bottom_right, 7, -1, 0, Extra::none},
    {"short_keys_window_top_left_contiguous", {1, 41, 23, 2, 2, 16, 16}, DType::f32, false, Placement::contiguous, Align::top_left, 3, 2, 0, Extra::none},
    {"short_keys_window_bottom_right_zigzag", {1, 41, 23, 2, 2, 16, 16}, DType::f32, false, Placement::zigzag, Align::bottom_right, 2, 5, 0, Extra::none},
    {"causal_window_offset_minus_4_zigzag", {1, 37, 37, 2, 2, 16, 16}, DType::f32, true, Placement::zigzag, Align::top_left, 5, -1, -4, Extra::none},
    {"window_offset_plus_6_contiguous", {1, 37, 29, 2, 2, 16, 16}, DType::f32, false, Placement::contiguous, Align::bottom_right, 2, 2, 6, Extra::none},
    {"bf16_gqa_causal_window_zigzag", {1, 37, 37, 4, 2, 32, 32}, DType::bf16, true, Placement::zigzag, Align::top_left, 9, -1, 0, Extra::none},
    {"mask_contiguous", {2, 37, 37, 2, 2, 16, 16}, DType::f32, false, Placement::contiguous, Align::top_left, -1, -1, 0, Extra::mask},
    {"mask_causal_zigzag", {1, 37, 37, 2, 2, 16, 16}, DType::f32, true, Placement::zigzag, Align::top_left, -1, -1, 0, Extra::mask},
    {"bias_causal_window_zigzag", {1, 37, 37, 2, 1, 16, 16}, DType::f32, true, Placement::zigzag, Align::top_left, 8, -1, 0, Extra::bias},
    {"row_broadcast_bf16_bias_contiguous", {2, 29, 37, 2, 2, 32, 32}, DType::bf16, false, Placement::contiguous, Align::top_left, -1, -1, 0, Extra::row_bias_bf16},
    {"mask_bias_window_cross_zigzag", {1, 23, 41, 2, 2, 16, 16}, DType::f32, true, Placement::zigzag, Align::bottom_right, 10, -1, 0, Extra::mask_bias},
    {"alibi_causal_bottom_right_zigzag", {1, 23, 41, 2, 2, 16, 16}, DType::f32, true, Placement::zigzag, Align::bottom_right, -1, -1, 0, Extra::alibi},
    {"f16_alibi_window_contiguous", {1, 37, 37, 2, 2, 16, 16}, DType::f16, false, Placement::contiguous, Align::top_left, 4, 4, 0, Extra::alibi},
};

void PrintTo(const MaskParam& p, std::ostream* os) { *os << p.name; }

void add_options(BackwardCase& c, const MaskParam& m) {
  const Shape& s = c.s;
  c.options.window_left = m.left, c.options.window_right = m.right;
  c.options.diagonal_offset = m.offset;
  if (m.extra == Extra::mask || m.extra == Extra::mask_bias)
    c.set_mask({s.B, 1, s.Sq, s.Sk}, random_mask(size_t(s.B * s.Sq * s.Sk), 91, 0.8));
  if (m.extra == Extra::bias || m.extra == Extra::mask_bias)
    c.set_bias({1, s.Hq, s.Sq, s.Sk}, DType::f32, randn_values(size_t(s.Hq * s.Sq * s.Sk), 92));
  if (m.extra == Extra::row_bias_bf16)
    c.set_bias({s.B, 1, 1, s.Sk}, DType::bf16, randn_values(size_t(s.B * s.Sk), 93));
  if (m.extra == Extra::alibi) {
    std::vector<double> slopes;
    for (int64_t h = 0; h < s.Hq; ++h) slopes.push_back(0.2 / double(h + 1));
    c.set_alibi({s.Hq}, slopes);
  }
}

class RingMasks : public testing::TestWithParam<MaskParam> {};

TEST_P(RingMasks, ForwardAndBackwardMatchTheGatheredProblem) {
  const MaskParam& m = GetParam();
  RingCase rc(m.shape, m.dtype, m.causal, m.placement, m.align, 3, MPI_COMM_WORLD,
              [&](BackwardCase& c) { add_options(c, m); });
  rc.forward();
  rc.backward();
  expect_ring_accurate(rc, true);
}

INSTANTIATE_TEST_SUITE_P(Cases, RingMasks, testing::ValuesIn(kMaskCases),
                         [](const testing::TestParamInfo<MaskParam>& i) {
                           return std::string(i.param.name);
                         });

// The coverage of a block against every (row, key) pair enumerated, for small blocks and every
// diagonal offset, causal and window combination that reaches them.
TEST(RingLayout, CoverageMatchesEnumeration) {
  using memattn::dist::detail::Coverage;
  for (int64_t rows : {1, 3, 5})
    for (int64_t keys : {1, 4})
      for (int64_t offset = -8; offset <= 8; ++offset)
        for (bool causal : {false, true})
          for (int64_t left : {-1, 0, 2})
            for (int64_t right : {-1, 0, 3}) {
              int64_t seen = 0;
              for (int64_t r = 0; r < rows; ++r)
                for (int64_t j = 0; j < keys; ++j)
                  seen += !(causal && j > r + offset) && !(left >= 0 && j < r + offset - left) &&
                          !(right >= 0 && j > r + offset + right);
              const Coverage want = seen == 0 ? Coverage::hidden : seen == rows * keys ? Coverage::full : Coverage::partial;
              EXPECT_EQ(int(memattn::dist::detail::coverage(rows, keys, offset, causal, left, right)), int(want))
                  << rows << "x" << keys << " offset " << offset << " causal " << causal << " window " << left
                  << "," << right;
            }
}

// A narrow window hides most block pairs: they are skipped, and the others carry the global
// diagonal as their offset.
TEST(RingLayout, WindowHidesFarPairs) {
  memattn::dist::RingOptions o;
  o.seq_q = 64;
  o.attention.window_left = o.attention.window_right = 2;
  const memattn::dist::detail::RingLayout l = memattn::dist::detail::make_layout(o, 4);
  int visible = 0;
  for (int r = 0; r < 4; ++r)
    for (int owner = 0; owner < 4; ++owner)
      l.for_each_visible_pair(r, owner, [&](const memattn::dist::detail::BlockPair& p) {
        ++visible;
        EXPECT_LE(std::abs(r - owner), 1) << "pair " << r << "," << owner << " is outside the window";
        EXPECT_EQ(p.visibility.diagonal_offset, 16 * (r - owner));
      });
  EXPECT_EQ(visible, 4 + 2 * 3);  // the diagonal blocks and their neighbours
}

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
