// Every head dim from 1 to 256 (issue 8): the f32 and bf16 families pick their P V product and
// K access by dim and dim_v (padded or transposed P V, odd bf16 rows read in place), so each dim
// is checked against the fp64 reference, on every SIMD target for f32; plus NaN propagation and
// thread-count determinism where the transposed product runs.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "memattn/targets.hpp"
#include "support.hpp"

using namespace mt;

namespace {

// Query chunks of 32 rows (the P V products choose by rows, and 32 full lanes take the transposed
// one at every dim_v off a multiple of 16) and a last one of 8 (which mostly keeps the padded
// one); 37 keys in chunks of 16, an odd last chunk and key pair; causal, bottom-right: full and
// masked chunks both run.
Shape shape_for(int64_t d) { return {1, 40, 37, 2, 1, d, d}; }

void configure(Case& c) {
  c.options.query_chunk = 32;
  c.options.key_chunk = 16;
  c.options.causal = true;
  c.options.align = memattn::Align::bottom_right;
}

}  // namespace

TEST(HeadDims, every_dim_f32_every_target) {
  for (const std::string& target : memattn::supported_targets())
    for (int64_t d = 1; d <= 256; ++d) {
      Case c(shape_for(d), DType::f32, uint64_t(d));
      configure(c);
      c.options.target = target.c_str();
      SCOPED_TRACE("target " + target + " d " + std::to_string(d));
      expect_accurate(c);
    }
}

TEST(HeadDims, every_dim_bf16) {
  for (int64_t d = 1; d <= 256; ++d) {
    Case c(shape_for(d), DType::bf16, uint64_t(d));
    configure(c);
    SCOPED_TRACE("d " + std::to_string(d));
    expect_accurate(c);
  }
}

TEST(HeadDims, different_dim_and_dim_v) {
  for (DType dt : {DType::f32, DType::bf16})
    for (const auto& [d, dv] : {std::pair<int64_t, int64_t>{17, 5}, {3, 33}, {64, 17}, {129, 63}, {15, 129}}) {
      Case c({1, 20, 37, 2, 1, d, dv}, dt, uint64_t(d * 1000 + dv));
      configure(c);
      SCOPED_TRACE(describe(c));
      expect_accurate(c);
    }
}

// NaN values poison exactly the rows that see them, and an infinite key the rows it makes NaN, at
// dims off a multiple of 16 (NaN parity with the reference).
TEST(HeadDims, nan_and_inf_propagate_off_the_fast_path) {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = HUGE_VAL;
  for (DType dt : {DType::f32, DType::bf16})
    for (int64_t d : {1, 7, 17, 33, 65, 129}) {
      Case c(shape_for(d), dt, uint64_t(d));
      configure(c);
      // Row i sees keys j <= i - 3: key 5 is in a masked chunk of the first query chunk and a
      // full one of the second, key 20 in masked chunks only; key 21's last element is infinite.
      c.v.set(5 * d + d / 2, nan);
      c.v.set(20 * d, nan);
      c.k.set(21 * d + d - 1, inf);
      SCOPED_TRACE(describe(c));
      expect_accurate(c);
    }
}

TEST(HeadDims, bitwise_equal_for_any_thread_count) {
  for (DType dt : {DType::f32, DType::bf16})
    for (int64_t d : {5, 17, 33, 100}) {
      Case c({2, 150, 170, 3, 1, d, d}, dt, uint64_t(d));
      c.options.num_threads = 1;
      c.run();
      const Buf want = c.out;
      for (int threads : {2, 3, 7}) {
        c.options.num_threads = threads;
        c.out.fill(0.0);
        c.run();
        EXPECT_EQ(bitwise_difference(c.out, want), "") << describe(c) << " threads " << threads;
      }
    }
}
