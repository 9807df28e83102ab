// The flash forward's decode items (issue 9): a few queries against long keys, a GQA group's heads
// in one item, the keys split into partials merged exactly; against Ref64, across thread counts,
// and the planner's split choice.
#include <gtest/gtest.h>

#include "api/validate.hpp"
#include "plan/plan.hpp"
#include "support.hpp"

using namespace mt;
using memattn::Align;

namespace {

// The planned Params of a call of shape s: validated with empty sequences (null data), then
// given the lengths, which is all the planner reads.
memattn::detail::Params planned(const Shape& s, const memattn::Options& o = {}) {
  const Tensor q = Tensor::contiguous(nullptr, DType::f32, {s.B, 0, s.Hq, s.D});
  const Tensor k = Tensor::contiguous(nullptr, DType::f32, {s.B, 0, s.Hkv, s.D});
  const Tensor v = Tensor::contiguous(nullptr, DType::f32, {s.B, 0, s.Hkv, s.Dv});
  memattn::detail::Params p = memattn::detail::make_forward_params(q, k, v, nullptr, nullptr, o);
  p.seq_q = s.Sq, p.seq_k = s.Sk;
  // Empty tensors get zero strides; the planner reads those of the contiguous cache.
  const int64_t k_strides[4] = {s.Sk * s.Hkv * s.D, s.Hkv * s.D, s.D, 1};
  const int64_t v_strides[4] = {s.Sk * s.Hkv * s.Dv, s.Hkv * s.Dv, s.Dv, 1};
  std::copy_n(k_strides, 4, p.k.stride), std::copy_n(v_strides, 4, p.v.stride);
  memattn::detail::plan_forward(p, o);
  return p;
}

}  // namespace

TEST(Decode, PlannerGroupsHeadsAndSplitsKeys) {
  const auto p = planned({2, 4, 5000, 8, 2, 64, 64});
  EXPECT_TRUE(p.grouped);
  EXPECT_EQ(p.query_chunk, 4 * 4);  // the group's 4 heads x 4 queries
  EXPECT_EQ(p.split_keys % p.key_chunk, 0);
  EXPECT_GE(p.split_keys, 2048);
  EXPECT_EQ(p.splits, (5000 + p.split_keys - 1) / p.split_keys);
  const int64_t blocks = (2 + p.kv_heads_per_item - 1) / p.kv_heads_per_item;
  EXPECT_EQ(memattn::detail::work_items(p), 2 * blocks * p.splits);
  // Every (batch, kv head, split) once, splits covering the keys without overlap.
  std::vector<int> seen(size_t(2 * 2 * 5000), 0);
  for (int64_t i = 0; i < memattn::detail::work_items(p); ++i) {
    const auto it = memattn::detail::flash_item(p, i);
    EXPECT_EQ(it.heads, 4);
    EXPECT_EQ(it.h0, it.g * 4);
    for (int64_t g = it.g; g < it.g + it.kv_heads; ++g)
      for (int64_t j = it.k_lo; j < it.k_hi; ++j) ++seen[size_t((it.b * 2 + g) * 5000 + j)];
  }
  for (int x : seen) ASSERT_EQ(x, 1);
  // Long caches: at most 64 splits, so the partials stop growing with seq_k.
  const auto long_p = planned({1, 1, int64_t(1) << 22, 8, 8, 64, 64});
  EXPECT_EQ(long_p.splits, 64);
  const auto longer_p = planned({1, 1, int64_t(1) << 23, 8, 8, 64, 64});
  EXPECT_EQ(memattn::detail::flash_partial_bytes(long_p), memattn::detail::flash_partial_bytes(longer_p));
  // Training shapes and explicit query chunks keep the dense items.
  EXPECT_FALSE(planned({1, 17, 5000, 8, 2, 64, 64}).grouped);
  memattn::Options o;
  o.query_chunk = 2;
  EXPECT_FALSE(planned({1, 4, 5000, 8, 2, 64, 64}, o).grouped);
}

TEST(Decode, AccurateAgainstRef64) {
  // Sk = 5000: three splits of 2048 keys, the last one partial; Sk = 2049 a one-key split.
  for (DType dt : {DType::f32, DType::bf16, DType::f16})
    for (int64_t sq : {1, 3, 16})
      for (int64_t sk : {1, 100, 2049, 5000}) {
        Case c({2, sq, sk, 8, 2, 40, 24}, dt, uint64_t(sq * 7919 + sk));
        SCOPED_TRACE(describe(c));
        expect_accurate(c);
      }
}

TEST(Decode, MasksAcrossSplits) {
  const Shape s{1, 4, 4500, 6, 3, 32, 32};
  for (DType dt : {DType::f32, DType::bf16}) {
    {  // causal, bottom-right: the queries see all but the last few keys
      Case c(s, dt, 11);
      c.options.causal = true;
      c.options.align = Align::bottom_right;
      SCOPED_TRACE(describe(c));
      expect_accurate(c);
    }
    {  // a window that lies inside the last split only: the other splits' partials are empty
      Case c(s, dt, 12);
      c.options.causal = true;
      c.options.align = Align::bottom_right;
      c.options.window_left = 100;
      SCOPED_TRACE(describe(c));
      expect_accurate(c);
    }
    {  // a random mask and a bias per head
      Case c(s, dt, 13);
      c.set_mask({1, 6, 4, 4500}, random_mask(size_t(6 * 4 * 4500), 14, 0.3));
      c.set_bias({1, 6, 4, 4500}, DType::f32, randn_values(size_t(6 * 4 * 4500), 15));
      SCOPED_TRACE(describe(c));
      expect_accurate(c);
    }
    {  // rows that see no key at all: out 0 and lse -inf, as the dense path
      Case c(s, dt, 16);
      std::vector<uint8_t> m(size_t(4 * 4500), 1);
      for (int64_t j = 0; j < 4500; ++j) m[size_t(2 * 4500 + j)] = 0;  // query 2 sees nothing
      c.set_mask({1, 1, 4, 4500}, m);
      SCOPED_TRACE(describe(c));
      expect_accurate(c);
      for (int64_t h = 0; h < 6; ++h) EXPECT_EQ(c.lse.get(lse_offset(s, 0, h, 2)), -INFINITY);
    }
  }
}

TEST(Decode, BitwiseSameForAnyThreadCount) {
  for (DType dt : {DType::f32, DType::bf16}) {
    Case one({2, 4, 9000, 8, 2, 64, 64}, dt, 21);
    one.options.num_threads = 1;
    one.run();
    for (int threads : {2, 3, 7}) {
      Case many({2, 4, 9000, 8, 2, 64, 64}, dt, 21);
      many.options.num_threads = threads;
      many.run();
      EXPECT_EQ(bitwise_difference(many.out, one.out), "") << threads << " threads, " << describe(many);
      EXPECT_EQ(bitwise_difference(many.lse, one.lse), "") << threads << " threads, " << describe(many);
    }
  }
}

TEST(Decode, GroupedHeadsMatchOneHeadPerItemOnOneSplit) {
  // One split (Sk < 2048): the grouped item computes each row exactly as a one-head item does,
  // since rows are independent lanes of the same chunk walk; an explicit query_chunk forces the
  // dense items.
  Case grouped({2, 5, 1500, 8, 2, 64, 48}, DType::f32, 31);
  grouped.run();
  Case dense({2, 5, 1500, 8, 2, 64, 48}, DType::f32, 31);
  dense.options.query_chunk = 5;
  dense.run();
  EXPECT_EQ(bitwise_difference(grouped.out, dense.out), "");
  EXPECT_EQ(bitwise_difference(grouped.lse, dense.lse), "");
}

// TESTPLAN 19: one query against Sk = 1, 2 and 65537 cached keys (GQA, every dtype, causal
// bottom-right as a decode step is), forward against Ref64 on every algorithm and target; the
// 2^31/D/H + 1 length of the same case runs in HugeSizes.lay_dims_near_int32_limits.
TEST(Decode, num_decode_long_kv) {
  for (DType dt : {DType::f32, DType::bf16, DType::f16})
    for (int64_t sk : {1, 2, 65537}) {
      Case c({1, 1, sk, 4, 2, 64, 64}, dt, 700 + uint64_t(sk));
      c.options.causal = true;
      c.options.align = Align::bottom_right;
      SCOPED_TRACE(describe(c));
      expect_accurate_all(c);
    }
}

// Decode items take several kv heads where K and V keep a key's heads side by side (BSHD), so a
// key range's rows are read whole; never more than the threads leave work for, and one head where
// the heads are apart (head-major caches).
TEST(Decode, PlannerTakesAdjacentKvHeadsTogether) {
  memattn::Options one_thread;
  one_thread.num_threads = 1;
  const auto p = planned({2, 1, 5000, 32, 8, 64, 64}, one_thread);
  ASSERT_TRUE(p.grouped);
  EXPECT_EQ(p.kv_heads_per_item, 8);  // 4 KiB of f32 rows at d = 64: 16 heads, capped at the 8
  EXPECT_EQ(memattn::detail::work_items(p), 2 * p.splits);
  // Every (batch, kv head, split) once, each item's heads after its first.
  std::vector<int> seen(size_t(2 * 8 * p.splits), 0);
  for (int64_t i = 0; i < memattn::detail::work_items(p); ++i) {
    const auto it = memattn::detail::flash_item(p, i);
    EXPECT_EQ(it.h0, it.g * 4);
    for (int64_t g = it.g; g < it.g + it.kv_heads; ++g) ++seen[size_t((it.b * 8 + g) * p.splits + it.split)];
  }
  for (int x : seen) ASSERT_EQ(x, 1);
  // 7 threads and 2 x 3 splits: blocks of 4 heads give 12 items, enough for every thread.
  memattn::Options seven;
  seven.num_threads = 7;
  const auto q = planned({2, 1, 5000, 32, 8, 64, 64}, seven);
  EXPECT_EQ(q.kv_heads_per_item, 4);
  EXPECT_GE(memattn::detail::work_items(q), 7);
}

TEST(Decode, KvHeadsPerItemDoNotChangeBits) {
  // The same cache as BSHD (heads side by side: several kv heads per item) and head-major (one
  // per item), on 1 and 3 threads (3 threads take fewer heads per item): the same bits.
  for (DType dt : {DType::f32, DType::bf16}) {
    const Shape s{1, 2, 4500, 16, 4, 64, 48};
    Case bshd(s, dt, 41);
    bshd.options.causal = true, bshd.options.align = Align::bottom_right, bshd.options.num_threads = 1;
    bshd.run();
    for (int threads : {1, 3}) {
      Case head_major(s, dt, 41);
      head_major.options = bshd.options;
      head_major.options.num_threads = threads;
      Buf k_storage(dt, {s.B, s.Hkv, s.Sk, s.D}), v_storage(dt, {s.B, s.Hkv, s.Sk, s.Dv});
      const Tensor k{k_storage.data(), dt, 4, {s.B, s.Sk, s.Hkv, s.D}, {s.Hkv * s.Sk * s.D, s.D, s.Sk * s.D, 1}};
      const Tensor v{v_storage.data(), dt, 4, {s.B, s.Sk, s.Hkv, s.Dv}, {s.Hkv * s.Sk * s.Dv, s.Dv, s.Sk * s.Dv, 1}};
      copy_to_view(head_major.k, k), copy_to_view(head_major.v, v);
      const Tensor lse = head_major.lse.view();
      memattn::forward(head_major.q.view(), k, v, head_major.out.view(), &lse, head_major.options);
      EXPECT_EQ(bitwise_difference(head_major.out, bshd.out), "") << threads << " threads, " << describe(bshd);
      EXPECT_EQ(bitwise_difference(head_major.lse, bshd.lse), "") << threads << " threads, " << describe(bshd);
    }
  }
}

// Groups of at most 8 rows (query heads per kv head x queries) with a head dim that is a multiple
// of 16 score by dot products (Params::scores_by_dot), on the f32 family whatever the call's
// family: bf16 decode is bitwise the call forced onto f32_fma, within the accuracy rule of Ref64;
// 16 rows stay on the GEMM and the call's family.
TEST(Decode, FewRowsScoreByDotProductsOnEveryFamily) {
  EXPECT_TRUE(planned({1, 1, 5000, 32, 8, 128, 128}).scores_by_dot);    // 4 rows
  EXPECT_TRUE(planned({1, 2, 5000, 16, 4, 64, 64}).scores_by_dot);      // 8 rows
  EXPECT_FALSE(planned({1, 4, 5000, 32, 8, 128, 128}).scores_by_dot);   // 16 rows
  EXPECT_FALSE(planned({1, 1, 5000, 32, 8, 72, 72}).scores_by_dot);     // dim off a multiple of 16
  const Shape s{2, 1, 3000, 8, 2, 64, 48};
  Case dot(s, DType::bf16, 51);
  dot.options.causal = true, dot.options.align = Align::bottom_right;
  dot.run();
  {
    ScopedEnv family("MEMATTN_FAMILY", "f32_fma");
    Case forced(s, DType::bf16, 51);
    forced.options = dot.options;
    forced.run();
    EXPECT_EQ(bitwise_difference(forced.out, dot.out), "");
    EXPECT_EQ(bitwise_difference(forced.lse, dot.lse), "");
  }
  SCOPED_TRACE(describe(dot));
  expect_accurate(dot);
}
