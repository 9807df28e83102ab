// The planner: algorithm, chunk sizes, thread count and the per-worker workspace layouts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "api/params.hpp"
#include "common/memory.hpp"
#include "cpu/kernels.hpp"

namespace memattn::detail {

// Fills p.algorithm, p.query_chunk, p.key_chunk, p.threads, p.kernels and p.family from the
// options (and MEMATTN_TARGET / MEMATTN_FAMILY from the environment). Pure function of
// the shapes, the options and the machine's cache sizes: never of the thread count, so results are
// bitwise identical for any number of threads.
void plan_forward(Params& p, const Options& o);

// Do p's f32 products score by dot products (Params::scores_by_dot)? Flash calls whose groups have
// at most 8 rows (query heads per kv head x queries: decode), which would fill few of the GEMM's
// lanes, with a head dim that is a multiple of 16 (whole vectors of every target). A function of
// the shapes alone, the same for forward and backward.
bool scores_by_dot(const Params& p);

// The tile family of p's flash forward or backward products: the one MEMATTN_FAMILY names (an
// error where it cannot run p's dtype and target; an AMX family on head dims the backward's tiles
// do not take falls to the default there), else the fastest that runs: amx_bf16, bf16_dot, f32_fma.
TileFamily choose_family(const Params& p, bool backward);

// Independent units of parallel work: (batch, head, query chunk), (batch, block of
// kv_heads_per_item kv heads, key split) for grouped flash items, or (batch, head).
int64_t work_items(const Params& p);

// One flash work item: query rows (heads [h0, h0 + heads) x queries [i0, i0 + queries), head-major)
// of batch b against keys [k_lo, k_hi) of kv head g, which is key split `split` of the row; and
// the same rows of the next kv_heads - 1 kv heads (their query heads follow, `heads` per kv
// head), walked through the same key chunks in lockstep.
// A grouped item's kv heads each keep their own slice (tiles, accumulators): bounded, so the
// per-worker workspace stays small.
constexpr int64_t kMaxKvHeadsPerItem = 16;
struct FlashWorkItem {
  int64_t b, g, h0, heads, i0, queries, k_lo, k_hi, split;
  int64_t kv_heads = 1;
};
// Item `index` of [0, work_items(p)): the planner's item list, a pure function of the shapes.
FlashWorkItem flash_item(const Params& p, int64_t index);

// Bytes of the flash forward's (out, lse) partials: splits x batch x heads_q x seq_q x (dim_v + 1)
// f32, or 0 with one split.
size_t flash_partial_bytes(const Params& p);
// Workers that get a workspace slice: min(threads, work items), at least 1.
int workers(const Params& p);

// A call's planned problems: the dense call, or a varlen call's sequences (api/sequences.hpp).
using Parts = std::vector<Params>;

// Flash items of a part that runs the flash driver (parts without queries or keys have none).
int64_t flash_items(const Params& p);
// Workers of a flash call over every part's items, as workers() is for one.
int workers(const Parts& parts);
// Bytes of one worker's flash forward slice: the largest any part needs.
size_t flash_slice_bytes(const Parts& parts);

// Exact bytes forward needs: a slice per worker (the flash driver's, over every part's items), or
// the largest part's own (the reference algorithms run the parts one after another); plus the
// split partials and kAlign slack to align a caller's pointer.
size_t forward_workspace_bytes(const Params& p);
size_t forward_workspace_bytes(const Parts& parts);

template <typename Acc>
struct NaiveSlices {
  Acc* scores;  // seq_q x seq_k: the whole matrix, the point of the baseline
  Acc* acc;     // dim_v: one output row being summed
  static NaiveSlices carve(const Params& p, Carver& c) {
    return {c.take<Acc>(checked_mul(size_t(p.seq_q), size_t(p.seq_k))), c.take<Acc>(p.dim_v)};
  }
};

template <typename Acc>
struct SequentialSlices {
  Acc* acc;  // dim_v: the running value vector v* of the paper's section 2
  static SequentialSlices carve(const Params& p, Carver& c) { return {c.take<Acc>(p.dim_v)}; }
};

template <typename Acc>
struct ChunkedSlices {
  Acc* scores;     // key_chunk: one query row's scores against the chunk
  Acc* values;     // key chunks x query_chunk x dim_v: each chunk's exp-weighted values
  Acc* sums;       // key chunks x query_chunk: each chunk's exp-weight sum
  Acc* maxes;      // key chunks x query_chunk: each chunk's max score
  static int64_t key_chunks(const Params& p) { return (p.seq_k + p.key_chunk - 1) / p.key_chunk; }
  static ChunkedSlices carve(const Params& p, Carver& c) {
    const size_t cq = size_t(p.query_chunk), n = size_t(key_chunks(p));
    const size_t summaries = checked_mul(n, cq);
    return {c.take<Acc>(checked_mul(cq, size_t(p.key_chunk))),
            c.take<Acc>(checked_mul(summaries, size_t(p.dim_v))), c.take<Acc>(summaries),
            c.take<Acc>(summaries)};
  }
};

// bf16 inputs on a CPU with the AVX-512 bf16 dot product (and an even head dim, since the
// instruction reduces pairs) take the backward's vdpbf16ps path.
inline bool uses_bf16_dot(const Params& p) {
  return p.dtype == DType::bf16 && p.kernels != nullptr && p.kernels->bf16 != nullptr && p.dim % 2 == 0;
}

}  // namespace memattn::detail
