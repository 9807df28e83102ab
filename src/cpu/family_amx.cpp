// The AMX bf16 tile family: Q, K, V and P packed into whole zero-padded tiles for amx_gemm's tile
// GEMM, the scores S^T = K Q^T and acc += P V.
#include "cpu/family_amx.hpp"

#include <algorithm>
#include <cstring>
#include <utility>

#include "common/half.hpp"
#include "cpu/bf16_dot.hpp"
#include "cpu/kernels.hpp"

namespace memattn::detail {

AmxSlices AmxSlices::carve(const Params& p, Carver& c) {
  const size_t cqp = pad_floats(size_t(p.query_chunk)), dvp = pad_floats(size_t(p.dim_v));
  const size_t dp = pad_tile_depth(size_t(p.dim)), kp = pad_tile_depth(size_t(p.key_chunk));
  return {c.take<uint16_t>(checked_mul(dp, cqp)),
          c.take<uint16_t>(checked_mul(pad_tile_rows(size_t(p.key_chunk)), dp)),
          c.take<uint16_t>(checked_mul(kp, dvp)), c.take<uint16_t>(checked_mul(cqp, kp)),
          c.take<float>(kAmxTileRows * kAmxTileRows)};
}

template <typename Ops>
AmxFamily<Ops>::AmxFamily(const Params& p, const FlashSlices& w, const Slices& s)
    : p_(p), w_(w), s_(s), d_(size_t(p.dim)), dv_(size_t(p.dim_v)), dp_(pad_tile_depth(d_)),
      cqp_(pad_floats(size_t(p.query_chunk))), dvp_(pad_floats(dv_)), kp_(pad_tile_depth(size_t(p.key_chunk))) {
  Ops::configure(full_tiles());
}

template <typename Ops>
AmxFamily<Ops>::~AmxFamily() {
  Ops::release();
}

// Q^T pairs: qt[c/2][r][c%2] = q_r[c], zero for rows past c.rows and columns past dim, 16 rows at
// a time through pack_query_pairs. Rows with strided elements are gathered first into the key
// slice, which is free until scores() packs the chunk's keys (16 rows of pad32(dim) fit in it).
template <typename Ops>
void AmxFamily<Ops>::load_queries(const Chunk& c) {
  const int64_t stride = p_.q.stride[3];
  for (size_t r0 = 0; r0 < cqp_; r0 += kAmxTileRows) {
    const uint16_t* rows[kAmxTileRows];
    for (size_t j = 0; j < kAmxTileRows; ++j) {
      const int64_t r = int64_t(r0 + j);
      if (r >= c.rows) {
        rows[j] = nullptr;
        continue;
      }
      const uint16_t* q = reinterpret_cast<const uint16_t*>(p_.q.at<bf16>(c.b, c.query(r), c.head(r)));
      if (stride != 1) {
        uint16_t* gathered = s_.k + j * dp_;
        for (size_t k = 0; k < d_; ++k) gathered[k] = q[int64_t(k) * stride];
        q = gathered;
      }
      rows[j] = q;
    }
    pack_query_pairs(rows, d_, dp_, reinterpret_cast<uint32_t*>(s_.qt) + r0, cqp_);
  }
}

// The A operand of the scores: the key chunk packed into whole zero-padded tiles (rows of pad32(dim)
// bf16, zero for keys past c.keys, keys no row reads, and columns past dim). Reading K in place
// (where its rows allowed) was 3-7% slower at d = 128 on a Sapphire Rapids class Xeon (the tile
// loads' 16 rows at the BSHD pitch share few cache sets) and 1-3% faster at d = 64.
template <typename Ops>
void AmxFamily<Ops>::pack_keys(const Chunk& c) {
  const size_t keys = size_t(c.keys);
  for (size_t t = 0; t < pad_tile_rows(keys); ++t) {
    uint16_t* row = s_.k + t * dp_;
    if (t >= keys || !c.key_read(int64_t(t))) {
      std::fill_n(row, dp_, uint16_t(0));
      continue;
    }
    const bf16* k = p_.key_row<bf16>(c.b, c.j0 + int64_t(t), c.g);
    if (p_.k.stride[3] == 1) {
      std::memcpy(row, k, d_ * sizeof(uint16_t));
    } else {
      for (size_t i = 0; i < d_; ++i) row[i] = k[int64_t(i) * p_.k.stride[3]].bits;
    }
    std::fill(row + d_, row + dp_, uint16_t(0));
  }
}

// S^T = K Q^T straight into the driver's st[key][query]: keys are C's rows, queries its columns.
template <typename Ops>
void AmxFamily<Ops>::scores(const Chunk& c) {
  pack_keys(c);
  const TileGemm g{reinterpret_cast<const uint8_t*>(s_.k),
                   ptrdiff_t(dp_ * sizeof(uint16_t)),
                   reinterpret_cast<const uint8_t*>(s_.qt),
                   ptrdiff_t(cqp_ * 2 * sizeof(uint16_t)),
                   w_.st,
                   cqp_,
                   size_t(c.keys),
                   s_.bounce,
                   pad_tile_rows(size_t(c.keys)) / kAmxTileRows,
                   cqp_ / kAmxTileRows,
                   dp_ / kAmxTileDepth,
                   false};
  tile_gemm<Ops>(g);
}

// Value row t as bf16 bits, or null for keys past c.keys and keys no row reads.
template <typename Ops>
const uint16_t* AmxFamily<Ops>::value_row(const Chunk& c, size_t t) const {
  if (t >= size_t(c.keys) || !c.key_read(int64_t(t))) return nullptr;
  return reinterpret_cast<const uint16_t*>(p_.value_row<bf16>(c.b, c.j0 + int64_t(t), c.g));
}

// V pairs: v[t/2][col][t%2] = v_t[col], zero for keys past c.keys (up to a whole tile depth),
// keys no row reads, and columns past dim_v; contiguous rows through the AVX-512 BF16 kernels'
// pairing where the CPU has them. Returns false if a value read is NaN or infinite.
template <typename Ops>
bool AmxFamily<Ops>::pack_values(const Chunk& c) {
  // The pairing is a copy (the same bits either way), so it takes the AVX-512 kernels wherever
  // the CPU has them, whatever the target: on Intel the default target is avx512 (no bf16 dot
  // kernels), where the scalar pairing cost 13% of the forward (d = 128, 1 thread).
  const Bf16DotKernels* vector = bf16_dot_kernels();
  const int64_t stride = p_.v.stride[3];
  bool finite = true;
  for (size_t t = 0; t < pad_tile_depth(size_t(c.keys)); t += 2) {
    const uint16_t* rows[2] = {value_row(c, t), value_row(c, t + 1)};
    finite &= pair_value_rows(vector, rows, stride, dv_, dvp_, s_.v + t * dvp_);
  }
  return finite;
}

// acc[rows][dv] += P V: query rows are C's rows, value columns its columns, keys the reduction.
template <typename Ops>
bool AmxFamily<Ops>::accumulate_values(const Chunk& c) {
  if (!pack_values(c) && !c.full) return false;
  const size_t row_tiles = pad_tile_rows(size_t(c.rows)) / kAmxTileRows;
  pack_probability_rows(w_.st, cqp_, size_t(c.keys), row_tiles * kAmxTileRows, s_.p, kp_,
                        pack_probability_rows_vector());
  const TileGemm g{reinterpret_cast<const uint8_t*>(s_.p),
                   ptrdiff_t(kp_ * sizeof(uint16_t)),
                   reinterpret_cast<const uint8_t*>(s_.v),
                   ptrdiff_t(dvp_ * 2 * sizeof(uint16_t)),
                   w_.acc,
                   dvp_,
                   size_t(c.rows),
                   s_.bounce,
                   row_tiles,
                   dvp_ / kAmxTileRows,
                   pad_tile_depth(size_t(c.keys)) / kAmxTileDepth,
                   true};
  tile_gemm<Ops>(g);
  return true;
}

template class AmxFamily<AmxHardware>;
template class AmxFamily<AmxEmulated>;

}  // namespace memattn::detail
