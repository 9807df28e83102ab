// attention_with_kvcache's checks (every message names the entry and its value) and its batch as
// one dense or paged batch-1 problem per sequence.
#include <utility>

#include "api/kvcache.hpp"
#include "api/sequences.hpp"
#include "api/validate.hpp"

namespace memattn::detail {
namespace {

// A 1-D or 2-D i32/i64 index tensor whose first dim is the batch.
void check_indices(const Tensor& t, const char* name, int ndim, int64_t batch, const char* layout) {
  check_tensor(t, name, ndim);
  if (t.dtype != DType::i32 && t.dtype != DType::i64)
    fail(ErrorCode::wrong_dtype, cat(name, ": dtype must be i32 or i64, got ", dtype_name(t.dtype)));
  if (t.shape[0] != batch)
    fail(ErrorCode::invalid_argument,
         cat(name, ": shape ", shape_str(t), " expected ", layout, " with batch ", batch, " (q's)"));
}

// v_cache and k_cache must pair up row for row (and page for page).
void check_cache_pair(const Tensor& k, const Tensor& v) {
  for (int i = 0; i < 3; ++i)
    if (v.shape[i] != k.shape[i])
      fail(ErrorCode::invalid_argument, cat("v_cache: shape ", shape_str(v), " does not pair with k_cache ",
                                            shape_str(k), " (dims 0-2 must match)"));
}

}  // namespace

std::vector<Params> kvcache_parts(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                                  const Tensor& seqlens_k, const Tensor* block_table, const Tensor* out,
                                  const Tensor* lse, const Options& o, Params* whole_call) {
  if (is_varlen(o))
    fail(ErrorCode::invalid_argument,
         "cu_seqlens_q/cu_seqlens_k: attention_with_kvcache takes per-sequence key lengths in seqlens_k");
  // Malformed operands and enum values (invalid_argument on every entry point, docs/api.md
  // "Errors") are reported before what this call does not take (unsupported), as the C API, which
  // checks its enum fields first, reports them.
  const std::pair<const Tensor*, const char*> refused[] = {{o.mask, "mask"}, {o.bias, "bias"}};
  for (const auto& [t, name] : refused)
    if (t) check_tensor(*t, name, 4);
  check_tensor(k_cache, "k_cache", 4);
  check_tensor(v_cache, "v_cache", 4);
  check_tensor(seqlens_k, "seqlens_k", 1);
  if (block_table) check_tensor(*block_table, "block_table", 2);
  check_cache_pair(k_cache, v_cache);
  const int64_t batch = q.ndim == 4 ? q.shape[0] : 0;
  // The forward's checks of q, out, lse, dtypes, heads, dims and options, against caches without
  // keys: the keys' own checks follow.
  const auto keyless = [batch](const Tensor& cache) {
    Tensor t = cache;
    t.shape = {batch, 0, cache.shape[2], cache.shape[3]};
    return t;
  };
  Options taken = o;
  taken.mask = taken.bias = nullptr;
  Params whole = make_forward_params(q, keyless(k_cache), keyless(v_cache), out, lse, taken);
  if (whole_call) *whole_call = whole;
  for (const auto& [t, name] : refused)
    if (t) fail(ErrorCode::unsupported, cat(name, ": not supported by attention_with_kvcache"));
  if (o.algorithm != Algorithm::automatic && o.algorithm != Algorithm::flash)
    fail(ErrorCode::unsupported, cat("algorithm: attention_with_kvcache runs the flash algorithm (automatic or "
                                     "flash), got ", algorithm_name(o.algorithm)));

  check_indices(seqlens_k, "seqlens_k", 1, batch, "[batch]");
  const bool paged = block_table != nullptr;
  const int64_t page_size = k_cache.shape[1];
  int64_t capacity = page_size;
  if (paged) {
    check_indices(*block_table, "block_table", 2, batch, "[batch, max_pages]");
    if (__builtin_mul_overflow(block_table->shape[1], page_size, &capacity))
      fail(ErrorCode::size_overflow, cat("block_table: max_pages ", block_table->shape[1], " * page_size ", page_size,
                                         " overflows int64"));
  } else if (k_cache.shape[0] != batch) {
    fail(ErrorCode::invalid_argument,
         cat("k_cache: batch ", k_cache.shape[0], " does not match q batch ", batch,
             " (without block_table the cache is [batch, max_seq, heads_kv, dim])"));
  }
  int64_t reach;
  if (__builtin_mul_overflow(capacity, int64_t(2) * std::max<int64_t>(whole.heads_kv, 1), &reach))
    fail(ErrorCode::size_overflow, cat("the cache's ", capacity, " keys per sequence times 2 * heads_kv overflow int64"));

  std::vector<Params> parts;
  parts.reserve(size_t(batch));
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t len = integer_at(seqlens_k, b * seqlens_k.strides[0]);
    if (len < 0) fail(ErrorCode::invalid_argument, cat("seqlens_k[", b, "]=", len, " must be >= 0"));
    if (len > capacity)
      fail(ErrorCode::invalid_argument,
           paged ? cat("seqlens_k[", b, "]=", len, " exceeds the ", capacity, " keys of block_table's ",
                       block_table->shape[1], " pages of page_size ", page_size)
                 : cat("seqlens_k[", b, "]=", len, " exceeds the cache length k_cache.shape[1]=", capacity));
    Params p = whole;
    p.batch = 1;
    p.seq_k = len;
    p.q.data = static_cast<const char*>(whole.q.data) + b * whole.q.stride[0] * int64_t(dtype_size(p.q.dtype));
    p.out.data = static_cast<const char*>(whole.out.data) + b * whole.out.stride[0] * int64_t(dtype_size(p.out.dtype));
    p.lse.data = static_cast<const char*>(whole.lse.data) + b * whole.lse.stride[0] * int64_t(sizeof(float));
    if (p.has_alibi) p.alibi = shifted(whole.alibi, 0, b);  // [batch, heads_q] slopes: this sequence's row
    p.k = make_view(k_cache);
    p.v = make_view(v_cache);
    if (paged) {
      const int64_t row = b * block_table->strides[0];
      for (int64_t page = 0; page * page_size < len; ++page) {
        const int64_t index = integer_at(*block_table, row + page * block_table->strides[1]);
        if (index < 0 || index >= k_cache.shape[0])
          fail(ErrorCode::invalid_argument,
               cat("block_table[", b, "][", page, "]=", index, " is not a page of k_cache (num_pages ",
                   k_cache.shape[0], "); sequence ", b, " has ", len, " keys"));
      }
      // A table without entries (max_pages 0, every sequence empty) may be null: nothing to offset.
      p.pages = block_table->numel() == 0
                    ? block_table->data
                    : static_cast<const char*>(block_table->data) + row * int64_t(dtype_size(block_table->dtype));
      p.page_dtype = block_table->dtype;
      p.page_size = page_size;
      p.page_stride[1] = block_table->strides[1];
    } else {
      p.k.data = static_cast<const char*>(p.k.data) + b * p.k.stride[0] * int64_t(dtype_size(p.k.dtype));
      p.v.data = static_cast<const char*>(p.v.data) + b * p.v.stride[0] * int64_t(dtype_size(p.v.dtype));
    }
    resolve_diagonal(p, o);
    parts.push_back(p);
  }

  const std::pair<const Tensor*, const char*> inputs[] = {
      {&k_cache, "k_cache"}, {&v_cache, "v_cache"}, {&seqlens_k, "seqlens_k"}, {block_table, "block_table"}};
  for (const auto& [in, name] : inputs) {
    if (!in) continue;
    if (out) check_no_alias(*out, "out", *in, name);
    if (lse) check_no_alias(*lse, "lse", *in, name);
  }
  return parts;
}

}  // namespace memattn::detail
