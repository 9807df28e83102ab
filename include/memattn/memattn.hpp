// memattn's public C++ API: exact attention whose extra memory does not grow with n^2.
#pragma once

#include <cstddef>

#include "memattn/allocator.hpp"
#include "memattn/error.hpp"
#include "memattn/merge.hpp"
#include "memattn/targets.hpp"
#include "memattn/types.hpp"

namespace memattn {

// Exact number of workspace bytes forward() needs for these operands and options (the algorithm,
// chunk sizes and thread count they resolve to). Validates like forward(); throws the same errors.
size_t workspace_bytes(const Tensor& q, const Tensor& k, const Tensor& v, const Options& options);

// The tile family whose products forward() runs for inputs of `dtype` with these options on this
// machine: "f32_fma" (the f32 GEMM of the SIMD target), "bf16_dot" (AVX-512 BF16 vdpbf16ps),
// "amx_bf16" (Intel AMX) or "amx_bf16_emulated" (forced by MEMATTN_FAMILY, for tests); "none" when
// the options resolve to a reference algorithm (naive, sequential, chunked), which runs no family.
// Planned as forward() plans (options.algorithm and target, MEMATTN_TARGET, MEMATTN_FAMILY), so it
// throws what such a call would: e.g. invalid_argument for an unknown target or MEMATTN_FAMILY
// value, unsupported for a MEMATTN_FAMILY that cannot run this dtype. options.mask, bias,
// alibi_slopes, sinks and the cu_seqlens are not read (they do not change the family). A static
// string, never null.
const char* tile_family(DType dtype, const Options& options = {});

// out[b, i, h, :] = sum_j softmax_j(scale * q[b,i,h,:] . k[b,j,g,:] + bias - inf*masked) v[b,j,g,:]
// with g = h / (heads_q / heads_kv). lse (optional, f32 [batch, heads_q, seq_q]) receives
// log sum_j exp(s_ij). A fully masked row gives out = 0 and lse = -inf (lse = sinks[h] with
// options.sinks). options.softcap, alibi_slopes and sinks modify the scores (docs/api.md). Every argument is checked
// before anything is written; on error out and lse are untouched.
void forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor* lse,
             const Options& options, Workspace workspace = {});

// Attention of new queries against a key/value cache (decoding), on the flash algorithm:
// out[b] = attention(q[b], the first seqlens_k[b] keys and values of sequence b) with the options'
// causal (set align = Align::bottom_right for new queries at the end of the sequence), window,
// scale and threads; mask, bias and cu_seqlens are not taken. q [B, seq_q, heads_q, d]; out
// [B, seq_q, heads_q, dv]; lse (optional) f32 [B, heads_q, seq_q]; seqlens_k i32/i64 [B], each in
// [0, cache capacity]. With block_table (i32/i64 [B, max_pages]) k_cache and v_cache are pages
// [num_pages, page_size, heads_kv, d|dv] (any page_size >= 1) and key t of sequence b is row
// t % page_size of page block_table[b][t / page_size]; the pages a sequence uses must lie in
// [0, num_pages), the others are not read. Without it they are [B, max_seq, heads_kv, d|dv] and
// key t of sequence b is row t of batch b. Results are bitwise identical for any thread count;
// every argument is checked before anything is written.
void attention_with_kvcache(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& seqlens_k,
                            const Tensor* block_table, const Tensor& out, const Tensor* lse, const Options& options,
                            Workspace workspace = {});
// Exact workspace bytes attention_with_kvcache needs; validates like it (seqlens_k and the block
// table's pages are read).
size_t kvcache_workspace_bytes(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                               const Tensor& seqlens_k, const Tensor* block_table, const Options& options);

// What a backward call computes beyond dq, dk, dv; it sizes the workspace.
struct BackwardRequest {
  bool bias_grad = false;  // dbias is requested (options.bias must be set)
};

// Exact number of workspace bytes backward() needs for these operands, options and request.
// Validates the shared operands like backward(); throws the same errors.
size_t backward_workspace_bytes(const Tensor& q, const Tensor& k, const Tensor& v,
                                const Options& options, const BackwardRequest& request = {});

// The tile family whose products backward() runs for these operands and options on this machine:
// "f32_fma", "bf16_dot" (vdpbf16ps; bf16 on the avx512_bf16 target), "amx_bf16" (bf16 with head
// dims that are multiples of 32, where AMX is usable) or "amx_bf16_emulated" (MEMATTN_FAMILY, for
// tests); "none" for the naive algorithm. Unlike the forward's, it depends on the head dims.
// Validates the shared operands like backward(); throws the same errors. A static string.
const char* backward_tile_family(const Tensor& q, const Tensor& k, const Tensor& v, const Options& options = {});

// Gradients of forward() given dout = dLoss/dout: dq, dk, dv have the shapes and dtype of q, k, v
// (any non-overlapping strides); out and lse are forward()'s outputs for the same operands (lse is
// required: the flash path recomputes the probabilities from it, the naive path recomputes the
// softmax from scratch). dk, dv are summed over the query heads of each GQA group. dbias, when
// given (options.bias set), has the bias's own shape and dtype and receives dLoss/dbias summed
// over the bias's broadcast dimensions. Algorithms: naive (O(n^2) reference, also f64) and flash
// (automatic; extra memory constant in n). Fully masked rows contribute zero gradients; with
// seq_q = 0, dk, dv and dbias are zero. Results are bitwise identical for any thread count.
// Every argument is checked before anything is written; on error the gradients are untouched.
// options.softcap and alibi_slopes enter the recomputed scores (slopes get no gradient); with
// options.sinks, dsinks (nullable, f32 [heads_q]) receives dLoss/dsinks[h] =
// -sum_{b,i} exp(sinks[h] - lse[b,h,i]) * rowsum(dout * out)[b,i,h], summed in a fixed order.
// It needs no workspace.
void backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
              const Tensor& dout, const Tensor& lse, const Tensor& dq, const Tensor& dk,
              const Tensor& dv, const Options& options, const Tensor* dbias = nullptr,
              Workspace workspace = {}, const Tensor* dsinks = nullptr);

}  // namespace memattn
