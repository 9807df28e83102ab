// Options::diagonal_offset: causal, window and ALiBi around the moved diagonal, forward and
// backward on every algorithm against Ref64, against an explicit boolean mask, per varlen sequence
// and per KV-cache sequence, and its argument errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "fault_support.hpp"
#include "support_backward.hpp"
#include "varlen_support.hpp"

using namespace mt;
using memattn::Algorithm;
using memattn::Align;
using memattn::ErrorCode;

namespace {

const int64_t kOffsets[] = {-5, 0, 7};
const Align kAligns[] = {Align::top_left, Align::bottom_right};

// The diagonal-dependent options: causal, windows (two-sided, one-sided, zero-width) and ALiBi.
struct Band {
  const char* name;
  bool causal = false;
  int64_t left = -1, right = -1;
  bool alibi = false;
};
const Band kBands[] = {
    {"causal", true},          {"window_3_2", false, 3, 2}, {"window_0_right_unbounded", false, 0, -1},
    {"causal_window_4", true, 4, -1}, {"alibi", false, -1, -1, true}, {"causal_alibi", true, -1, -1, true},
};

void apply(Case& c, const Band& band, Align align, int64_t offset) {
  c.options.causal = band.causal;
  c.options.window_left = band.left, c.options.window_right = band.right;
  c.options.align = align;
  c.options.diagonal_offset = offset;
  if (band.alibi) {
    std::vector<double> slopes;
    for (int64_t h = 0; h < c.s.Hq; ++h) slopes.push_back(0.25 / double(h + 1));
    c.set_alibi({c.s.Hq}, slopes);
  }
}

}  // namespace

TEST(DiagonalOffset, ForwardEveryAlgorithmAgainstRef64) {
  uint64_t seed = 1;
  // seq_q < seq_k and seq_q > seq_k, so the two alignments differ.
  for (const Shape& s : {Shape{2, 11, 19, 2, 1, 16, 16}, Shape{1, 19, 9, 2, 2, 8, 8}})
    for (const Band& band : kBands)
      for (Align align : kAligns)
        for (int64_t offset : kOffsets) {
          Case c(s, DType::f32, ++seed);
          apply(c, band, align, offset);
          SCOPED_TRACE(std::string(band.name) + " " + describe(c));
          expect_accurate_all(c);
        }
}

TEST(DiagonalOffset, LowPrecisionFlashAgainstRef64) {
  uint64_t seed = 100;
  for (DType dt : {DType::bf16, DType::f16})
    for (int64_t offset : kOffsets) {
      Case c({1, 37, 45, 2, 1, 16, 16}, dt, ++seed);
      apply(c, kBands[3], Align::bottom_right, offset);
      c.options.query_chunk = c.options.key_chunk = 8;  // the band crosses chunk boundaries
      SCOPED_TRACE(describe(c));
      expect_accurate(c);
    }
}

TEST(DiagonalOffset, CausalOffsetEqualsExplicitMask) {
  // Written independently of the library and of Ref64's visibility rule: top-left causal with
  // offset d shows query i the keys j <= i + d, a window (l, r) the keys i + d - l .. i + d + r.
  const Shape s{1, 9, 14, 1, 1, 8, 8};
  for (int64_t offset : {-12, -3, 0, 4, 20})
    for (bool window : {false, true}) {
      Case banded(s, DType::f32, 7), masked(s, DType::f32, 7);
      banded.options.causal = !window;
      if (window) banded.options.window_left = 2, banded.options.window_right = 1;
      banded.options.diagonal_offset = offset;
      std::vector<uint8_t> mask;
      for (int64_t i = 0; i < s.Sq; ++i)
        for (int64_t j = 0; j < s.Sk; ++j)
          mask.push_back(window ? j >= i + offset - 2 && j <= i + offset + 1 : j <= i + offset);
      masked.set_mask({1, 1, s.Sq, s.Sk}, mask);
      for (Algorithm alg : {Algorithm::naive, Algorithm::flash}) {
        banded.options.algorithm = masked.options.algorithm = alg;
        banded.run();
        masked.run();
        EXPECT_EQ(bitwise_difference(banded.lse, masked.lse), "") << "offset " << offset << " window " << window;
        EXPECT_EQ(accuracy_failure(banded.out_values(), masked.out_values(), masked.out_values(), DType::f32), "")
            << "offset " << offset << " window " << window;
      }
    }
}

TEST(DiagonalOffset, BackwardAgainstRef64) {
  uint64_t seed = 200;
  for (DType dt : {DType::f32, DType::bf16})
    for (Algorithm alg : {Algorithm::naive, Algorithm::flash})
      for (const Band& band : {kBands[0], kBands[1], kBands[5]})
        for (Align align : kAligns)
          for (int64_t offset : kOffsets) {
            if (dt == DType::bf16 && alg == Algorithm::naive) continue;
            BackwardCase c({1, 13, 17, 2, 1, 16, 16}, dt, ++seed);
            c.options.algorithm = alg;
            apply(c, band, align, offset);
            SCOPED_TRACE(std::string(band.name) + " " + describe(c));
            expect_backward_accurate(c);
          }
}

TEST(DiagonalOffset, VarlenSequencesMatchDenseCalls) {
  // Each sequence takes the offset from its own diagonal: the same as its dense call.
  for (int64_t offset : {-2, 3}) {
    VarlenCase c({4, 0, 9, 6}, {7, 3, 5, 6}, 2, 1, 8, 8, DType::f32);
    c.options.causal = true, c.options.align = Align::bottom_right;
    c.options.window_left = 3;
    c.options.diagonal_offset = offset;
    c.forward();
    for (size_t b = 0; b < c.count(); ++b) {
      BackwardCase d = c.dense(b);
      d.run();
      EXPECT_EQ(bitwise_difference(VarlenCase::rows(c.out, c.first_q(b), c.len_q[b]), d.out), "")
          << "offset " << offset << ", sequence " << b;
      const RefProblem p = d.problem();
      EXPECT_EQ(p.diagonal_offset, offset);
      EXPECT_EQ(accuracy_failure(d.out_values(), reference64(p).out, baseline(p, DType::f32).out, DType::f32), "")
          << "offset " << offset << ", sequence " << b;
    }
  }
}

TEST(DiagonalOffset, KvCacheSequencesMatchDenseCalls) {
  const int64_t B = 2, Sq = 3, H = 2, D = 8, capacity = 12;
  const std::vector<int64_t> lens{9, 5};
  Buf q(DType::f32, {B, Sq, H, D}), kc(DType::f32, {B, capacity, H, D}), vc(DType::f32, {B, capacity, H, D});
  fill_randn(q, 1), fill_randn(kc, 2), fill_randn(vc, 3);
  std::vector<int32_t> seqlens(lens.begin(), lens.end());
  const Tensor sl = Tensor::contiguous(seqlens.data(), DType::i32, {B});
  for (int64_t offset : {-2, 1}) {
    memattn::Options o;
    o.causal = true, o.align = Align::bottom_right, o.window_left = 2, o.diagonal_offset = offset;
    Buf out(DType::f32, {B, Sq, H, D});
    memattn::attention_with_kvcache(q.view(), kc.view(), vc.view(), sl, nullptr, out.view(), nullptr, o);
    for (int64_t b = 0; b < B; ++b) {
      const auto batch_rows = [&](Buf& x, int64_t rows, int64_t stride_rows) {
        return Tensor::strided(static_cast<float*>(x.data()) + b * stride_rows * H * D, DType::f32,
                               {1, rows, H, D}, {stride_rows * H * D, H * D, D, 1});
      };
      Buf want(DType::f32, {1, Sq, H, D});
      o.algorithm = Algorithm::flash;
      memattn::forward(batch_rows(q, Sq, Sq), batch_rows(kc, lens[size_t(b)], capacity),
                       batch_rows(vc, lens[size_t(b)], capacity), want.view(), nullptr, o);
      o.algorithm = Algorithm::automatic;
      EXPECT_EQ(std::memcmp(static_cast<char*>(out.data()) + b * want.bytes.size(), want.data(), want.bytes.size()), 0)
          << "offset " << offset << ", sequence " << b;
    }
  }
}

TEST(DiagonalOffset, OutOfRangeIsAnErrorNamingIt) {
  Case c({1, 4, 6, 1, 1, 1, 1}, DType::f32);  // head dim 1: a 2^62-row q below stays countable
  c.options.causal = true;
  const int64_t limit = int64_t(1) << 62;
  for (int64_t bad : {limit + 1, -limit - 1, std::numeric_limits<int64_t>::min()}) {
    c.options.diagonal_offset = bad;
    expect_call_error(c, Call(c), ErrorCode::invalid_argument,
                      {"diagonal_offset must be in [-2^62, 2^62], got " + std::to_string(bad)});
  }
  // In range, but the last of 2^62 - 1 queries (zero strides: no memory) would have its diagonal
  // past int64.
  memattn::Options o = c.options;
  o.diagonal_offset = limit;
  const Tensor huge_q = Tensor::strided(c.q.data(), DType::f32, {1, limit - 1, 1, 1}, {0, 0, 0, 0});
  expect_error([&] { (void)memattn::workspace_bytes(huge_q, c.k.view(), c.v.view(), o); }, ErrorCode::size_overflow,
               {"diagonal_offset " + std::to_string(limit) + " moves the diagonal too far for key bounds in int64"});
  o.diagonal_offset = 0;  // the same sizes without the offset are fine
  EXPECT_NO_THROW((void)memattn::workspace_bytes(huge_q, c.k.view(), c.v.view(), o));
  // The largest offsets that fit work: every key visible (causal) or none.
  for (int64_t fits : {int64_t(1) << 60, -(int64_t(1) << 60)}) {
    c.options.diagonal_offset = fits;
    EXPECT_NO_THROW(c.run()) << fits;
    const RefProblem p = c.problem();
    EXPECT_EQ(accuracy_failure(c.out_values(), reference64(p).out, baseline(p, DType::f32).out, DType::f32), "");
  }
}
