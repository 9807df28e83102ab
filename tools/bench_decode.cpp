// `memattn bench --decode` (see bench_decode.hpp): causal bottom-right calls with seq_q new queries
// per sequence against seq_k cached keys, GQA heads : kv_heads, one sequence, the cache contiguous
// or paged.
#include "bench_decode.hpp"

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "bandwidth.hpp"
#include "bench_data.hpp"
#include "memattn/memattn.hpp"
#include "peak.hpp"

namespace memattn::tool {
namespace {

struct DecodeRow {
  int64_t seq_q, seq_k, page_size;
  DType cache;
  int threads;
  int64_t reps;
  double ms, gbps;
};

DecodeRow run_point(const DecodeConfig& c, int64_t sq, int64_t sk, int64_t page, DType dt, int threads) {
  // The queries are in the cache's dtype: memattn takes one dtype per call. A paged cache holds
  // the same keys in ceil(sk / page) pages, the last one partly used.
  const int64_t pages = page ? (sk + page - 1) / page : 1, rows = page ? page : sk;
  Buffer q(dt, 1, sq, c.heads, c.d, 1), k(dt, pages, rows, c.kv_heads, c.d, 2), v(dt, pages, rows, c.kv_heads, c.d, 3);
  Buffer out(dt, 1, sq, c.heads, c.d, 4);
  std::vector<int32_t> table(static_cast<size_t>(pages)), length{int32_t(sk)};
  for (int64_t p = 0; p < pages; ++p) table[size_t(p)] = int32_t(pages - 1 - p);
  const Tensor block_table = Tensor::contiguous(table.data(), DType::i32, {1, pages});
  const Tensor seqlens = Tensor::contiguous(length.data(), DType::i32, {1});
  Options o;
  o.causal = true, o.align = Align::bottom_right, o.num_threads = threads;
  const auto call = [&] {
    if (page) attention_with_kvcache(q.view, k.view, v.view, seqlens, &block_table, out.view, nullptr, o);
    else forward(q.view, k.view, v.view, out.view, nullptr, o);
  };
  const auto [ms, reps] = time_calls(call, c.reps, c.min_seconds);
  const double kv_bytes = 2.0 * double(sk) * double(c.kv_heads) * double(c.d) * double(dtype_size(dt));
  return {sq, sk, page, dt, threads, reps, ms, kv_bytes / ms / 1e6};
}

}  // namespace

int bench_decode_main(const DecodeConfig& c) {
  const PeakIsa isa = detect_peak_isa();
  std::map<int, double> peak;
  for (int64_t t : c.threads) peak[int(t)] = measure_read_gbps(int(t));
  std::vector<DecodeRow> rows;
  for (DType dt : c.cache_dtypes)
    for (int64_t sk : c.seq_k)
      for (int64_t page : c.page_sizes)
        for (int64_t sq : c.seq_q)
          for (int64_t t : c.threads) {
            rows.push_back(run_point(c, sq, sk, page, dt, int(t)));
            if (!c.json) std::fprintf(stderr, "\r%zu points done", rows.size());
          }
  if (c.json) {
    std::printf("[\n");
    for (size_t i = 0; i < rows.size(); ++i) {
      const DecodeRow& r = rows[i];
      std::printf("  {\"direction\": \"decode\", \"seq_q\": %lld, \"seq_k\": %lld, \"cache_dtype\": \"%s\", "
                  "\"page_size\": %lld, \"d\": %lld, \"heads\": %lld, \"kv_heads\": %lld, \"threads\": %d, "
                  "\"reps\": %lld, \"ms\": %.4f, \"gbps\": %.3f, \"peak_gbps\": %.3f, \"ratio\": %.4f, "
                  "\"cpu\": \"%s\"}%s\n",
                  (long long)r.seq_q, (long long)r.seq_k, dtype_name(r.cache), (long long)r.page_size, (long long)c.d,
                  (long long)c.heads, (long long)c.kv_heads, r.threads, (long long)r.reps, r.ms, r.gbps,
                  peak.at(r.threads), r.gbps / peak.at(r.threads), isa.cpu.c_str(), i + 1 < rows.size() ? "," : "");
    }
    std::printf("]\n");
    return 0;
  }
  std::fprintf(stderr, "\n");
  std::printf("CPU: %s\nmemory read bandwidth measured now (1 GiB read, best of 5):", isa.cpu.c_str());
  for (const auto& [t, g] : peak) std::printf("  %d thread%s %.1f GB/s", t, t > 1 ? "s" : "", g);
  std::printf("\n\ndecode: causal bottom-right, q/k/v one dtype, %lld query heads : %lld kv heads, d = %lld, "
              "one sequence, contiguous cache (page 0) or pages behind a block table\nGB/s = K and V bytes / median call time; ratio to the "
              "bandwidth above for the thread count\n\n",
              (long long)c.heads, (long long)c.kv_heads, (long long)c.d);
  std::printf("%-5s %5s %7s %4s %3s %5s %10s %8s %6s\n", "cache", "seq_q", "seq_k", "page", "thr", "reps", "ms", "GB/s",
              "ratio");
  for (const DecodeRow& r : rows)
    std::printf("%-5s %5lld %7lld %4lld %3d %5lld %10.3f %8.1f %5.1f%%\n", dtype_name(r.cache), (long long)r.seq_q,
                (long long)r.seq_k, (long long)r.page_size, r.threads, (long long)r.reps, r.ms, r.gbps, 100 * r.gbps / peak.at(r.threads));
  return 0;
}

}  // namespace memattn::tool
