// The backward planner: algorithm, chunk sizes, the work items of each pass, the per-worker
// workspace layouts, and the parallel loop that hands each worker its slice.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "api/backward_params.hpp"
#include "common/memory.hpp"
#include "cpu/kernels.hpp"

namespace memattn::detail {

// Fills algorithm (naive, or flash for automatic), chunk sizes, threads and kernels. A pure
// function of the shapes, the options and the target: never of the thread count.
void plan_backward(BackwardParams& p, const Options& o);

// Flash lse pass (the corrections of coarse lse rows): one item per (batch, head, query chunk).
int64_t lse_items(const BackwardParams& p);

// Flash pass 1 (dK, dV): one item per (batch, kv head, key chunk).
int64_t dkv_items(const BackwardParams& p);

// Pass 2's problem: p with its chunks transposed, query tiles of key_chunk rows against key
// chunks of query_chunk keys (p itself with dbias, whose item accumulator grows with the rows).
BackwardParams dq_pass_params(const BackwardParams& p);

// Flash pass 2 (dQ and dbias, on dq_pass_params(p)): items own disjoint sets of (batch, head,
// query chunk) so that each dq row and each dbias element is written by exactly one item. Without
// dbias an item is one (batch, head, query chunk); with dbias, the dims the bias broadcasts over
// are walked inside the item, in a fixed order, so the reduction is deterministic without atomics.
struct DqOwners {
  int64_t batch, heads, chunks;  // item extents along batch, head, query chunk
  int64_t items() const { return batch * heads * chunks; }
};
DqOwners dq_owners(const BackwardParams& p);

// Naive: pass 1 per (batch, kv head); the dbias pass per (bias batch, bias head).
int64_t naive_items(const BackwardParams& p);
int64_t naive_dbias_items(const BackwardParams& p);

// Workers that get a workspace slice: min(threads, the largest pass's items), at least 1.
int backward_workers(const BackwardParams& p);
// Exact bytes backward needs: a slice per worker plus kAlign slack to align a caller's pointer.
size_t backward_workspace_bytes(const BackwardParams& p);

// A backward call's planned problems: the dense call, or a varlen call's sequences.
using BackwardParts = std::vector<BackwardParams>;
// The flash passes run each pass's items of every part in one loop: workers over those items, as
// backward_workers() is for one part, each with a slice as large as the largest part's.
int backward_workers(const BackwardParts& parts);
size_t backward_slice_bytes(const BackwardParts& parts);
// Exact bytes for the parts: the flash passes' slices, or the largest part's own (the naive
// algorithm runs the parts one after another).
size_t backward_workspace_bytes(const BackwardParts& parts);

// The fused pass (passes 1 and 2 in one, f32 calls whose dq rows can hold their running sums, see
// flash_backward.cpp): one item per (batch, kv head). Chosen where its items keep the machine's
// processors busy enough to beat the passes' 7 GEMMs with its 5 (MEMATTN_BACKWARD=fused or
// =passes forces either way).
int64_t fused_items(const BackwardParams& p);
bool fused_backward_fits(const BackwardParts& parts);

// The flash backward's products by p.family (plan_backward): bf16 inputs on the bf16_dot family
// (the avx512_bf16 target) run them on vdpbf16ps, bf16 operands in pairs, odd dims and counts
// zero-padded, f32 sums; on amx_bf16 (head dims multiples of 32) on TDPBF16PS tiles, with the same
// operands. Every other dtype or family runs them on the f32 GEMM.
// Calls whose scores are dot products (Params::scores_by_dot) run on the f32 GEMM and dot products
// whatever their family, as their forward does.
inline bool uses_amx_backward(const BackwardParams& p) {
  return (p.family == TileFamily::amx_bf16 || p.family == TileFamily::amx_bf16_emulated) && !p.scores_by_dot;
}
inline bool uses_bf16_backward(const BackwardParams& p) { return p.family != TileFamily::f32_fma && !p.scores_by_dot; }

// n values rounded up to whole bf16 pairs (the last one zero-padded).
inline size_t pad_pairs(size_t n) { return n + n % 2; }

// f32 tiles padded to kPadFloats lanes; "t" marks transposed tiles whose lanes are the tile's other
// side. A score tile has a row side (pass 1: queries; lse pass and pass 2: keys) and a lane side.
// Slices only one path reads are empty on the other: qt, doutt, kt, vt and v (the f32 GEMM's
// operands) on the bf16 path, the bf16 operands ("16": bf16 bits, "pairs": the two values one
// vdpbf16ps lane sums side by side in 32 bits) on the f32 path.
struct FlashBackwardSlices {
  float* q;       // query_chunk x pad(dim): Q rows, times the scale if |scale| <= 1 (pass 1: A
                  // of S, B of dK += dS^T Q; staged here on their way into qt; the bf16 path
                  // loads them only for its element-wise fallback)
  float* qt;      // dim x pad(query_chunk): the same, transposed (pass 2: B of S^T = K Q^T)
  float* dout;    // query_chunk x pad(dim_v): dO rows (pass 1: A of dP, B of dV += P^T dO), as q
  float* doutt;   // dim_v x pad(query_chunk): dO transposed (pass 2: B of dP^T = V dO^T)
  float* shift;   // pad(query_chunk): per lane, lse; +inf for fully masked rows (P = 0)
  float* corr;    // pad(query_chunk): per lane, the correction to a coarse lse, else 0
  float* dsum;    // pad(query_chunk): D = rowsum(dO * O) per lane
  float* row_max;  // pad(query_chunk): the lse pass's running max (started at the lse)
  float* row_sum;  // pad(query_chunk): the lse pass's running sum of exp(s - row_max)
  float* alpha;    // pad(query_chunk): softmax_step's rescaling, unused
  float* row;     // max(dim, dim_v): one row converted to f32
  float* k;       // key_chunk x pad(dim): the key chunk (lse pass, pass 2: A of S^T; pass 2: B of
                  // dQ += dS K; on the bf16 path the fallback's only)
  float* v;       // key_chunk x pad(dim_v): the value chunk (pass 2: A of dP^T)
  float* kt;      // dim x pad(key_chunk): the key chunk transposed (pass 1: B of S = Q K^T)
  float* vt;      // dim_v x pad(key_chunk): the values transposed (pass 1: B of dP = dO V^T)
  float* st;      // S^T (key_chunk x pad(query_chunk)) or S (query_chunk x pad(key_chunk)), then P
  float* dpt;     // dP^T or dP, like st, then dS (then times the scale where it comes after the
                  // dot products: |scale| > 1, or the bf16 path)
  float* capd;    // like st, with a softcap only: 1 - tanh^2 of each capped score, the factor
                  // its dS takes on the way back through the cap
  float* acc_k;   // max(key_chunk, query_chunk) x pad(dim): dK (pass 1) or dQ (pass 2)
  float* acc_v;   // key_chunk x pad(dim_v): dV (pass 1)
  float* acc_q;   // query_chunk x pad(dim): a query tile's dq rows (the fused pass, f32 products)
  float* dbias;   // (1 or query_chunk) x (1 or seq_k): the item's dbias rows (pass 2, on request)
  // With E = pad_pairs, M = max(query_chunk, key_chunk):
  uint16_t* x16;   // E(M) x E(dim): the row side's q or k (A of S)
  uint16_t* y16;   // E(M) x E(dim_v): the row side's dO or v (A of dP)
  uint16_t* xt16;  // E(dim)/2 x pad(M) pairs: the lane side's k or q, transposed (B of S)
  uint16_t* yt16;  // E(dim_v)/2 x pad(M) pairs: the lane side's v or dO, transposed (B of dP)
  uint16_t* xp16;  // E(M)/2 x pad(dim) pairs of rows: the row side's q or k (B of dK, dQ); AMX:
                   // pad32(M)/2 pairs of rows
  uint16_t* yp16;  // E(query_chunk)/2 x pad(dim_v) pairs of rows: dO (pass 1: B of dV); AMX:
                   // pad32(query_chunk)/2
  uint16_t* tp16;  // P or dS rounded to bf16, pairs of score tile rows (A of dV, dK, dQ)
  uint16_t* g16;   // 5 x max(dim, dim_v): strided bf16 rows gathered on their way to the above
  uint16_t* amx_rows;  // pad(M) x pad32(M): P or dS transposed into bf16 rows (A of dV, dK, dQ)
  uint16_t* amx_a;     // 16 x max(dim, dim_v): the last rows of S's or dP's A operand, zero-padded
  float* amx_c;        // 16 x 16: a C tile that crosses the end of its rows
  uint8_t* live;  // key_chunk: key seen by some row of the tile (else never read)
  uint8_t* packed;  // key_chunk: key already loaded into k and v (pass 1)
  static FlashBackwardSlices carve(const BackwardParams& p, Carver& c);
};

template <typename Acc>
struct NaiveBackwardSlices {
  Acc* probs;     // seq_q x seq_k: one head's softmax, the point of the baseline
  Acc* ds;        // seq_k: one row's dP, then dS
  Acc* dk;        // seq_k x dim: the group's dK
  Acc* dv;        // seq_k x dim_v: the group's dV
  Acc* dq;        // dim: one dQ row
  Acc* dbias;     // bias seq_q|1 x seq_k|1: one (batch, head) slice of dbias (dbias pass)
  Acc* sink_probs;  // seq_q, with sinks: each row's probability of its head's sink
  uint8_t* dead;  // seq_q: rows with no visible key or a zero softmax sum
  static NaiveBackwardSlices carve(const BackwardParams& p, Carver& c);
};

}  // namespace memattn::detail
