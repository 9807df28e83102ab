// `memattn bench --decode` (see bench_decode.hpp): causal bottom-right calls with seq_q new queries
// per sequence against seq_k cached keys, GQA heads : kv_heads, one sequence, the cache contiguous
// or paged, the queries in the cache's dtype or f32.
#include "bench_decode.hpp"

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "bandwidth.hpp"
#include "bench_data.hpp"
#include "memattn/memattn.hpp"
#include "peak.hpp"

namespace memattn::tool {
namespace {

// The keys per block of the head-walk read: the blocks in which a decode item's kv heads take
// turns (kKeyBlock in flash_forward.cpp), so the walk reads the cache in the kernels' order.
constexpr int64_t kWalkChunk = 16;

struct DecodeRow {
  int64_t seq_q, seq_k, page_size;
  DType cache, query;
  int threads;
  int64_t reps;
  double ms, gbps;
};

// The keys and values of one (cache dtype, seq_k, page size), built once for every seq_q, query
// dtype and thread count that reads them: filling a long cache takes longer than timing it. A paged
// cache holds the same keys in ceil(sk / page) pages handed out in reverse order, the last one
// partly used.
struct Cache {
  int64_t seq_k, page_size;
  Buffer k, v;
  std::vector<int32_t> table, length;
  Tensor block_table, seqlens;

  Cache(const DecodeConfig& c, int64_t sk, int64_t page, DType dt)
      : seq_k(sk), page_size(page), k(dt, pages(sk, page), page ? page : sk, c.kv_heads, c.d, 2),
        v(dt, pages(sk, page), page ? page : sk, c.kv_heads, c.d, 3), table(size_t(pages(sk, page))),
        length{int32_t(sk)} {
    const int64_t n = pages(sk, page);
    for (int64_t p = 0; p < n; ++p) table[size_t(p)] = int32_t(n - 1 - p);
    block_table = Tensor::contiguous(table.data(), DType::i32, {1, n});
    seqlens = Tensor::contiguous(length.data(), DType::i32, {1});
  }
  static int64_t pages(int64_t sk, int64_t page) { return page ? (sk + page - 1) / page : 1; }
};

DecodeRow run_point(const DecodeConfig& c, const Cache& cache, int64_t sq, DType q_dtype, int threads) {
  // f32 queries on a bf16 or f16 cache are memattn's mixed call; the output has the queries' dtype.
  Buffer q(q_dtype, 1, sq, c.heads, c.d, 1), out(q_dtype, 1, sq, c.heads, c.d, 4);
  Options o;
  o.causal = true, o.align = Align::bottom_right, o.num_threads = threads;
  const auto call = [&] {
    if (cache.page_size)
      attention_with_kvcache(q.view, cache.k.view, cache.v.view, cache.seqlens, &cache.block_table, out.view, nullptr, o);
    else
      forward(q.view, cache.k.view, cache.v.view, out.view, nullptr, o);
  };
  const auto [ms, reps] = time_calls(call, c.reps, c.min_seconds);
  const DType dt = cache.k.view.dtype;
  const double kv_bytes = 2.0 * double(cache.seq_k) * double(c.kv_heads) * double(c.d) * double(dtype_size(dt));
  return {sq, cache.seq_k, cache.page_size, dt, q_dtype, threads, reps, ms, kv_bytes / ms / 1e6};
}

// The query dtypes of the sweep on a cache of `dt`: the cache's own and f32, once each.
std::vector<DType> query_dtypes(const DecodeConfig& c, DType dt) {
  std::vector<DType> out;
  for (const QueryDtype q : c.query_dtypes) {
    const DType t = q == QueryDtype::f32 ? DType::f32 : dt;
    if (std::find(out.begin(), out.end(), t) == out.end()) out.push_back(t);
  }
  return out;
}

}  // namespace

int bench_decode_main(const DecodeConfig& c) {
  const PeakIsa isa = detect_peak_isa();
  std::map<int, double> peak;
  for (int64_t t : c.threads) peak[int(t)] = measure_read_gbps(int(t));
  // What the decode items' order of reading a BSHD cache allows, per cache dtype and thread count.
  std::map<std::pair<DType, int>, double> walk;
  for (DType dt : c.cache_dtypes)
    for (int64_t t : c.threads)
      walk[{dt, int(t)}] = measure_head_walk_gbps(int(t), c.kv_heads, size_t(c.d) * dtype_size(dt), kWalkChunk);
  std::vector<DecodeRow> rows;
  for (DType dt : c.cache_dtypes)
    for (int64_t sk : c.seq_k)
      for (int64_t page : c.page_sizes) {
        const Cache cache(c, sk, page, dt);
        for (DType qt : query_dtypes(c, dt))
          for (int64_t sq : c.seq_q)
            for (int64_t t : c.threads) {
              rows.push_back(run_point(c, cache, sq, qt, int(t)));
              if (!c.json) std::fprintf(stderr, "\r%zu points done", rows.size());
            }
      }
  if (c.json) {
    std::printf("[\n");
    for (size_t i = 0; i < rows.size(); ++i) {
      const DecodeRow& r = rows[i];
      std::printf("  {\"direction\": \"decode\", \"seq_q\": %lld, \"seq_k\": %lld, \"cache_dtype\": \"%s\", "
                  "\"q_dtype\": \"%s\", \"page_size\": %lld, \"d\": %lld, \"heads\": %lld, \"kv_heads\": %lld, \"threads\": %d, "
                  "\"reps\": %lld, \"ms\": %.4f, \"gbps\": %.3f, \"peak_gbps\": %.3f, \"ratio\": %.4f, "
                  "\"head_walk_gbps\": %.3f, \"cpu\": \"%s\"}%s\n",
                  (long long)r.seq_q, (long long)r.seq_k, dtype_name(r.cache), dtype_name(r.query), (long long)r.page_size, (long long)c.d,
                  (long long)c.heads, (long long)c.kv_heads, r.threads, (long long)r.reps, r.ms, r.gbps,
                  peak.at(r.threads), r.gbps / peak.at(r.threads), walk.at({r.cache, r.threads}), isa.cpu.c_str(),
                  i + 1 < rows.size() ? "," : "");
    }
    std::printf("]\n");
    return 0;
  }
  std::fprintf(stderr, "\n");
  std::printf("CPU: %s\nmemory read bandwidth measured now (1 GiB read, best of 5):", isa.cpu.c_str());
  for (const auto& [t, g] : peak) std::printf("  %d thread%s %.1f GB/s", t, t > 1 ? "s" : "", g);
  std::printf("\nthe same read in the decode items' order (blocks of %lld keys, one kv head's rows after the other):",
              (long long)kWalkChunk);
  for (const auto& [key, g] : walk)
    std::printf("  %s %d thread%s %.1f GB/s", dtype_name(key.first), key.second, key.second > 1 ? "s" : "", g);
  std::printf("\n\ndecode: causal bottom-right, queries in the cache's dtype or f32 (q), %lld query heads : %lld kv heads, d = %lld, "
              "one sequence, contiguous cache (page 0) or pages behind a block table\nGB/s = K and V bytes / median call time; ratio to the "
              "bandwidth above for the thread count\n\n",
              (long long)c.heads, (long long)c.kv_heads, (long long)c.d);
  std::printf("%-5s %-4s %5s %7s %4s %3s %5s %10s %8s %6s\n", "cache", "q", "seq_q", "seq_k", "page", "thr", "reps", "ms",
              "GB/s", "ratio");
  for (const DecodeRow& r : rows)
    std::printf("%-5s %-4s %5lld %7lld %4lld %3d %5lld %10.3f %8.1f %5.1f%%\n", dtype_name(r.cache), dtype_name(r.query),
                (long long)r.seq_q,
                (long long)r.seq_k, (long long)r.page_size, r.threads, (long long)r.reps, r.ms, r.gbps, 100 * r.gbps / peak.at(r.threads));
  return 0;
}

}  // namespace memattn::tool
