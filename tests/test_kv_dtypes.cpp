// f32 queries against a bf16 or f16 KV cache (issue 9's mixed-dtype calls): bitwise equal to the
// f32 call on the same keys and values widened to f32 (exact), on dense, decode (split keys,
// grouped heads), varlen and paged-cache calls, any thread count; the combinations refused with
// their messages (other algorithms, the backward, other mixes).
#include <gtest/gtest.h>

#include <limits>
#include <string>

#include "fault_support.hpp"
#include "support_backward.hpp"

using namespace mt;
using memattn::Align;
using memattn::ErrorCode;

namespace {

// b's values in dtype dt (rounded there), and the same values widened to f32.
Buf narrowed(const Buf& b, DType dt) {
  Buf r(dt, b.shape);
  for (int64_t i = 0; i < b.numel(); ++i) r.set(i, b.get(i));
  return r;
}
Buf widened(const Buf& b) { return narrowed(b, DType::f32); }

// A case whose k and v are held in kv (q, out f32) and its f32 twin on the widened values.
struct MixedPair {
  Case mixed, twin;
  MixedPair(const Shape& s, DType kv, uint64_t seed) : mixed(s, DType::f32, seed), twin(s, DType::f32, seed) {
    mixed.k = narrowed(mixed.k, kv), mixed.v = narrowed(mixed.v, kv);
    twin.k = widened(mixed.k), twin.v = widened(mixed.v);
  }
  void run_both(const memattn::Options& o) {
    mixed.options = twin.options = o;
    for (Case* c : {&mixed, &twin}) {
      c->out.fill(std::numeric_limits<double>::quiet_NaN());
      c->run();
    }
  }
};

}  // namespace

TEST(KvDtypes, F32QueriesOnLowPrecisionCacheEqualTheWidenedCall) {
  const Shape shapes[] = {{2, 37, 300, 4, 2, 64, 48},    // dense items
                          {1, 1, 5000, 8, 2, 128, 128},  // decode: grouped heads, split keys
                          {2, 3, 2100, 4, 4, 32, 32}};   // decode, one kv head per group
  for (DType kv : {DType::bf16, DType::f16})
    for (const Shape& s : shapes)
      for (int threads : {1, 3}) {
        MixedPair c(s, kv, 7);
        memattn::Options o;
        o.causal = true, o.align = Align::bottom_right, o.num_threads = threads;
        c.run_both(o);
        const std::string what = std::string(memattn::dtype_name(kv)) + " cache, " + describe(c.twin) + ", " +
                                 std::to_string(threads) + " threads";
        EXPECT_EQ(bitwise_difference(c.mixed.out, c.twin.out), "") << what;
        EXPECT_EQ(bitwise_difference(c.mixed.lse, c.twin.lse), "") << what;
        EXPECT_FALSE(mostly_zero(c.mixed.out.values())) << what;
      }
}

TEST(KvDtypes, VarlenAndPagedCaches) {
  // Varlen: two sequences packed, f16 keys and values.
  MixedPair c({1, 9, 40, 2, 1, 16, 16}, DType::f16, 3);
  std::vector<int32_t> cu_q = {0, 4, 9}, cu_k = {0, 25, 40};
  const Tensor cq = Tensor::contiguous(cu_q.data(), DType::i32, {3}), ck = Tensor::contiguous(cu_k.data(), DType::i32, {3});
  memattn::Options o;
  o.cu_seqlens_q = &cq, o.cu_seqlens_k = &ck, o.causal = true;
  c.run_both(o);
  EXPECT_EQ(bitwise_difference(c.mixed.out, c.twin.out), "") << "varlen";
  // A paged bf16 cache: pages of 8 keys, sequence 0 on pages 4, 0, 2 and sequence 1 on 1, 5, 3.
  const int64_t pages = 6, page = 8;
  Buf k32(DType::f32, {pages, page, 2, 16}), v32(DType::f32, {pages, page, 2, 16});
  fill_randn(k32, 11), fill_randn(v32, 12);
  Buf k16 = narrowed(k32, DType::bf16), v16 = narrowed(v32, DType::bf16);
  Buf kw = widened(k16), vw = widened(v16);
  Buf q(DType::f32, {2, 2, 4, 16}), out_mixed(DType::f32, {2, 2, 4, 16}), out_twin(DType::f32, {2, 2, 4, 16});
  fill_randn(q, 13);
  std::vector<int32_t> seqlens = {19, 21}, table = {4, 0, 2, 1, 5, 3};
  const Tensor sl = Tensor::contiguous(seqlens.data(), DType::i32, {2});
  const Tensor bt = Tensor::contiguous(table.data(), DType::i32, {2, 3});
  memattn::Options kv_options;
  kv_options.causal = true, kv_options.align = Align::bottom_right;
  memattn::attention_with_kvcache(q.view(), k16.view(), v16.view(), sl, &bt, out_mixed.view(), nullptr, kv_options);
  memattn::attention_with_kvcache(q.view(), kw.view(), vw.view(), sl, &bt, out_twin.view(), nullptr, kv_options);
  EXPECT_EQ(bitwise_difference(out_mixed, out_twin), "") << "paged";
}

TEST(KvDtypes, RefusedCombinations) {
  MixedPair c({1, 3, 5, 2, 2, 8, 8}, DType::bf16, 5);
  c.mixed.out.fill(7.0);
  // Reference algorithms take one dtype.
  memattn::Options naive;
  naive.algorithm = memattn::Algorithm::naive;
  expect_error([&] { memattn::forward(c.mixed.q.view(), c.mixed.k.view(), c.mixed.v.view(), c.mixed.out.view(), nullptr, naive); },
               ErrorCode::unsupported, {"naive", "KV cache", "bf16"}, {&c.mixed.out});
  // The backward takes k and v in q's dtype.
  Buf dout(DType::f32, c.mixed.out.shape), dq(DType::f32, c.mixed.q.shape), dk(DType::bf16, c.mixed.k.shape),
      dv(DType::bf16, c.mixed.v.shape), lse(DType::f32, c.mixed.lse.shape);
  dq.fill(7.0);
  expect_error(
      [&] {
        memattn::backward(c.mixed.q.view(), c.mixed.k.view(), c.mixed.v.view(), c.mixed.out.view(), dout.view(),
                          lse.view(), dq.view(), dk.view(), dv.view(), {});
      },
      ErrorCode::wrong_dtype, {"backward", "bf16", "forward only"}, {&dq});
  // Other mixes: bf16 queries with an f32 cache, and k and v in different dtypes.
  Buf q16 = narrowed(c.twin.q, DType::bf16), out16(DType::bf16, c.twin.out.shape), v16 = narrowed(c.twin.v, DType::f16);
  out16.fill(7.0);
  expect_error([&] { memattn::forward(q16.view(), c.twin.k.view(), c.twin.v.view(), out16.view(), nullptr, {}); },
               ErrorCode::wrong_dtype, {"q=bf16", "k=f32"}, {&out16});
  expect_error([&] { memattn::forward(c.mixed.q.view(), c.mixed.k.view(), v16.view(), c.mixed.out.view(), nullptr, {}); },
               ErrorCode::wrong_dtype, {"k=bf16", "v=f16"}, {&c.mixed.out});
}
