// The AMX bf16 tile family of the flash forward (see cpu/tile_family.hpp): Q, K, P and V as bf16
// tiles, S^T = K Q^T and acc += P V through TDPBF16PS, on the hardware or its exact emulation.
#pragma once

#include <cstddef>
#include <cstdint>

#include "api/params.hpp"
#include "common/half.hpp"
#include "common/memory.hpp"
#include "cpu/amx_gemm.hpp"
#include "cpu/amx_tiles.hpp"
#include "cpu/tile_family.hpp"

namespace memattn::detail {

// The family's scratch in a worker's slice: O(chunk) memory, K and V packed one chunk at a time.
struct AmxSlices {
  uint16_t* qt;    // pad32(dim)/2 x pad(query_chunk) x 2: Q^T as VNNI pairs (B of the scores)
  uint16_t* k;     // pad16(key_chunk) x pad32(dim): the key chunk's rows
  uint16_t* v;     // pad32(key_chunk)/2 x pad(dim_v) x 2: the value chunk as VNNI pairs
  uint16_t* p;     // pad(query_chunk) x pad32(key_chunk): the probabilities as bf16 query rows
  float* bounce;   // one 16 x 16 f32 tile for C tiles that cross the end of st or acc
  static AmxSlices carve(const Params& p, Carver& c);
};

// For bf16 inputs only. Ops is AmxHardware or AmxEmulated (cpu/amx_tiles.hpp); the class is
// compiled once, in family_amx.cpp, for both. One object per work item: it configures the thread's
// tiles when made and releases them when destroyed.
template <typename Ops>
class AmxFamily {
 public:
  using Kv = bf16;  // keys and values in q's dtype
  bool key_blocks(const Chunk&) const { return false; }  // its tiles take whole chunks
  using Slices = AmxSlices;

  AmxFamily(const Params& p, const FlashSlices& w, const Slices& s);
  ~AmxFamily();
  AmxFamily(const AmxFamily&) = delete;
  AmxFamily& operator=(const AmxFamily&) = delete;

  // Unscaled dot products: the driver multiplies the scores by p.scale.
  bool scale_after_dot() const { return true; }
  void load_queries(const Chunk& c);
  void scores(const Chunk& c);
  bool accumulate_values(const Chunk& c);

 private:
  void pack_keys(const Chunk& c);
  const uint16_t* value_row(const Chunk& c, size_t t) const;
  bool pack_values(const Chunk& c);

  const Params& p_;
  const FlashSlices w_;
  const Slices s_;
  const size_t d_, dv_, dp_, cqp_, dvp_, kp_;  // dim, dim_v, pad32(dim), pad(query_chunk),
                                               // pad(dim_v), pad32(key_chunk)
};

extern template class AmxFamily<AmxHardware>;
extern template class AmxFamily<AmxEmulated>;

}  // namespace memattn::detail
