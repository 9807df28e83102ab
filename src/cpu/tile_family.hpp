// The seam between the flash forward driver and its tile families: the chunk a family works on,
// the slices every family shares, and the contract a family class fulfils.
#pragma once

#include <cstddef>
#include <cstdint>

#include "api/params.hpp"
#include "common/memory.hpp"
#include "cpu/kernels.hpp"

namespace memattn::detail {

// The chunk being processed: `rows` query rows of batch b, head-major over heads [h0, ...) and
// queries [i0, i0 + queries) (one head unless the item is grouped), against keys [j0, j0 + keys)
// of kv head g.
struct Chunk {
  int64_t b, h0, g, i0, queries, rows, j0, keys;
  int64_t head(int64_t r) const { return h0 + r / queries; }
  int64_t query(int64_t r) const { return i0 + r % queries; }
  bool full;             // every row sees every key: no mask work
  bool all_read;         // every key is seen by some row: K and V can be read in place
  const uint8_t* live;   // when !all_read: live[t] = some row sees key t (others are never read)
  bool one_pitch;        // the chunk's K rows lie k.stride[1] apart from key_row(b, j0, g) (no page
                         // boundary inside), so an all_read chunk's K can be read in place
  bool key_read(int64_t t) const { return all_read || live[t] != 0; }
  // The keys [t0, t1) of the chunk that scores() and accumulate_values() compute: all of them,
  // unless the family takes key blocks (key_blocks) and the driver walks the item's heads block by
  // block (see run_item in flash_forward.cpp).
  int64_t t0 = 0, t1 = 0;
};

// What the driver owns in a worker's slice, whatever the family.
struct FlashSlices {
  float* st;       // key_chunk x pad(query_chunk): scores, then probabilities, transposed
  float* acc;      // query_chunk x pad(dim_v): unnormalised output rows
  float* row_max;  // pad(query_chunk)
  float* row_sum;  // pad(query_chunk)
  float* alpha;    // pad(query_chunk): this chunk's rescaling of the rows
  uint8_t* live;   // key_chunk
  static FlashSlices carve(const Params& p, Carver& c) {
    const size_t cq = size_t(p.query_chunk), ck = size_t(p.key_chunk);
    const size_t cqp = pad_floats(cq), dvp = pad_floats(size_t(p.dim_v));
    return {c.take<float>(checked_mul(ck, cqp)), c.take<float>(checked_mul(cq, dvp)),
            c.take<float>(cqp), c.take<float>(cqp), c.take<float>(cqp), c.take<uint8_t>(ck)};
  }
};

// A tile family F (f32 FMA, bf16 dot, AMX bf16, ...) owns how Q, K, V and P are packed and
// multiplied; the driver owns the chunk walk, masks, bias, the online softmax and the stores.
//   struct F::Slices { static Slices carve(const Params&, Carver&); };  its own scratch
//   F(const Params&, const FlashSlices&, const F::Slices&);            one per work item
//   bool key_blocks(const Chunk& c) const;  true: for this full chunk, scores() and
//                                        accumulate_values() take its keys [c.t0, c.t1) at a time
//                                        (blocks in order, each score and each output element
//                                        summed as for the whole chunk)
//   bool scale_after_dot() const;  true: scores come unscaled and the driver multiplies them by
//                                  p.scale; false: the family pre-scaled the queries
//   void load_queries(const Chunk& c);   rows c.i0 .. c.i0 + c.rows of (c.b, c.h), once per item
//   void scores(const Chunk& c);         st[t * pad(query_chunk) + r] = q_r . k_t for t < c.keys
//                                        and every lane r (lanes past c.rows: any finite value);
//                                        keys !c.key_read(t) are never read (any finite score)
//   bool accumulate_values(const Chunk& c);   acc[r][0..dim_v) += sum_t st[t][r] v_t, st holding
//                                        the probabilities (0 where masked). Returns false, having
//                                        changed nothing, when !c.full and a value it would read is
//                                        NaN or infinite: the driver then sums visible pairs only.
// Families are chosen once per call by the planner (Params::family, enum in api/params.hpp);
// the chunk loop has no family branches.

}  // namespace memattn::detail
