// `memattn bench --decode`: KV-cache decoding (a few queries against a long cache) in GB/s of K/V
// read, against the memory read bandwidth measured in the same run.
#pragma once

#include <cstdint>
#include <vector>

#include "memattn/types.hpp"

namespace memattn::tool {

// The queries' dtype at a point: the cache's, or f32 (on a bf16 or f16 cache, memattn's mixed call).
enum class QueryDtype { cache, f32 };

struct DecodeConfig {
  std::vector<int64_t> seq_q{1, 4}, seq_k{4096, 32768, 131072}, threads{1, 2};
  std::vector<DType> cache_dtypes{DType::f32, DType::bf16};
  std::vector<QueryDtype> query_dtypes{QueryDtype::cache, QueryDtype::f32};  // on an f32 cache, one row
  // 0: a contiguous cache (forward); else pages of that many keys behind a block table
  // (attention_with_kvcache), handed out in reverse order.
  std::vector<int64_t> page_sizes{0, 16, 256};
  int64_t d = 128, heads = 32, kv_heads = 8;
  int64_t reps = 0;          // 0: as many calls as fill min_seconds, at least 3
  double min_seconds = 0.3;
  bool json = false;
};

// Runs the sweep; returns the process exit code.
int bench_decode_main(const DecodeConfig& c);

}  // namespace memattn::tool
