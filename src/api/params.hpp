// The validated, resolved description of one attention call that every kernel reads.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "memattn/types.hpp"

namespace memattn::detail {

struct Kernels;

// The flash forward's tile family (see cpu/tile_family.hpp), chosen once per call by the planner.
enum class TileFamily : uint8_t { f32_fma, bf16_dot, amx_bf16, amx_bf16_emulated };
// "f32_fma", "bf16_dot", "amx_bf16", "amx_bf16_emulated".
const char* family_name(TileFamily f);

// An operand as a base pointer and element strides; dims are [batch, seq, head, feature] for
// q/k/v/out and [batch, head, query, key] for mask/bias (broadcast dims have stride 0).
struct View {
  const void* data = nullptr;
  DType dtype = DType::f32;
  int64_t stride[4] = {0, 0, 0, 0};

  template <typename T>
  const T* at(int64_t i0, int64_t i1, int64_t i2, int64_t i3 = 0) const {
    return static_cast<const T*>(data) + i0 * stride[0] + i1 * stride[1] + i2 * stride[2] +
           i3 * stride[3];
  }
};

struct Params {
  int64_t batch = 0, seq_q = 0, seq_k = 0, heads_q = 0, heads_kv = 0, dim = 0, dim_v = 0;
  int64_t group = 1;  // heads_q / heads_kv: query head h reads key/value head h / group
  DType dtype = DType::f32;
  // The keys' and values' dtype: dtype, except for f32 queries against a bf16 or f16 KV cache
  // (forward, flash algorithm only).
  DType kv_dtype = DType::f32;
  View q, k, v;
  View out;       // written
  View lse;       // written when has_lse; dims [batch, head, query]
  bool has_lse = false;
  View mask, bias;
  bool has_mask = false, has_bias = false;
  // Score modifiers (Options): softcap > 0 caps the scaled scores (softcap64 unrounded for f64
  // inputs); alibi: slope views [batch|1, head] (stride[0] 0 for one slope per head); sinks: one
  // f32 logit per query head (stride[1]) in every row's softmax denominator.
  float softcap = 0.0f;
  double softcap64 = 0.0;
  View alibi, sinks;
  bool has_alibi = false, has_sinks = false;
  float scale = 1.0f;     // what the f32-accumulating kernels multiply by
  double scale64 = 1.0;   // the same for f64 inputs, unrounded; double(scale) otherwise
  bool causal = false;
  // Key index of query 0's diagonal: 0 top-left, seq_k - seq_q bottom-right, plus
  // Options::diagonal_offset.
  int64_t diag = 0;
  int64_t window_left = -1, window_right = -1;

  // Resolved by the planner.
  Algorithm algorithm = Algorithm::flash;
  // query_chunk: the query rows of one flash work item; with `grouped` items (decode) every query
  // of every head of a kv head's group, group * seq_q rows.
  int64_t query_chunk = 0, key_chunk = 0;
  bool grouped = false;
  // The scores are dot products on the f32 family (Kernels::dot_scores) rather than the GEMM or a
  // bf16 family's tiles: decode groups of few rows (scores_by_dot in plan.hpp), forward and
  // backward alike, so that the backward recomputes the forward's scores bit for bit.
  bool scores_by_dot = false;
  // The flash key range is cut into `splits` parts of split_keys keys (a multiple of key_chunk);
  // with more than one, items write normalised (out, lse) partials that are merged afterwards.
  int64_t split_keys = 0, splits = 1;
  // Grouped items take this many consecutive kv heads (the last block may have fewer): where the
  // heads of a key sit side by side in memory, walking them together reads whole rows. It does
  // not change any result (each head's rows are computed as alone).
  int64_t kv_heads_per_item = 1;
  int threads = 1;
  const Kernels* kernels = nullptr;  // the SIMD target of the flash path
  TileFamily family = TileFamily::f32_fma;  // the flash forward's products

  // Paged keys and values (attention_with_kvcache with a block table): k and v index
  // [page, row, head, feature], and key j of batch b is row j % page_size of page
  // pages[b * page_stride[0] + (j / page_size) * page_stride[1]] (i32 or i64 entries). page_size 0:
  // k and v are dense [batch, key, head, feature].
  const void* pages = nullptr;
  DType page_dtype = DType::i32;
  int64_t page_size = 0;
  int64_t page_stride[2] = {0, 0};

  bool empty() const { return batch == 0 || heads_q == 0 || seq_q == 0; }

  // Do keys j .. j + n - 1 lie k.stride[1] (v.stride[1]) apart from key_row(b, j, g)? Always for
  // dense k and v; with pages, when they stay within one page (the planner's key chunks do where
  // pages are large enough; see plan_forward).
  bool one_pitch(int64_t j, int64_t n) const { return page_size == 0 || j / page_size == (j + n - 1) / page_size; }

  // Row j of kv head g of batch b in k or v: the one way the flash driver and its families reach
  // keys and values, dense strides or a page through the block table.
  template <typename T>
  const T* key_row(int64_t b, int64_t j, int64_t g) const { return kv_row<T>(k, b, j, g); }
  template <typename T>
  const T* value_row(int64_t b, int64_t j, int64_t g) const { return kv_row<T>(v, b, j, g); }
  template <typename T>
  const T* kv_row(const View& x, int64_t b, int64_t j, int64_t g) const {
    if (page_size == 0) return x.at<T>(b, j, g);
    const int64_t at = b * page_stride[0] + j / page_size * page_stride[1];
    const int64_t page = page_dtype == DType::i32 ? int64_t(static_cast<const int32_t*>(pages)[at])
                                                  : static_cast<const int64_t*>(pages)[at];
    return x.at<T>(page, j % page_size, g);
  }

  // Keys [first, last) that causal and window masks leave to query row i (may be empty).
  int64_t key_begin(int64_t i) const {
    if (window_left < 0) return 0;
    return std::clamp<int64_t>(i + diag - window_left, 0, seq_k);
  }
  int64_t key_end(int64_t i) const {
    int64_t end = seq_k;
    if (causal) end = std::min(end, i + diag + 1);
    if (window_right >= 0) end = std::min(end, i + diag + window_right + 1);
    return std::clamp<int64_t>(end, 0, seq_k);
  }
  bool mask_allows(int64_t b, int64_t h, int64_t i, int64_t j) const {
    return !has_mask || *mask.at<uint8_t>(b, h, i, j) != 0;
  }
  bool has_softcap() const { return softcap64 > 0; }
  // ALiBi's slope of (b, h) (has_alibi) and the sink logit of head h (has_sinks).
  float slope(int64_t b, int64_t h) const { return *alibi.at<float>(b, h, 0); }
  float sink(int64_t h) const { return *sinks.at<float>(0, h, 0); }
  // |i + diag - j|: ALiBi's distance of key j from query row i's diagonal.
  int64_t alibi_distance(int64_t i, int64_t j) const {
    const int64_t d = i + diag - j;
    return d < 0 ? -d : d;
  }
};

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

}  // namespace memattn::detail
