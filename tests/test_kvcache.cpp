// attention_with_kvcache: a dense cache [B, max_seq] and a paged one (page sizes 1, 3, 16, 256,
// pages shuffled, unused pages and rows NaN) against the dense forward of each sequence's gathered
// keys (bitwise where both plan the same key chunks) and Ref64 by the primary rule; f32 and bf16,
// GQA, seq_q 1..4 with causal bottom-right, decode key splits; any thread count; every validation
// error with outputs untouched.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

#include "fault_support.hpp"
#include "support_backward.hpp"

using namespace mt;
using memattn::Align;
using memattn::ErrorCode;

namespace {

const double kNaN = std::numeric_limits<double>::quiet_NaN();

// A batch of sequences (keys per sequence in lens) as a cache: dense [B, max_seq] without pages,
// else pages of page_size rows handed out in a shuffled order, with NaN in every row no
// sequence owns (and two whole NaN pages nobody uses; unused table entries are -1).
struct KvCase {
  std::vector<int64_t> lens;
  int64_t page_size, sq, hq = 4, hkv = 2, d = 16, dv = 12;
  DType dtype;
  std::vector<Buf> k_seq, v_seq;  // [1, len, hkv, d|dv] per sequence
  Buf q, out, lse, k_cache, v_cache;
  std::vector<int32_t> seqlens, table;
  int64_t max_pages = 0;
  memattn::Options options;

  KvCase(std::vector<int64_t> l, int64_t ps, int64_t s, DType dt, uint64_t seed = 1)
      : lens(std::move(l)), page_size(ps), sq(s), dtype(dt),
        q(dt, {int64_t(lens.size()), s, hq, d}), out(dt, {int64_t(lens.size()), s, hq, dv}),
        lse(DType::f32, {int64_t(lens.size()), hq, s}) {
    const int64_t batch = int64_t(lens.size());
    fill_randn(q, seed * 7);
    for (int64_t b = 0; b < batch; ++b) {
      k_seq.emplace_back(dt, std::vector<int64_t>{1, lens[size_t(b)], hkv, d});
      v_seq.emplace_back(dt, std::vector<int64_t>{1, lens[size_t(b)], hkv, dv});
      fill_randn(k_seq.back(), seed * 7 + 1 + uint64_t(b) * 2);
      fill_randn(v_seq.back(), seed * 7 + 2 + uint64_t(b) * 2);
      seqlens.push_back(int32_t(lens[size_t(b)]));
    }
    const int64_t longest = *std::max_element(lens.begin(), lens.end());
    if (page_size == 0) {
      k_cache = Buf(dt, {batch, longest + 3, hkv, d});
      v_cache = Buf(dt, {batch, longest + 3, hkv, dv});
      k_cache.fill(kNaN);
      v_cache.fill(kNaN);
      for (int64_t b = 0; b < batch; ++b) place(b, b, 0, 0, lens[size_t(b)], longest + 3);
      options.causal = true;
      options.align = Align::bottom_right;
      return;
    }
    max_pages = (longest + page_size - 1) / page_size + 1;
    int64_t used = 0;
    for (int64_t len : lens) used += (len + page_size - 1) / page_size;
    const int64_t num_pages = used + 2;
    std::vector<int64_t> order(static_cast<size_t>(num_pages));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), std::mt19937_64(seed));
    k_cache = Buf(dt, {num_pages, page_size, hkv, d});
    v_cache = Buf(dt, {num_pages, page_size, hkv, dv});
    k_cache.fill(kNaN);
    v_cache.fill(kNaN);
    table.assign(size_t(batch * max_pages), -1);
    int64_t next = 0;
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t t0 = 0; t0 < lens[size_t(b)]; t0 += page_size) {
        const int64_t page = order[size_t(next++)];
        table[size_t(b * max_pages + t0 / page_size)] = int32_t(page);
        place(b, page, t0, 0, std::min(page_size, lens[size_t(b)] - t0), page_size);
      }
    options.causal = true;
    options.align = Align::bottom_right;
  }

  // Keys [t0, t0 + n) of sequence b into rows [row, row + n) of cache slot `slot` (rows per slot).
  void place(int64_t b, int64_t slot, int64_t t0, int64_t row, int64_t n, int64_t rows) {
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t e = 0; e < hkv * d; ++e)
        k_cache.set(((slot * rows + row + t) * hkv) * d + e, k_seq[size_t(b)].get((t0 + t) * hkv * d + e));
      for (int64_t e = 0; e < hkv * dv; ++e)
        v_cache.set(((slot * rows + row + t) * hkv) * dv + e, v_seq[size_t(b)].get((t0 + t) * hkv * dv + e));
    }
  }

  Tensor seqlens_view() { return Tensor::contiguous(seqlens.data(), DType::i32, {int64_t(lens.size())}); }
  Tensor table_view() { return Tensor::contiguous(table.data(), DType::i32, {int64_t(lens.size()), max_pages}); }

  void run() {
    out.fill(kNaN);
    lse.fill(kNaN);
    const Tensor sl = seqlens_view(), bt = table_view(), lv = lse.view();
    memattn::attention_with_kvcache(q.view(), k_cache.view(), v_cache.view(), sl, page_size ? &bt : nullptr,
                                    out.view(), &lv, options);
  }

  // Sequence b as a dense forward of its own keys: q[b], out and lse of that call.
  BackwardCase dense(size_t b) const {
    BackwardCase c(Shape{1, sq, lens[b], hq, hkv, d, dv}, dtype);
    c.q = Buf(dtype, {1, sq, hq, d});
    for (int64_t e = 0; e < sq * hq * d; ++e) c.q.set(e, q.get(int64_t(b) * sq * hq * d + e));
    c.k = k_seq[b];
    c.v = v_seq[b];
    c.options = options;
    return c;
  }
};

// Every sequence of c: within the primary rule of Ref64 (Base_dt as baseline), lse within 2e-4,
// and bitwise equal to its dense forward where `bitwise(b)`.
template <typename Bitwise>
void expect_matches_dense(KvCase& c, const std::string& what, Bitwise bitwise) {
  for (size_t b = 0; b < c.lens.size(); ++b) {
    BackwardCase d = c.dense(b);
    d.out.fill(kNaN);
    d.run();
    Buf got(c.dtype, {1, c.sq, c.hq, c.dv});
    for (int64_t e = 0; e < got.numel(); ++e) got.set(e, c.out.get(int64_t(b) * got.numel() + e));
    if (bitwise(b)) EXPECT_EQ(bitwise_difference(got, d.out), "") << what << ", sequence " << b;
    const RefProblem p = d.problem();
    const RefResult ref = reference64(p);
    EXPECT_EQ(accuracy_failure(got.values(), ref.out, baseline(p, c.dtype).out, c.dtype), "") << what << ", sequence " << b;
    for (int64_t h = 0; h < c.hq; ++h)
      for (int64_t i = 0; i < c.sq; ++i) {
        const double l = c.lse.get((int64_t(b) * c.hq + h) * c.sq + i), r = ref.lse[size_t(h * c.sq + i)];
        if (std::isinf(r)) EXPECT_EQ(l, r) << what;
        else EXPECT_NEAR(l, r, 2e-4 * std::max(1.0, std::fabs(r))) << what << ", sequence " << b;
      }
  }
}

}  // namespace

TEST(KvCache, dense_cache_equals_dense_forward) {
  for (DType dt : {DType::f32, DType::bf16})
    for (int64_t sq : {1, 2, 4}) {
      KvCase c({7, 0, 33, 2600}, 0, sq, dt, 3);
      c.run();
      expect_matches_dense(c, std::string(memattn::dtype_name(dt)) + " sq " + std::to_string(sq),
                           [](size_t) { return true; });
    }
}

TEST(KvCache, paged_equals_gathered_dense_forward) {
  for (int64_t ps : {1, 3, 16, 256})
    for (DType dt : {DType::f32, DType::bf16})
      for (int64_t sq : {1, 3, 4}) {
        KvCase c({5, 0, 40, ps == 1 ? 300 : 2600}, ps, sq, dt, uint64_t(ps + sq));
        // Key chunks that divide the page size on both sides: sequences at least that long plan
        // the same chunks as their dense call, so their rows are bitwise the same.
        const int64_t chunk = ps == 256 ? 128 : ps;
        c.options.key_chunk = chunk;
        c.run();
        expect_matches_dense(c, "page " + std::to_string(ps) + " " + memattn::dtype_name(dt) + " sq " + std::to_string(sq),
                             [&](size_t b) { return c.lens[b] >= chunk; });
        c.options.key_chunk = 0;  // the planner's chunks: the rule alone
        c.run();
        expect_matches_dense(c, "automatic chunks, page " + std::to_string(ps), [](size_t) { return false; });
      }
}

TEST(KvCache, det_bitwise_any_thread_count) {
  KvCase c({3000, 17, 1, 700}, 16, 2, DType::bf16, 5);
  c.options.num_threads = 1;
  c.run();
  const Buf out1 = c.out, lse1 = c.lse;
  for (int threads : {2, 3}) {
    c.options.num_threads = threads;
    c.run();
    EXPECT_EQ(bitwise_difference(c.out, out1), "") << threads;
    EXPECT_EQ(bitwise_difference(c.lse, lse1), "") << threads;
  }
  const Tensor sl = c.seqlens_view(), bt = c.table_view();
  const size_t need = memattn::kvcache_workspace_bytes(c.q.view(), c.k_cache.view(), c.v_cache.view(), sl, &bt, c.options);
  std::vector<unsigned char> ws(need);
  c.out.fill(kNaN);
  memattn::attention_with_kvcache(c.q.view(), c.k_cache.view(), c.v_cache.view(), sl, &bt, c.out.view(), nullptr,
                                  c.options, {ws.data(), need});
  EXPECT_EQ(bitwise_difference(c.out, out1), "");
}

TEST(KvCache, errors_leave_outputs_untouched) {
  KvCase c({5, 9}, 4, 2, DType::f32);
  const Tensor q = c.q.view(), kc = c.k_cache.view(), vc = c.v_cache.view(), out = c.out.view();
  const auto expect = [&](const Tensor& sl, const Tensor* bt, const memattn::Options& o, const Tensor& k, ErrorCode code,
                          const std::vector<std::string>& parts) {
    Tensor lse = c.lse.view();
    c.out.fill(7.0);
    c.lse.fill(7.0);
    expect_error([&] { memattn::attention_with_kvcache(q, k, vc, sl, bt, out, &lse, o); }, code, parts, {&c.out, &c.lse});
    expect_error([&] { (void)memattn::kvcache_workspace_bytes(q, k, vc, sl, bt, o); }, code, parts);
  };
  const Tensor sl = c.seqlens_view(), bt = c.table_view();
  std::vector<int32_t> lens = c.seqlens;
  lens[1] = 17;  // 4 pages of 4 hold 16
  expect(Tensor::contiguous(lens.data(), DType::i32, {2}), &bt, c.options, kc, ErrorCode::invalid_argument,
         {"seqlens_k[1]=17 exceeds the 16 keys of block_table's 4 pages of page_size 4"});
  lens[1] = -1;
  expect(Tensor::contiguous(lens.data(), DType::i32, {2}), &bt, c.options, kc, ErrorCode::invalid_argument,
         {"seqlens_k[1]=-1 must be >= 0"});
  std::vector<int32_t> table = c.table;
  table[1] = int32_t(c.k_cache.shape[0]);
  const Tensor bad_table = Tensor::contiguous(table.data(), DType::i32, {2, c.max_pages});
  expect(sl, &bad_table, c.options, kc, ErrorCode::invalid_argument,
         {"block_table[0][1]=" + std::to_string(c.k_cache.shape[0]) + " is not a page of k_cache (num_pages " +
          std::to_string(c.k_cache.shape[0]) + ")"});
  table[1] = -1;
  expect(sl, &bad_table, c.options, kc, ErrorCode::invalid_argument, {"block_table[0][1]=-1 is not a page"});
  std::vector<float> f(2, 5.0f);
  expect(Tensor::contiguous(f.data(), DType::f32, {2}), &bt, c.options, kc, ErrorCode::wrong_dtype,
         {"seqlens_k: dtype must be i32 or i64, got f32"});
  expect(Tensor::contiguous(lens.data(), DType::i32, {1}), &bt, c.options, kc, ErrorCode::invalid_argument,
         {"seqlens_k: shape [1] expected [batch] with batch 2"});
  const Tensor short_table = Tensor::contiguous(table.data(), DType::i32, {1, c.max_pages});
  expect(sl, &short_table, c.options, kc, ErrorCode::invalid_argument,
         {"block_table: shape [1,", "expected [batch, max_pages] with batch 2"});
  expect(sl, nullptr, c.options, kc, ErrorCode::invalid_argument, {"k_cache: batch ", "does not match q batch 2"});
  Buf mask(DType::u8, {1, 1, 1, 1});
  const Tensor mv = mask.view();
  memattn::Options masked = c.options;
  masked.mask = &mv;
  expect(sl, &bt, masked, kc, ErrorCode::unsupported, {"mask: not supported by attention_with_kvcache"});
  Tensor wrong_k = kc;
  wrong_k.dtype = DType::bf16;
  expect(sl, &bt, c.options, wrong_k, ErrorCode::wrong_dtype, {"q, k, v must have the same dtype"});
  // Unused table entries (-1 here) are never read or checked.
  c.run();
}

// The score modifiers through the cache: softcap, ALiBi (its distance from the bottom-right
// diagonal of each sequence's own length; one slope per head, or per sequence and head) and sinks,
// paged and dense, against each sequence's dense forward with the same modifiers.
TEST(KvCache, score_modifiers_equal_dense_forward) {
  const std::vector<double> sink_logits = {0.5, -1.0, 2.0, 0.0};
  std::vector<double> slopes(4 * 4);  // [batch, heads_q]: row b for sequence b
  for (size_t e = 0; e < slopes.size(); ++e) slopes[e] = 0.5 / double(1 + e % 4) + 0.0625 * double(e / 4);
  Buf per_head(DType::f32, {4}), per_batch(DType::f32, {4, 4}), sinks(DType::f32, {4});
  for (int64_t h = 0; h < 4; ++h) per_head.set(h, slopes[size_t(h)]), sinks.set(h, sink_logits[size_t(h)]);
  for (size_t e = 0; e < slopes.size(); ++e) per_batch.set(int64_t(e), slopes[e]);
  const Tensor head_view = per_head.view(), batch_view = per_batch.view(), sinks_view = sinks.view();
  for (const Tensor* alibi_view : {&head_view, &batch_view})
  for (int64_t ps : {0, 16})
    for (DType dt : {DType::f32, DType::bf16}) {
      KvCase c({7, 0, 33, 2600}, ps, 2, dt, 13);
      c.options.softcap = 4.0, c.options.alibi_slopes = alibi_view, c.options.sinks = &sinks_view;
      c.options.key_chunk = 16;
      c.run();
      for (size_t b = 0; b < c.lens.size(); ++b) {
        BackwardCase d = c.dense(b);
        const size_t row = alibi_view == &batch_view ? 4 * b : 0;
        d.set_alibi({4}, std::vector<double>(slopes.begin() + ptrdiff_t(row), slopes.begin() + ptrdiff_t(row + 4)));
        d.set_sinks(sink_logits);
        d.out.fill(kNaN);
        d.run();
        Buf got(c.dtype, {1, c.sq, c.hq, c.dv});
        for (int64_t e = 0; e < got.numel(); ++e) got.set(e, c.out.get(int64_t(b) * got.numel() + e));
        const std::string what = "page " + std::to_string(ps) + " " + memattn::dtype_name(dt) + ", sequence " +
                                 std::to_string(b) + (alibi_view == &batch_view ? ", slopes per batch" : "");
        EXPECT_EQ(bitwise_difference(got, d.out), "") << what;
        const RefProblem p = d.problem();
        EXPECT_EQ(accuracy_failure(got.values(), reference64(p).out, baseline(p, dt).out, dt), "") << what;
      }
    }
}

// Found by fuzz_forward: a block table without entries ([batch, 0]: every sequence empty) may have
// null data, and a nonzero batch stride must not be applied to it (UB that the sanitizer build of
// this suite reports). Every row sees no key: out = 0, lse = -inf.
TEST(KvCache, null_block_table_without_entries) {
  Buf q(DType::f32, {2, 1, 1, 4}), cache(DType::f32, {1, 4, 1, 4}), out(DType::f32, {2, 1, 1, 4}), lse(DType::f32, {2, 1, 1});
  fill_randn(q, 3), fill_randn(cache, 4), out.fill(kNaN), lse.fill(kNaN);
  std::vector<int32_t> seqlens{0, 0};
  const Tensor table = Tensor::strided(nullptr, DType::i32, {2, 0}, {3, 1});
  const Tensor lse_view = lse.view();
  memattn::attention_with_kvcache(q.view(), cache.view(), cache.view(),
                                  Tensor::contiguous(seqlens.data(), DType::i32, {2}), &table, out.view(), &lse_view, {});
  for (int64_t e = 0; e < out.numel(); ++e) EXPECT_EQ(out.get(e), 0.0) << e;
  for (int64_t e = 0; e < lse.numel(); ++e) EXPECT_EQ(lse.get(e), -std::numeric_limits<double>::infinity()) << e;
}

// Found by fuzz_c_api: enum values outside their enums are invalid_argument on every entry point
// (docs/api.md, "Errors"), and the C API checks them first; attention_with_kvcache reported a mask
// or a reference algorithm as unsupported before them, so the C and C++ calls disagreed.
TEST(KvCache, enum_values_before_unsupported_options) {
  KvCase c({5, 9}, 4, 2, DType::f32);
  const Tensor sl = c.seqlens_view(), bt = c.table_view(), out = c.out.view();
  Buf mask(DType::u8, {1, 1, 1, 1});
  const Tensor mv = mask.view();
  memattn::Options o = c.options;
  o.algorithm = memattn::Algorithm(42);
  c.out.fill(7.0);
  expect_error([&] { memattn::attention_with_kvcache(c.q.view(), c.k_cache.view(), c.v_cache.view(), sl, &bt, out, nullptr, o); },
               ErrorCode::invalid_argument, {"options.algorithm: expected one of", "got 42"}, {&c.out});
  o = c.options;
  o.mask = &mv;
  Tensor bad_q = c.q.view();
  bad_q.dtype = DType(42);
  expect_error([&] { memattn::attention_with_kvcache(bad_q, c.k_cache.view(), c.v_cache.view(), sl, &bt, out, nullptr, o); },
               ErrorCode::invalid_argument, {"q.dtype: expected one of", "got 42"}, {&c.out});
  o.algorithm = memattn::Algorithm::naive;
  expect_error([&] { memattn::attention_with_kvcache(c.q.view(), c.k_cache.view(), c.v_cache.view(), sl, &bt, out, nullptr, o); },
               ErrorCode::unsupported, {"mask: not supported by attention_with_kvcache"}, {&c.out});
}

// Found by fuzz_c_api: ALiBi slopes of shape [batch, heads_q] gave every sequence batch 0's slopes
// (each sequence runs as its own batch-1 problem). Each sequence must equal its dense forward with
// its own row of slopes.
TEST(KvCache, per_batch_alibi_slopes_per_sequence) {
  const std::vector<std::vector<double>> rows = {{0.5, 0.25, 0.125, 0.0625}, {1.0, 2.0, 0.75, 0.375}};
  Buf alibi(DType::f32, {2, 4});
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t h = 0; h < 4; ++h) alibi.set(b * 4 + h, rows[size_t(b)][size_t(h)]);
  const Tensor alibi_view = alibi.view();
  for (int64_t ps : {0, 16}) {
    KvCase c({7, 20}, ps, 2, DType::f32, 5);
    c.options.alibi_slopes = &alibi_view, c.options.key_chunk = 16;
    c.run();
    for (size_t b = 0; b < c.lens.size(); ++b) {
      BackwardCase d = c.dense(b);
      d.set_alibi({4}, rows[b]);
      d.out.fill(kNaN);
      d.run();
      Buf got(c.dtype, {1, c.sq, c.hq, c.dv});
      for (int64_t e = 0; e < got.numel(); ++e) got.set(e, c.out.get(int64_t(b) * got.numel() + e));
      EXPECT_EQ(bitwise_difference(got, d.out), "") << "page " << ps << ", sequence " << b;
    }
  }
}
