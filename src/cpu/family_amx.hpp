// The AMX bf16 tile family of the flash forward (see cpu/tile_family.hpp): Q, K, P and V as bf16
// tiles, S^T = K Q^T and acc += P V through TDPBF16PS, on the hardware or its exact emulation.
#pragma once

#include <cstddef>
#include <cstdint>

#include "api/params.hpp"
#include "common/memory.hpp"
#include "cpu/amx_tiles.hpp"
#include "cpu/tile_family.hpp"

namespace memattn::detail {

// Every operand is cut into whole tiles: 16 rows, and 32 bf16 (one 64-byte tile row) along the
// reduction. Tails are zero-padded, which adds exact zeros to every sum.
constexpr size_t kAmxTileRows = 16, kAmxTileDepth = 32;
inline size_t pad_tile_rows(size_t n) { return (n + kAmxTileRows - 1) / kAmxTileRows * kAmxTileRows; }
inline size_t pad_tile_depth(size_t n) { return (n + kAmxTileDepth - 1) / kAmxTileDepth * kAmxTileDepth; }

// The family's scratch in a worker's slice: O(chunk) memory, K and V packed one chunk at a time.
struct AmxSlices {
  uint16_t* qt;    // pad32(dim)/2 x pad(query_chunk) x 2: Q^T as VNNI pairs (B of the scores)
  uint16_t* k;     // pad16(key_chunk) x pad32(dim): the key chunk's rows when not read in place
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
  const uint16_t* key_rows(const Chunk& c, ptrdiff_t& row_bytes);
  const uint16_t* value_row(const Chunk& c, size_t t) const;
  bool pack_values(const Chunk& c);

  const Params& p_;
  const FlashSlices w_;
  const Slices s_;
  const size_t d_, dv_, dp_, cqp_, dvp_, kp_;  // dim, dim_v, pad32(dim), pad(query_chunk),
                                               // pad(dim_v), pad32(key_chunk)
};

// The A operand of P V from the driver's transposed probabilities: p[r * p_row + t] =
// bf16(st[t * ld + r]) rounded to nearest even (NaN stays NaN) for r < rows (a multiple of 16, at
// most ld) and t < keys, zero for keys up to the next multiple of 32. `vector` takes the AVX-512
// version, which gives the same bits, and may be true only where pack_probability_rows_vector().
void pack_probability_rows(const float* st, size_t ld, size_t keys, size_t rows, uint16_t* p, size_t p_row,
                           bool vector);
bool pack_probability_rows_vector();
// Whether AmxFamily::load_queries may take its AVX-512 transposition (same bits as the scalar one).
bool pack_query_pairs_vector();

extern template class AmxFamily<AmxHardware>;
extern template class AmxFamily<AmxEmulated>;

}  // namespace memattn::detail
