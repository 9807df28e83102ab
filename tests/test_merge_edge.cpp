// memattn::merge on hand-made parts: the definition computed in long double, zero parts, empty
// parts that are never read, NaN and +inf, in-place and strided operands, threads, every error.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "fault_support.hpp"
#include "support.hpp"

using namespace mt;
using memattn::ErrorCode;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int64_t B = 2, S = 5, H = 3, Dv = 7;

// n parts [B, S, H, Dv] of randn values with lse ~ N(0, 3^2); about `empty` of the rows of each
// part have lse = -inf and NaN in their out row.
struct Parts {
  std::vector<Buf> outs, lses;
  Buf out, lse;
  Parts(size_t n, DType dt, uint64_t seed, double empty = 0.25, int64_t b = B, int64_t s = S,
        int64_t h = H, int64_t dv = Dv)
      : out(dt, {b, s, h, dv}), lse(DType::f32, {b, h, s}) {
    std::mt19937_64 rng(seed);
    for (size_t p = 0; p < n; ++p) {
      outs.emplace_back(dt, std::vector<int64_t>{b, s, h, dv});
      lses.emplace_back(DType::f32, std::vector<int64_t>{b, h, s});
      fill_randn(outs.back(), seed * 7 + p);
      fill_randn(lses.back(), seed * 7 + p + 1000, 3.0);
      for (int64_t r = 0; r < lses.back().numel(); ++r) {
        if (std::uniform_real_distribution<>(0, 1)(rng) >= empty) continue;
        lses.back().set(r, -kInf);
        const int64_t bb = r / (h * s), hh = r / s % h, i = r % s;
        for (int64_t c = 0; c < dv; ++c) outs.back().set(((bb * s + i) * h + hh) * dv + c, NAN);
      }
    }
    out.fill(-7.25);
    lse.fill(-7.25);
  }
  std::vector<Tensor> out_views() { return views(outs); }
  std::vector<Tensor> lse_views() { return views(lses); }
  static std::vector<Tensor> views(std::vector<Buf>& bufs) {
    std::vector<Tensor> r;
    for (Buf& b : bufs) r.push_back(b.view());
    return r;
  }
  void merge(int threads = 0) {
    Tensor l = lse.view();
    memattn::merge(out_views(), lse_views(), out.view(), &l, {threads});
  }
};

// The definition, in long double, straight from the parts' values.
void expect_definition(const Parts& parts) {
  const std::vector<int64_t>& sh = parts.out.shape;
  const int64_t s = sh[1], h = sh[2], dv = sh[3];
  for (int64_t r = 0; r < parts.lse.numel(); ++r) {
    const int64_t b = r / (h * s), hh = r / s % h, i = r % s;
    long double total = 0;
    for (const Buf& l : parts.lses) total += std::exp((long double)l.get(r));
    const double want_lse = total == 0 ? -kInf : double(std::log(total));
    const double got_lse = parts.lse.get(r);
    if (total == 0)
      EXPECT_EQ(got_lse, -kInf) << "row " << r;
    else
      EXPECT_NEAR(got_lse, want_lse, 1e-6 * std::max(1.0, std::fabs(want_lse))) << "row " << r;
    for (int64_t c = 0; c < dv; ++c) {
      const int64_t e = ((b * s + i) * h + hh) * dv + c;
      long double want = 0, magnitude = 0;
      for (size_t p = 0; p < parts.outs.size(); ++p) {
        const long double l = parts.lses[p].get(r);
        if (total == 0 || l == -INFINITY) continue;
        want += std::exp(l) / total * parts.outs[p].get(e);
        magnitude += std::exp(l) / total * std::fabs(parts.outs[p].get(e));
      }
      const double got = parts.out.get(e);
      const double tol = unit_roundoff(parts.out.dtype) * std::fabs(double(want)) +
                         4 * 0x1p-24 * double(parts.outs.size() + 1) * double(magnitude);
      EXPECT_NEAR(got, double(want), tol) << "element " << e;
      if (total == 0) EXPECT_TRUE(got == 0 && !std::signbit(got)) << "element " << e;
    }
  }
}

}  // namespace

TEST(MergeEdge, matches_the_definition) {
  for (DType dt : {DType::f32, DType::bf16, DType::f16, DType::f64})
    for (size_t n : {1, 2, 3, 8}) {
      Parts parts(n, dt, 10 * n + size_t(dt));
      parts.merge();
      SCOPED_TRACE(std::string(memattn::dtype_name(dt)) + " parts " + std::to_string(n));
      expect_definition(parts);
    }
  Parts wide(3, DType::f32, 11, 0.25, 1, 3, 2, 300);  // head_dim_v over several tiles of a row
  wide.merge();
  expect_definition(wide);
}

TEST(MergeEdge, zero_parts_give_empty_rows) {
  for (DType dt : {DType::f32, DType::bf16, DType::f64}) {
    Parts parts(0, dt, 1);
    parts.merge();
    for (double x : parts.out.values()) ASSERT_TRUE(x == 0 && !std::signbit(x));
    for (double x : parts.lse.values()) ASSERT_EQ(x, -kInf);
  }
}

TEST(MergeEdge, one_live_part_is_returned_bitwise) {
  // Every part but part 1 is empty (NaN rows): its weight is exactly 1, out and lse are its own.
  Parts parts(4, DType::f32, 3, 1.0);
  fill_randn(parts.outs[1], 99);
  fill_randn(parts.lses[1], 98, 5.0);
  parts.merge();
  EXPECT_EQ(bitwise_difference(parts.out, parts.outs[1]), "");
  EXPECT_EQ(bitwise_difference(parts.lse, parts.lses[1]), "");
}

TEST(MergeEdge, nan_and_infinity_propagate) {
  Parts parts(3, DType::f32, 4, 0.0);
  const int64_t row = 4;             // lse element (b 0, h 0, i 4): out row i 4, h 0
  parts.lses[1].set(row, NAN);       // NaN lse: the whole row and its lse
  parts.lses[2].set(row + S, kInf);  // +inf lse (h 1): NaN by exp(inf - inf)
  const int64_t e = ((1 * S + 2) * H + 2) * Dv + 3;  // b 1, i 2, h 2, c 3
  parts.lses[0].set((1 * H + 2) * S + 2, -30);       // tiny weight, still contributing
  parts.outs[0].set(e, NAN);
  const int64_t alone = (1 * H + 0) * S + 0;  // NaN in the one part that is not -inf
  parts.lses[0].set(alone, -kInf);
  parts.lses[1].set(alone, NAN);
  parts.lses[2].set(alone, -kInf);
  parts.merge();
  for (int64_t c = 0; c < Dv; ++c) {
    EXPECT_TRUE(std::isnan(parts.out.get((4 * H + 0) * Dv + c))) << c;
    EXPECT_TRUE(std::isnan(parts.out.get((4 * H + 1) * Dv + c))) << c;
    EXPECT_EQ(std::isnan(parts.out.get(e - 3 + c)), c == 3) << c;
  }
  EXPECT_TRUE(std::isnan(parts.lse.get(row)));
  EXPECT_TRUE(std::isnan(parts.lse.get(row + S)));
  EXPECT_FALSE(std::isnan(parts.lse.get((1 * H + 2) * S + 2)));
  EXPECT_TRUE(std::isnan(parts.lse.get(alone)));
  EXPECT_TRUE(std::isnan(parts.out.get((1 * S + 0) * H * Dv)));  // out row b 1, i 0, h 0
  int nan_rows = 0;
  for (double x : parts.lse.values()) nan_rows += std::isnan(x);
  EXPECT_EQ(nan_rows, 3);
}

TEST(MergeEdge, in_place_into_a_part) {
  for (size_t into : {0, 2}) {
    Parts parts(3, DType::f32, 5), copy(3, DType::f32, 5);
    copy.merge();
    std::vector<Tensor> outs = parts.out_views(), lses = parts.lse_views();
    memattn::merge(outs, lses, outs[into], &lses[into]);
    EXPECT_EQ(bitwise_difference(parts.outs[into], copy.out), "") << into;
    EXPECT_EQ(bitwise_difference(parts.lses[into], copy.lse), "") << into;
  }
}

TEST(MergeEdge, strided_operands_give_the_same_bits) {
  // Parts in BHSD (transposed heads and queries), lses as [B, S, H] transposed, out reversed.
  for (DType dt : {DType::f32, DType::bf16}) {
    Parts plain(3, dt, 6);
    plain.merge();
    Parts parts(3, dt, 6);
    std::vector<Buf> storage;
    std::vector<Tensor> outs, lses;
    for (size_t p = 0; p < 3; ++p) {
      storage.emplace_back(dt, std::vector<int64_t>{B, H, S, Dv});
      outs.push_back(
          Tensor::strided(storage.back().data(), dt, {B, S, H, Dv}, {H * S * Dv, Dv, S * Dv, 1}));
      copy_to_view(parts.outs[p], outs.back());
      storage.emplace_back(DType::f32, std::vector<int64_t>{B, S, H});
      lses.push_back(Tensor::strided(storage.back().data(), DType::f32, {B, H, S}, {S * H, 1, H}));
      copy_to_view(parts.lses[p], lses.back());
    }
    Buf out_storage(dt, {B, S, H, Dv});
    Tensor out = out_storage.view();
    out.data =
        static_cast<char*>(out.data) + (S - 1) * out.strides[1] * int64_t(memattn::dtype_size(dt));
    out.strides[1] = -out.strides[1];
    memattn::merge(outs, lses, out, nullptr);
    Buf got(dt, {B, S, H, Dv});
    copy_from_view(out, got);
    EXPECT_EQ(bitwise_difference(got, plain.out), "") << memattn::dtype_name(dt);
  }
}

TEST(MergeEdge, bitwise_for_any_thread_count) {
  Parts one(5, DType::f32, 7, 0.2, 2, 64, 4, 64);
  one.merge(1);
  for (int threads : {2, 3, 7}) {
    Parts many(5, DType::f32, 7, 0.2, 2, 64, 4, 64);
    many.merge(threads);
    EXPECT_EQ(bitwise_difference(many.out, one.out), "") << threads;
    EXPECT_EQ(bitwise_difference(many.lse, one.lse), "") << threads;
  }
}
