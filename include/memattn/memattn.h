/* memattn's C API (C11, also valid C++): plain structs and status codes over the C++ API. */
#ifndef MEMATTN_MEMATTN_H
#define MEMATTN_MEMATTN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
/* A fixed underlying type lets C++ hold any int a C caller stores (e.g. dtype = 99) without UB;
 * it has the size of int, as a C enum of these values does. */
#define MEMATTN_ENUM(name) enum name : int
#else
#define MEMATTN_ENUM(name) enum name
#endif

/* Every function returns MEMATTN_OK or the code of memattn::ErrorCode with the same value.
 * memattn_last_error() then says which argument was wrong, what was expected and what was given. */
typedef MEMATTN_ENUM(memattn_status){
    MEMATTN_OK = 0,
    MEMATTN_INVALID_ARGUMENT = 1,    /* a shape, dtype value, stride, option or pointer is wrong */
    MEMATTN_SIZE_OVERFLOW = 2,       /* a size or byte count does not fit in 64 bits */
    MEMATTN_WORKSPACE_TOO_SMALL = 3, /* the caller's workspace is smaller than *_workspace_bytes */
    MEMATTN_ALIASING = 4,            /* an output shares memory with another operand */
    MEMATTN_OUT_OF_MEMORY = 5,       /* the allocator returned null */
    MEMATTN_UNSUPPORTED = 6,         /* a valid request this build or CPU cannot serve */
    MEMATTN_WRONG_DTYPE = 7,         /* an operand's element type is not one this call accepts */
    MEMATTN_INTERNAL = 255           /* anything else (a bug): the message says what was caught */
} memattn_status;

/* Element types, the same order as memattn::DType. f64 takes the reference algorithms only;
 * u8 is the type of boolean masks (nonzero = attend); i32 and i64 of cu_seqlens offsets. */
typedef MEMATTN_ENUM(memattn_dtype){
    MEMATTN_F32 = 0, MEMATTN_BF16 = 1, MEMATTN_F16 = 2, MEMATTN_F64 = 3, MEMATTN_U8 = 4,
    MEMATTN_I32 = 5, MEMATTN_I64 = 6,
} memattn_dtype;

typedef MEMATTN_ENUM(memattn_algorithm){
    MEMATTN_ALGORITHM_AUTOMATIC = 0, /* flash, or chunked for f64 */
    MEMATTN_ALGORITHM_NAIVE = 1,
    MEMATTN_ALGORITHM_SEQUENTIAL = 2,
    MEMATTN_ALGORITHM_CHUNKED = 3,
    MEMATTN_ALGORITHM_FLASH = 4,
} memattn_algorithm;

/* Where the causal / window diagonal sits when seq_q != seq_k. */
typedef MEMATTN_ENUM(memattn_align){
    MEMATTN_ALIGN_TOP_LEFT = 0,     /* query i sees keys j <= i (PyTorch's is_causal) */
    MEMATTN_ALIGN_BOTTOM_RIGHT = 1, /* query i sees keys j <= i + seq_k - seq_q (FlashAttention) */
} memattn_align;

#undef MEMATTN_ENUM

/* A strided view of caller memory, never owned or copied. q, k, v, out: [batch, seq, heads, dim];
 * mask, bias: [batch|1, heads_q|1, seq_q|1, seq_k|1]; lse: [batch, heads_q, seq_q] (ndim 3, f32).
 * Strides are in elements; entries at and beyond ndim are ignored. */
typedef struct memattn_tensor {
  void* data;
  memattn_dtype dtype;
  int32_t ndim;
  int64_t shape[4];
  int64_t strides[4];
} memattn_tensor;

/* Start from memattn_options_default() and change fields: new fields may be added at the end. */
typedef struct memattn_options {
  double scale;      /* used only when has_scale != 0; any finite value (0, negative) as given,
                       exactly for f64 inputs, rounded to float for the others */
  int32_t has_scale; /* 0: scale = 1/sqrt(head_dim) */
  memattn_algorithm algorithm;
  int64_t query_chunk, key_chunk; /* 0: chosen by the planner */
  int32_t causal;                 /* nonzero: keys right of the diagonal are masked */
  memattn_align align;
  int64_t window_left, window_right; /* keys allowed at diag-left .. diag+right; -1: unbounded */
  const memattn_tensor* mask;        /* nullable; u8, nonzero = attend */
  const memattn_tensor* bias;        /* nullable; added to the scaled scores */
  int32_t num_threads;               /* 0: all that OpenMP offers */
  const char* target; /* nullable SIMD target name (see memattn_supported_targets) */
  /* Score modifiers (docs/api.md), applied to the scaled scores in this order: */
  double softcap; /* > 0: s = softcap * tanh(s / softcap); 0: off. Finite, >= 0 */
  const memattn_tensor* alibi_slopes; /* nullable; f32 [heads_q] or [batch, heads_q]:
                                         s -= slope * |i + diag - j| */
  const memattn_tensor* sinks; /* nullable; f32 [heads_q]: one logit per head in each row's
                                  softmax denominator, with no value (lse includes it) */
  /* Variable-length batches, both set or both NULL: 1-D i32/i64 offsets of batch + 1 entries,
   * non-decreasing from 0 to the token total. q is then [1, total_q, heads_q, d], k and v
   * [1, total_k, heads_kv, d], out [1, total_q, heads_q, dv], lse [1, heads_q, total_q]; sequence
   * b is query rows cu_seqlens_q[b] .. cu_seqlens_q[b+1] against key rows cu_seqlens_k[b] ..
   * cu_seqlens_k[b+1]; causal, window and GQA apply per sequence; mask and bias are rejected. */
  const memattn_tensor* cu_seqlens_q;
  const memattn_tensor* cu_seqlens_k;
  int64_t max_seqlen_q, max_seqlen_k; /* 0: computed; smaller than the longest sequence: error */
  /* Moves the diagonal of causal, window and ALiBi: query i's is key i + diag + diagonal_offset
   * (diag from align: 0, or seq_k - seq_q). |diagonal_offset| <= 2^62; default 0. */
  int64_t diagonal_offset;
} memattn_options;

/* Caller scratch memory; {NULL, 0} lets memattn allocate exactly what it needs. */
typedef struct memattn_workspace {
  void* data;
  size_t bytes;
} memattn_workspace;

/* Where memattn takes its own memory. allocate returns NULL on failure (the call then fails with
 * MEMATTN_OUT_OF_MEMORY); deallocate gets the same size back. Process-wide, must be thread-safe. */
typedef struct memattn_allocator {
  void* (*allocate)(size_t bytes, size_t alignment, void* context);
  void (*deallocate)(void* ptr, size_t bytes, void* context);
  void* context;
} memattn_allocator;

/* Scale unset, automatic algorithm and chunks, no causal/window/mask/bias, top-left alignment,
 * all threads, the best target, no softcap, ALiBi or sinks. */
memattn_options memattn_options_default(void);

/* out = softmax(scale * q k^T + bias, masked) v; lse (nullable) receives the row log-sum-exp.
 * On any error nothing is written to out or lse. */
memattn_status memattn_forward(const memattn_tensor* q, const memattn_tensor* k,
                               const memattn_tensor* v, const memattn_tensor* out,
                               const memattn_tensor* lse, const memattn_options* options,
                               memattn_workspace workspace);

/* Attention of new queries against a key/value cache (memattn::attention_with_kvcache): q
 * [B, seq_q, heads_q, d] against the first seqlens_k[b] (i32/i64 [B]) keys of sequence b; with
 * block_table (nullable, i32/i64 [B, max_pages]) k_cache and v_cache are pages [num_pages,
 * page_size, heads_kv, d|dv] and key t of sequence b is row t % page_size of page
 * block_table[b][t / page_size]; without it they are [B, max_seq, heads_kv, d|dv]. The options'
 * causal, align (MEMATTN_ALIGN_BOTTOM_RIGHT for new queries at the end), window, scale and threads
 * apply; mask, bias and cu_seqlens are refused; the flash algorithm runs. On any error nothing is
 * written to out or lse. */
memattn_status memattn_attention_with_kvcache(const memattn_tensor* q, const memattn_tensor* k_cache,
                                              const memattn_tensor* v_cache, const memattn_tensor* seqlens_k,
                                              const memattn_tensor* block_table, const memattn_tensor* out,
                                              const memattn_tensor* lse, const memattn_options* options,
                                              memattn_workspace workspace);

/* Exact workspace bytes memattn_attention_with_kvcache needs; *bytes is written only on success. */
memattn_status memattn_kvcache_workspace_bytes(const memattn_tensor* q, const memattn_tensor* k_cache,
                                               const memattn_tensor* v_cache, const memattn_tensor* seqlens_k,
                                               const memattn_tensor* block_table, const memattn_options* options,
                                               size_t* bytes);

/* Exact workspace bytes memattn_forward needs; *bytes is written only on success. */
memattn_status memattn_workspace_bytes(const memattn_tensor* q, const memattn_tensor* k,
                                       const memattn_tensor* v, const memattn_options* options,
                                       size_t* bytes);

/* dq, dk, dv (and dbias, nullable, when options->bias is set) from dout and forward's out and lse
 * (required). On any error nothing is written to the gradients. */
memattn_status memattn_backward(const memattn_tensor* q, const memattn_tensor* k,
                                const memattn_tensor* v, const memattn_tensor* out,
                                const memattn_tensor* dout, const memattn_tensor* lse,
                                const memattn_tensor* dq, const memattn_tensor* dk,
                                const memattn_tensor* dv, const memattn_options* options,
                                const memattn_tensor* dbias, memattn_workspace workspace);

/* memattn_backward plus dsinks (nullable; f32 [heads_q], needs options->sinks): receives
 * dLoss/dsinks[h] = -sum_{b,i} exp(sinks[h] - lse[b,h,i]) * rowsum(dout * out), summed in a fixed
 * order. It needs no workspace beyond memattn_backward_workspace_bytes. */
memattn_status memattn_backward_ex(const memattn_tensor* q, const memattn_tensor* k,
                                   const memattn_tensor* v, const memattn_tensor* out,
                                   const memattn_tensor* dout, const memattn_tensor* lse,
                                   const memattn_tensor* dq, const memattn_tensor* dk,
                                   const memattn_tensor* dv, const memattn_options* options,
                                   const memattn_tensor* dbias, const memattn_tensor* dsinks,
                                   memattn_workspace workspace);

/* Exact workspace bytes memattn_backward needs; bias_grad nonzero when dbias will be passed. */
memattn_status memattn_backward_workspace_bytes(const memattn_tensor* q, const memattn_tensor* k,
                                                const memattn_tensor* v,
                                                const memattn_options* options, int bias_grad,
                                                size_t* bytes);

/* The tile family memattn_backward runs its products on for these operands and options (NULL: the
 * defaults): "f32_fma", "bf16_dot", "amx_bf16" (bf16, head dims multiples of 32, AMX usable) or
 * "amx_bf16_emulated" (MEMATTN_FAMILY), or "none" for the naive algorithm. A static string; NULL
 * on error, with memattn_last_error() saying why (the operands are checked as memattn_backward
 * checks them). */
const char* memattn_backward_tile_family(const memattn_tensor* q, const memattn_tensor* k,
                                         const memattn_tensor* v, const memattn_options* options);

/* The exact result over the union of `parts` disjoint key sets from each set's (out, lse) pair:
 * lse = log sum_p exp(lses[p]), out = sum_p exp(lses[p] - lse) outs[p], row by row, parts in order.
 * outs[p] [batch, seq_q, heads, head_dim_v], one dtype; lses[p] f32 [batch, heads, seq_q]; out of
 * the parts' shape (any float dtype for f32/bf16/f16 parts, f64 for f64 parts); lse nullable.
 * outs and lses may be NULL when parts is 0 (every row then gives out = 0, lse = -inf). Parts with
 * lse -inf are not read. out (lse) may be the very same view as a part (an lse) to merge in place.
 * Threads: all that OpenMP offers; results do not depend on the count. On error nothing is
 * written. */
memattn_status memattn_merge(const memattn_tensor* outs, const memattn_tensor* lses, size_t parts,
                             const memattn_tensor* out, const memattn_tensor* lse);

/* Installs *allocator (both functions NULL: the default) and stores the one it replaces in
 * *previous (nullable). Safe beside running calls: each buffer goes back to the allocator that
 * gave it. */
memattn_status memattn_set_allocator(const memattn_allocator* allocator,
                                     memattn_allocator* previous);

/* The message of the last failed call on this thread ("" if none); valid until this thread's next
 * failing call. A successful call leaves it as it was. Never NULL. */
const char* memattn_last_error(void);

/* "MEMATTN_OK", "MEMATTN_INVALID_ARGUMENT", ...; "unknown status" for other values. Never NULL. */
const char* memattn_status_name(memattn_status status);

/* The library version, e.g. "0.1.0". */
const char* memattn_version(void);

/* SIMD targets this build runs on this CPU, fastest first, comma-separated (e.g. "avx2,sse4,scalar").
 * A static string, never NULL. */
const char* memattn_supported_targets(void);

/* The tile family memattn_forward runs for inputs of `dtype` with these options (NULL: the
 * defaults) on this machine: "f32_fma", "bf16_dot", "amx_bf16" or "amx_bf16_emulated", or "none"
 * when the options resolve to a reference algorithm (naive, sequential, chunked). Planned as a
 * call is (options->algorithm and target, MEMATTN_TARGET, MEMATTN_FAMILY; mask and bias are not
 * read). A static string; NULL on error, with memattn_last_error() saying why (e.g. an unknown
 * target, or a MEMATTN_FAMILY that is not a family or cannot run this dtype). */
const char* memattn_tile_family(memattn_dtype dtype, const memattn_options* options);

#ifdef __cplusplus
}
#endif

#endif /* MEMATTN_MEMATTN_H */
