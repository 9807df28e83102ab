// The memory contract (issue 2, section 3): the workspace is the only extra memory, the counting
// allocator's peak during forward equals workspace_bytes, and the extra memory of naive grows with
// Nq*Nk, of chunked (automatic chunks, as in the paper) like sqrt(n), of flash not at all. Real
// forwards run up to n = 4096; beyond, sizes come from workspace_bytes (validated the same way).
// Also the paper's listing flaw: memattn's chunked is exact when chunks do not divide n.
#include <gtest/gtest.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "fault_support.hpp"
#include "support.hpp"

using namespace mt;
using memattn::Algorithm;

namespace {

constexpr int64_t kDim = 16;  // small, so the O(n^2) real runs stay fast; the laws hold at any d

// workspace_bytes for one head with nq queries and nk keys. The inputs are stride-0 views of one
// element: sizing validates shapes but never reads data, so n can exceed what memory could hold.
size_t sized(Algorithm alg, int64_t nq, int64_t nk, int threads, int64_t d = kDim) {
  static float element = 0;
  const Tensor q = Tensor::strided(&element, DType::f32, {1, nq, 1, d}, {0, 0, 0, 0});
  const Tensor kv = Tensor::strided(&element, DType::f32, {1, nk, 1, d}, {0, 0, 0, 0});
  memattn::Options o;
  o.algorithm = alg;
  o.num_threads = threads;
  return memattn::workspace_bytes(q, kv, kv, o);
}

// Peak bytes the library held during a real forward of one head of length n, as the hooked
// allocator saw them; asserts it equals workspace_bytes.
size_t measured(Algorithm alg, int64_t n, int threads) {
  Case c(Shape{1, n, n, 1, 1, kDim, kDim}, DType::f32, uint64_t(n));
  c.options.algorithm = alg;
  c.options.num_threads = threads;
  TestAllocator allocator;
  const size_t want = Call(c).workspace_bytes();
  allocator.reset();
  c.run();
  EXPECT_EQ(allocator.peak(), want) << memattn::algorithm_name(alg) << " n=" << n;
  EXPECT_EQ(allocator.outstanding(), 0u);
  return allocator.peak();
}

double ratio(size_t a, size_t b) { return double(a) / double(b); }

}  // namespace

TEST(Memory, peak_equals_workspace_bytes) {
  for (Algorithm alg : {Algorithm::naive, Algorithm::sequential, Algorithm::chunked, Algorithm::flash})
    for (int threads : {1, 2, 3})
      for (bool chunks : {false, true}) {
        SCOPED_TRACE(std::string(memattn::algorithm_name(alg)) + " threads " + std::to_string(threads));
        Case c(Shape{2, 77, 130, 6, 2, 24, 40}, DType::bf16, 31);
        c.options.algorithm = alg;
        c.options.num_threads = threads;
        if (chunks) {
          c.options.query_chunk = 16;
          c.options.key_chunk = 48;
        }
        TestAllocator allocator;
        const size_t want = Call(c).workspace_bytes();
        allocator.reset();
        c.run();
        EXPECT_EQ(allocator.peak(), want);
        EXPECT_EQ(allocator.allocations(), 1) << "the workspace is the only allocation";
        EXPECT_EQ(allocator.outstanding(), 0u);
      }
}

TEST(Memory, naive_grows_with_nq_times_nk) {
  // Measured: quadruples per doubling of n (the n x n f32 scores dominate).
  size_t previous = measured(Algorithm::naive, 512, 1);
  for (int64_t n = 1024; n <= 4096; n *= 2) {
    const size_t now = measured(Algorithm::naive, n, 1);
    EXPECT_NEAR(ratio(now, previous), 4.0, 0.02) << "n=" << n;
    EXPECT_GE(now, size_t(4 * n * n)) << "less than the n x n f32 score matrix";
    previous = now;
  }
  // Sized: the same law far beyond, and linear in each of Nq and Nk separately.
  for (int64_t n = 8192; n <= (int64_t(1) << 20); n *= 2)
    EXPECT_NEAR(ratio(sized(Algorithm::naive, n, n, 1), sized(Algorithm::naive, n / 2, n / 2, 1)), 4.0, 0.01);
  EXPECT_NEAR(ratio(sized(Algorithm::naive, 4096, 8192, 1), sized(Algorithm::naive, 4096, 4096, 1)), 2.0, 0.01);
  EXPECT_NEAR(ratio(sized(Algorithm::naive, 8192, 4096, 1), sized(Algorithm::naive, 4096, 4096, 1)), 2.0, 0.01);
}

TEST(Memory, chunked_grows_like_sqrt_n) {
  // Automatic chunks: query chunk 1024 (the paper's constant) and key chunk ceil(sqrt n), so the
  // (n / key_chunk) summaries of query_chunk x dim_v each make O(sqrt n). One worker: more threads
  // add one workspace slice per query chunk in flight, a constant factor once n >= threads * 1024.
  std::vector<size_t> real;
  for (int64_t n = 1024; n <= 4096; n *= 2) {
    real.push_back(measured(Algorithm::chunked, n, 1));
    EXPECT_EQ(real.back(), sized(Algorithm::chunked, n, n, 1));
  }
  for (size_t i = 1; i < real.size(); ++i) {
    EXPECT_GT(ratio(real[i], real[i - 1]), 1.25);
    EXPECT_LT(ratio(real[i], real[i - 1]), 1.6);
  }
  const auto chunked = [](int64_t n) { return sized(Algorithm::chunked, n, n, 1); };
  for (int64_t n = int64_t(1) << 11; n <= (int64_t(1) << 24); n *= 2) {
    EXPECT_GT(ratio(chunked(n), chunked(n / 2)), 1.25) << "n=" << n;
    EXPECT_LT(ratio(chunked(n), chunked(n / 2)), 1.6) << "n=" << n;
  }
  EXPECT_NEAR(ratio(chunked(int64_t(1) << 14), chunked(int64_t(1) << 10)), 4.0, 0.5);  // sqrt(16)
  // In the limit each quadrupling of n doubles the workspace: sqrt(2) per doubling.
  EXPECT_NEAR(ratio(chunked(int64_t(1) << 26), chunked(int64_t(1) << 24)), 2.0, 0.02);
  // The query chunk is a constant factor, which is why it does not appear in O(sqrt n).
  EXPECT_LT(chunked(int64_t(1) << 20), sized(Algorithm::naive, 1 << 20, 1 << 20, 1) / 1000);
}

TEST(Memory, flash_is_constant_in_n) {
  // Work items take up to 512 query rows, fewer while that would leave a core of the machine
  // fewer than four items (one head here): the workspace grows with n until the tiles are whole
  // (n = 2048 x cores), and not at all after that.
  for (int threads : {1, 2}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    const size_t whole = sized(Algorithm::flash, int64_t(1) << 24, int64_t(1) << 24, threads);
    EXPECT_LE(measured(Algorithm::flash, 4096, threads), whole);
    size_t previous = 0;
    for (int64_t n = int64_t(1) << 10; n <= (int64_t(1) << 24); n *= 2) {
      const size_t now = sized(Algorithm::flash, n, n, threads);
      EXPECT_GE(now, previous) << "n=" << n;
      EXPECT_LE(now, whole) << "n=" << n;
      if (n >= (int64_t(1) << 20)) EXPECT_EQ(now, whole) << "n=" << n;
      previous = now;
    }
    // The paper's section 2 algorithm: one value vector, O(d), also constant.
    const size_t sequential = sized(Algorithm::sequential, 1024, 1024, threads);
    EXPECT_EQ(sized(Algorithm::sequential, int64_t(1) << 24, int64_t(1) << 24, threads), sequential);
  }
}

TEST(ChunkedPaper, exact_for_non_dividing_chunks) {
  // The paper's listing clamps the last dynamic_slice, counting keys twice when the key chunk
  // does not divide n (max error 0.14 for n = 300, key chunk 64); memattn's chunked is exact.
  for (DType dt : {DType::f32, DType::f64}) {
    Case c(Shape{1, 300, 300, 2, 1, 32, 32}, dt, 37);
    c.options.algorithm = Algorithm::chunked;
    c.options.key_chunk = 64;
    c.options.query_chunk = 7;
    SCOPED_TRACE(memattn::dtype_name(dt));
    expect_accurate(c);
  }
  for (auto [n, ck, cq] : {std::tuple{257, 7, 300}, std::tuple{300, 299, 1}, std::tuple{301, 300, 13},
                           std::tuple{65, 64, 64}}) {
    Case c(Shape{1, n, n, 1, 1, 8, 8}, DType::f32, 41);
    c.options.algorithm = Algorithm::chunked;
    c.options.key_chunk = ck;
    c.options.query_chunk = cq;
    SCOPED_TRACE("n=" + std::to_string(n) + " key chunk " + std::to_string(ck) + " query chunk " +
                 std::to_string(cq));
    expect_accurate(c);
  }
}
