// The flash path's SIMD kernels, compiled once per Highway target (foreach_target) and listed at
// the end for run-time selection: a register-blocked f32 GEMM tile (one operand may be bf16),
// dot-product scores for decode groups, the online-softmax step with a vectorised exp, row
// rescaling and dtype conversion.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/kernels_hwy.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include <array>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <utility>

#include "hwy/highway.h"

#include "common/half.hpp"
#include "cpu/kernels.hpp"

HWY_BEFORE_NAMESPACE();
namespace memattn::detail {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// Register blocking: kMR rows of A times kNV vectors of B, kMR * kNV accumulators. 6 x 4 uses 24 of
// AVX-512's 32 registers (plus 4 for B and 1 broadcast) and amortises each B load over 6 FMAs; the
// same shape serves 16 registers of AVX2/SSE4 less well but still without spills of B.
constexpr size_t kMR = HWY_TARGET <= HWY_AVX3 ? 6 : 4;
constexpr size_t kNV = HWY_TARGET <= HWY_AVX3 ? 4 : 2;

template <typename S>
HWY_INLINE VF LoadAsF32(DF d, const S* p) {
  if constexpr (std::is_same_v<S, float>) return hn::LoadU(d, p);
  else return hn::PromoteTo(d, hn::LoadU(hn::Rebind<S, DF>(), p));
}

// TA, TB: the element types of A and B (float, or hwy::bfloat16_t widened exactly as read).
template <size_t MR, size_t NV, typename TA, typename TB>
HWY_INLINE void GemmTile(const GemmArgs& g, size_t i0, size_t j0) {
  const DF d;
  const size_t L = hn::Lanes(d);
  VF acc[MR][NV];
  float* c = g.c + i0 * g.ldc + j0;
  HWY_UNROLL(1)
  for (size_t i = 0; i < MR; ++i)
    for (size_t j = 0; j < NV; ++j)
      acc[i][j] = g.accumulate ? hn::LoadU(d, c + i * g.ldc + j * L) : hn::Zero(d);
  const TA* a = static_cast<const TA*>(g.a) + i0 * g.a_row;
  const TB* b = static_cast<const TB*>(g.b) + j0;
  for (size_t kk = 0; kk < g.k; ++kk) {
    VF bv[NV];
    for (size_t j = 0; j < NV; ++j) bv[j] = LoadAsF32(d, b + kk * g.ldb + j * L);
    for (size_t i = 0; i < MR; ++i) {
      const TA e = a[i * g.a_row + kk * g.a_col];
      float ae;
      if constexpr (std::is_same_v<TA, float>) ae = e;
      else ae = hwy::F32FromBF16(e);
      const VF ai = hn::Set(d, ae);
      for (size_t j = 0; j < NV; ++j) acc[i][j] = hn::MulAdd(ai, bv[j], acc[i][j]);
    }
  }
  for (size_t i = 0; i < MR; ++i)
    for (size_t j = 0; j < NV; ++j) hn::StoreU(acc[i][j], d, c + i * g.ldc + j * L);
}

// Tiles for every (rows, vectors) remainder, so edges run the same code as the steady state.
template <size_t MR, size_t NV, typename TA, typename TB>
void GemmTileFn(const GemmArgs& g, size_t i0, size_t j0) {
  GemmTile<MR, NV, TA, TB>(g, i0, j0);
}
using TileFn = void (*)(const GemmArgs&, size_t, size_t);
template <typename TA, typename TB, size_t MR, size_t... J>
constexpr std::array<TileFn, kNV> TileCol(std::index_sequence<J...>) {
  return {&GemmTileFn<MR, J + 1, TA, TB>...};
}
template <typename TA, typename TB, size_t... I>
constexpr std::array<std::array<TileFn, kNV>, kMR> TileTable(std::index_sequence<I...>) {
  return {TileCol<TA, TB, I + 1>(std::make_index_sequence<kNV>())...};
}

template <typename TA, typename TB>
void GemmOf(const GemmArgs& g) {
  static constexpr auto table = TileTable<TA, TB>(std::make_index_sequence<kMR>());
  const size_t L = hn::Lanes(DF());
  const size_t nvec = g.n / L;
  // Column panels outermost: a K x (kNV vectors) panel of B stays in L1 across all row tiles.
  for (size_t jv = 0; jv < nvec; jv += kNV) {
    const size_t nv = std::min(kNV, nvec - jv);
    size_t i = 0;
    for (; i + kMR <= g.m; i += kMR) table[kMR - 1][nv - 1](g, i, jv * L);
    if (i < g.m) table[g.m - i - 1][nv - 1](g, i, jv * L);
  }
}

void Gemm(const GemmArgs& g) { GemmOf<float, float>(g); }

void GemmBf16(const GemmArgs& g, Bf16Operand which) {
  if (which == Bf16Operand::a) GemmOf<hwy::bfloat16_t, float>(g);
  else GemmOf<float, hwy::bfloat16_t>(g);
}

HWY_INLINE float Widen(float x) { return x; }
HWY_INLINE float Widen(hwy::bfloat16_t x) { return hwy::F32FromBF16(x); }

#if HWY_TARGET != HWY_SCALAR
// z_j's blocks of 4 lanes transposed and added: block b, lane j of the result is
// (l0 + l2) + (l1 + l3) of block b of z_j.
HWY_INLINE VF TransposeAdd4(DF d, VF z0, VF z1, VF z2, VF z3) {
  const hn::Repartition<double, DF> d64;
  const VF s01 = hn::Add(hn::InterleaveLower(d, z0, z1), hn::InterleaveUpper(d, z0, z1));
  const VF s23 = hn::Add(hn::InterleaveLower(d, z2, z3), hn::InterleaveUpper(d, z2, z3));
  const auto lo = hn::InterleaveLower(d64, hn::BitCast(d64, s01), hn::BitCast(d64, s23));
  const auto hi = hn::InterleaveUpper(d64, hn::BitCast(d64, s01), hn::BitCast(d64, s23));
  return hn::Add(hn::BitCast(d, lo), hn::BitCast(d, hi));
}

#if HWY_TARGET <= HWY_AVX2
// The halves of a and b folded: a's sums in the lower half, b's in the upper.
HWY_INLINE VF FoldHalves(DF d, VF a, VF b) {
  return hn::Add(hn::ConcatLowerLower(d, b, a), hn::ConcatUpperUpper(d, b, a));
}
#endif

// out[i] = the sum of the lanes of x[i], i < 16, by a tree fixed per vector width: the vectors'
// halves folded (16 lanes: 256-bit halves, then 128-bit blocks; 8 lanes: 128-bit blocks), then
// their blocks of 4 lanes by TransposeAdd4.
HWY_INLINE void SumLanes16(DF d, const VF (&x)[16], float* out) {
  HWY_ALIGN float sums[hn::MaxLanes(d)];
#if HWY_TARGET <= HWY_AVX3
  VF h[8];  // blocks 0, 1: item 2m folded to 8 lanes; blocks 2, 3: item 2m + 1
  for (size_t m = 0; m < 8; ++m) h[m] = FoldHalves(d, x[2 * m], x[2 * m + 1]);
  VF y[4];  // blocks: items 4n, 4n + 2, 4n + 1, 4n + 3 folded to 4 lanes
  for (size_t n = 0; n < 4; ++n)
    y[n] = hn::Add(hn::OddEvenBlocks(hn::SwapAdjacentBlocks(h[2 * n + 1]), h[2 * n]),
                   hn::OddEvenBlocks(h[2 * n + 1], hn::SwapAdjacentBlocks(h[2 * n])));
  hn::Store(TransposeAdd4(d, y[0], y[1], y[2], y[3]), d, sums);
  constexpr size_t kBlockItem[4] = {0, 2, 1, 3};
  for (size_t b = 0; b < 4; ++b)
    for (size_t j = 0; j < 4; ++j) out[4 * j + kBlockItem[b]] = sums[b * 4 + j];
#elif HWY_TARGET == HWY_AVX2
  VF h[8];  // block 0: item 2m folded to 4 lanes, block 1: item 2m + 1
  for (size_t m = 0; m < 8; ++m) h[m] = FoldHalves(d, x[2 * m], x[2 * m + 1]);
  for (size_t g = 0; g < 2; ++g) {
    hn::Store(TransposeAdd4(d, h[4 * g], h[4 * g + 1], h[4 * g + 2], h[4 * g + 3]), d, sums);
    for (size_t b = 0; b < 2; ++b)
      for (size_t j = 0; j < 4; ++j) out[2 * (4 * g + j) + b] = sums[b * 4 + j];
  }
#else
  for (size_t g = 0; g < 4; ++g) {
    hn::Store(TransposeAdd4(d, x[4 * g], x[4 * g + 1], x[4 * g + 2], x[4 * g + 3]), d, sums);
    for (size_t j = 0; j < 4; ++j) out[4 * g + j] = sums[j];
  }
#endif
}
#endif

// A tile of 4 keys x 4 query rows: 16 dot products, each a vector of partial sums (lane l: the
// elements kk = l mod lanes, in increasing kk) reduced by SumLanes16. Plain loads of both rows:
// no shuffle in the loop (on Zen 4 a 512-bit shuffle takes an FMA's slot).
template <typename KT>
void DotScoresOf(const DotScoresArgs& g) {
  const DF d;
  const KT* k = static_cast<const KT*>(g.k);
#if HWY_TARGET == HWY_SCALAR
  for (size_t t = 0; t < g.keys; ++t)
    for (size_t r = 0; r < g.rows; ++r) {
      VF c = hn::Zero(d);
      for (size_t kk = 0; kk < g.d; ++kk)
        c = hn::MulAdd(hn::Set(d, Widen(k[t * g.k_row + kk])), hn::Set(d, g.q[r * g.q_row + kk]), c);
      g.st[t * g.ldst + r] = hn::GetLane(c);
    }
#else
  const size_t L = hn::Lanes(d);
  for (size_t t0 = 0; t0 < g.keys; t0 += 4) {
    const size_t nk = std::min<size_t>(4, g.keys - t0);
    const KT* key[4];  // past the last key or row, the last one again (its sums are not stored)
    for (size_t i = 0; i < 4; ++i) key[i] = k + (t0 + std::min(i, nk - 1)) * g.k_row;
    for (size_t r0 = 0; r0 < g.rows; r0 += 4) {
      const size_t nr = std::min<size_t>(4, g.rows - r0);
      const float* q[4];
      for (size_t r = 0; r < 4; ++r) q[r] = g.q + (r0 + std::min(r, nr - 1)) * g.q_row;
      VF acc[16];
      for (VF& x : acc) x = hn::Zero(d);
      for (size_t kk = 0; kk < g.d; kk += L) {
        VF qv[4];
        for (size_t r = 0; r < 4; ++r) qv[r] = hn::LoadU(d, q[r] + kk);
        for (size_t i = 0; i < 4; ++i) {
          const VF kv = LoadAsF32(d, key[i] + kk);
          for (size_t r = 0; r < 4; ++r) acc[i * 4 + r] = hn::MulAdd(kv, qv[r], acc[i * 4 + r]);
        }
      }
      float sums[16];
      SumLanes16(d, acc, sums);
      for (size_t i = 0; i < nk; ++i)
        for (size_t r = 0; r < nr; ++r) g.st[(t0 + i) * g.ldst + r0 + r] = sums[i * 4 + r];
    }
  }
#endif
}

void DotScores(const DotScoresArgs& g) {
  if (g.k_bf16) DotScoresOf<hwy::bfloat16_t>(g);
  else DotScoresOf<float>(g);
}

// Keys per step of a walk: scored as DotScoresOf's tiles of 4 keys, and their value rows added
// into the accumulators in registers.
constexpr size_t kWalkKeys = 4;

// Asks for head h's rows of keys t0 + ahead .. t0 + ahead + nk - 1 of a walk (K or V) to be
// brought into L2, from where they lie (WalkArgs::ahead); spread over the heads' turns, so that
// the requests keep pace with the compute rather than come in bursts.
template <typename KT>
HWY_INLINE void FetchAhead(const WalkArgs& g, size_t h, size_t t0, size_t nk, bool value) {
  const size_t row = value ? g.v_row : g.k_row, n = (value ? g.dv : g.d) * sizeof(KT);
  const WalkHead& w = g.heads[h];
  for (size_t t = t0 + g.ahead; t < t0 + g.ahead + nk; ++t) {
    const void* base = value ? w.v : w.k;
    size_t at = t;
    if (t >= g.ahead_end) {
      base = value ? w.v_next : w.k_next, at = t - g.ahead_end;
      if (at >= g.next_keys) return;
    }
    const char* c = reinterpret_cast<const char*>(static_cast<const KT*>(base) + at * row);
    for (size_t x = 0; x < n; x += 64) __builtin_prefetch(c + x, 0, 2);
  }
}

// Each step of kWalkKeys keys: the rows ahead asked for, then every head's scores of the step's
// keys by DotScoresOf (the same tiles, so the same bits).
template <typename KT>
void WalkScoresOf(const WalkArgs& g) {
  for (size_t t0 = 0; t0 < g.keys; t0 += kWalkKeys) {
    const size_t nk = std::min(kWalkKeys, g.keys - t0);
    for (size_t h = 0; h < g.n_heads; ++h) {
      FetchAhead<KT>(g, h, t0, nk, false);
      const WalkHead& w = g.heads[h];
      DotScoresOf<KT>({static_cast<const KT*>(w.k) + t0 * g.k_row, g.k_row, false, nk, w.q, g.d, g.rows, g.d,
                       w.st + t0 * g.ldst, g.ldst});
    }
  }
}

void WalkScores(const WalkArgs& g) {
  if (g.kv_bf16) WalkScoresOf<hwy::bfloat16_t>(g);
  else WalkScoresOf<float>(g);
}

// acc[r] += p[j][r] v_j for rows r < NR of one head, keys j < nk in order (fused multiply-adds
// chained in registers: the same roundings as one key at a time), the weights broadcast once.
template <size_t NR, typename KT>
HWY_INLINE void WalkValueRows(DF d, const KT* const* v, size_t nk, const float* p, size_t ldst, float* acc,
                              size_t ldacc, size_t dv) {
  VF pr[kWalkKeys][NR];
  for (size_t j = 0; j < nk; ++j)
    for (size_t r = 0; r < NR; ++r) pr[j][r] = hn::Set(d, p[j * ldst + r]);
  for (size_t c = 0; c < dv; c += hn::Lanes(d)) {
    VF a[NR];
    for (size_t r = 0; r < NR; ++r) a[r] = hn::LoadU(d, acc + r * ldacc + c);
    for (size_t j = 0; j < nk; ++j) {
      const VF vc = LoadAsF32(d, v[j] + c);
      for (size_t r = 0; r < NR; ++r) a[r] = hn::MulAdd(pr[j][r], vc, a[r]);
    }
    for (size_t r = 0; r < NR; ++r) hn::StoreU(a[r], d, acc + r * ldacc + c);
  }
}

template <typename KT>
void WalkValuesOf(const WalkArgs& g) {
  const DF d;
  const size_t rows = g.rows, dv = g.dv, ldst = g.ldst, ldacc = g.ldacc;
  for (size_t t0 = 0; t0 < g.keys; t0 += kWalkKeys) {
    const size_t nk = std::min(kWalkKeys, g.keys - t0);
    for (size_t h = 0; h < g.n_heads; ++h) {
      FetchAhead<KT>(g, h, t0, nk, true);
      const KT* v[kWalkKeys];
      for (size_t j = 0; j < nk; ++j) v[j] = static_cast<const KT*>(g.heads[h].v) + (t0 + j) * g.v_row;
      const float* p = g.heads[h].st + t0 * ldst;
      float* acc = g.heads[h].acc;
      for (size_t r0 = 0; r0 < rows; r0 += 4) {
        const float* pr = p + r0;
        float* ar = acc + r0 * ldacc;
        switch (std::min<size_t>(4, rows - r0)) {
          case 1: WalkValueRows<1>(d, v, nk, pr, ldst, ar, ldacc, dv); break;
          case 2: WalkValueRows<2>(d, v, nk, pr, ldst, ar, ldacc, dv); break;
          case 3: WalkValueRows<3>(d, v, nk, pr, ldst, ar, ldacc, dv); break;
          default: WalkValueRows<4>(d, v, nk, pr, ldst, ar, ldacc, dv); break;
        }
      }
    }
  }
}

void WalkValues(const WalkArgs& g) {
  if (g.kv_bf16) WalkValuesOf<hwy::bfloat16_t>(g);
  else WalkValuesOf<float>(g);
}

// exp(x) for x <= 0 (the softmax only exponentiates score - running max), NaN kept, -inf -> 0.
// Cody-Waite reduction x = n ln2 + r with |r| <= ln2/2 and Highway's minimax polynomial for
// e^r (max error about 1 ulp, the bound Highway documents for its Exp), then 2^n in two steps:
// n added into the exponent bits of 2^32 e^r (the polynomial's last FMA scales it exactly), a
// normal float for every n >= -150, then a multiply by 2^-32, exact where exp(x) is normal (the
// bits of n added into the exponent of e^r) and one rounding where it is subnormal. So down to
// ln(2^-150) ~ -103.97 the result is exp(x) rounded to an f32 subnormal (within 2 ulp), not 0: a
// tiny weight times an infinite value stays infinite, as in IEEE arithmetic (a flush to 0 made it
// 0 * inf = NaN). Below -104, where exp(x) < 2^-150 rounds to 0 anyway, the result is 0. Fewer
// operations than hwy's general Exp: no range split for large positive x. NaN is put back at the
// end (the float-to-int conversion saturates it into a finite exponent).
HWY_INLINE VF ExpNonPositive(DF d, VF x) {
  const hn::RebindToSigned<DF> di;
  const VF n = hn::Round(hn::Mul(x, hn::Set(d, 1.44269504088896341f)));
  VF r = hn::MulAdd(n, hn::Set(d, -0.693145751953125f), x);
  r = hn::MulAdd(n, hn::Set(d, -1.428606765330187045e-6f), r);
  VF q = hn::Set(d, 0.000198527617612853646278381f);
  q = hn::MulAdd(q, r, hn::Set(d, 0.00139304355252534151077271f));
  q = hn::MulAdd(q, r, hn::Set(d, 0.00833336077630519866943359f));
  q = hn::MulAdd(q, r, hn::Set(d, 0.0416664853692054748535156f));
  q = hn::MulAdd(q, r, hn::Set(d, 0.166666671633720397949219f));
  q = hn::MulAdd(q, r, hn::Set(d, 0.5f));
  const VF two_32 = hn::Set(d, 0x1p32f);  // 2^(n + 32) e^r is normal for n >= -150, finite for n <= 0
  const VF e_r_pre = hn::MulAdd(hn::MulAdd(q, hn::Mul(r, r), r), two_32, two_32);
#if HWY_TARGET == HWY_EMU128 || HWY_TARGET == HWY_SCALAR
  // These targets convert with a plain C++ cast, undefined for NaN and -inf (x of a fully masked
  // row is -inf - -inf); such lanes are replaced below anyway, so any exponent does.
  const VF n_int = hn::IfThenElse(hn::Ge(n, hn::Set(d, -160.0f)), n, hn::Set(d, -160.0f));
#else
  const VF n_int = n;  // the SIMD conversions are defined for every input
#endif
  const auto scaled = hn::Add(hn::BitCast(di, e_r_pre), hn::ShiftLeft<23>(hn::ConvertTo(di, n_int)));
  const VF y = hn::Mul(hn::BitCast(d, scaled), hn::Set(d, 0x1p-32f));
  const VF y_in_range = hn::IfThenZeroElse(hn::Lt(x, hn::Set(d, -104.0f)), y);
  return hn::IfThenElse(hn::IsNaN(x), x, y_in_range);
}

void SoftmaxStep(float* st, size_t keys, size_t ld, float scale, float* row_max, float* row_sum,
                 float* alpha) {
  const DF d;
  const size_t L = hn::Lanes(d);
  const VF neg_inf = hn::Set(d, -HUGE_VALF), zero = hn::Zero(d), one = hn::Set(d, 1.0f);
  const VF vscale = hn::Set(d, scale);
  // A positive scale is applied where the scores are read, not stored back first: rounding is
  // monotone, so the max of the rounded scaled scores is the rounded scaled max of the raw ones,
  // and every bit is as if the scaled scores had been stored (one pass of stores fewer). Other
  // scales (negative or zero) scale in place first.
  const bool scale_on_read = scale > 0.0f && scale != 1.0f;
  for (size_t q = 0; q < ld; q += L) {
    VF mx = neg_inf;
    for (size_t t = 0; t < keys; ++t) {
      VF s = hn::LoadU(d, st + t * ld + q);
      if (scale != 1.0f && !scale_on_read) {
        s = hn::Mul(s, vscale);
        hn::StoreU(s, d, st + t * ld + q);
      }
      mx = hn::IfThenElse(hn::Gt(s, mx), s, mx);  // comparisons with NaN are false: NaN skipped
    }
    if (scale_on_read) mx = hn::Mul(mx, vscale);
    const VF m_old = hn::LoadU(d, row_max + q);
    const VF m_new = hn::Max(m_old, mx);
    // Nothing visible yet (max -inf): shift 0 so masked scores give 0 and NaN stays NaN.
    const VF shift = hn::IfThenElse(hn::Eq(m_new, neg_inf), zero, m_new);
    const VF a = hn::IfThenElse(hn::Eq(m_new, m_old), one, ExpNonPositive(d, hn::Sub(m_old, m_new)));
    VF sum = zero;
    for (size_t t = 0; t < keys; ++t) {
      VF s = hn::LoadU(d, st + t * ld + q);
      if (scale_on_read) s = hn::Mul(s, vscale);
      const VF e = ExpNonPositive(d, hn::Sub(s, shift));
      hn::StoreU(e, d, st + t * ld + q);
      sum = hn::Add(sum, e);
    }
    hn::StoreU(m_new, d, row_max + q);
    hn::StoreU(hn::MulAdd(hn::LoadU(d, row_sum + q), a, sum), d, row_sum + q);
    hn::StoreU(a, d, alpha + q);
  }
}

void ScaleRows(float* x, size_t ld, size_t rows, size_t cols, const float* alpha) {
  const DF d;
  const size_t L = hn::Lanes(d);
  for (size_t i = 0; i < rows; ++i) {
    if (alpha[i] == 1.0f) continue;
    const VF a = hn::Set(d, alpha[i]);
    for (size_t c = 0; c < cols; c += L) hn::StoreU(hn::Mul(hn::LoadU(d, x + i * ld + c), a), d, x + i * ld + c);
  }
}

// Highway 1.0.3 emulates f16 promotion on SSE4 and below without Inf/NaN handling: those
// targets convert f16 with the exact scalar routine instead.
constexpr bool kVectorF16 = HWY_TARGET <= HWY_AVX2 || HWY_ARCH_ARM;

// S: float, hwy::bfloat16_t or hwy::float16_t; E: the matching scalar storage type.
template <typename S, typename E>
HWY_INLINE bool Convert(const void* src, float* dst, size_t n, bool vector) {
  const DF d;
  const size_t L = hn::Lanes(d);
  const S* p = static_cast<const S*>(src);
  auto bad = hn::Zero(d);
  size_t i = 0;
  if (vector)
    for (; i + L <= n; i += L) {
      const VF v = LoadAsF32(d, p + i);
      hn::StoreU(v, d, dst + i);
      bad = hn::Or(bad, hn::VecFromMask(d, hn::Not(hn::IsFinite(v))));
    }
  bool finite = hn::AllTrue(d, hn::Eq(bad, hn::Zero(d)));
  const E* e = static_cast<const E*>(src);
  for (; i < n; ++i) finite &= std::isfinite(dst[i] = Elem<E>::load(e[i]));
  return finite;
}

bool ToF32(const void* src, DType dtype, float* dst, size_t n) {
  switch (dtype) {
    case DType::bf16: return Convert<hwy::bfloat16_t, bf16>(src, dst, n, true);
    case DType::f16: return Convert<hwy::float16_t, f16>(src, dst, n, kVectorF16);
    default: return Convert<float, float>(src, dst, n, true);
  }
}

// Row by row of dst: columns of dst first walked a whole query chunk of rows at a pitch of
// pad(dim_v) floats, which at 256 (1 KiB) maps every row to 4 L1 sets; f32 d = 241, Zen 4, took
// 555 ms against 411 row by row.
void AddTransposed(const float* src, size_t lds, size_t rows, size_t cols, float* dst, size_t ldd) {
  for (size_t j = 0; j < cols; ++j)
    for (size_t i = 0; i < rows; ++i) dst[j * ldd + i] += src[i * lds + j];
}

const char* TargetLabel() {
  switch (HWY_TARGET) {
#if HWY_ARCH_X86
    case HWY_AVX3_DL: return "avx512_dl";
    case HWY_AVX3: return "avx512";
    case HWY_AVX2: return "avx2";
    case HWY_SSE4: return "sse4";
    case HWY_SSSE3: return "ssse3";
#endif
#if HWY_ARCH_ARM
    case HWY_NEON: return "neon";
#endif
    case HWY_EMU128: return "emu128";
    default: return "scalar";
  }
}

extern const Kernels kKernels;
const Kernels kKernels = {TargetLabel(), HWY_TARGET, nullptr, &Gemm, &GemmBf16, &DotScores, &WalkScores, &WalkValues,
                          &SoftmaxStep,
                          &ScaleRows, &ToF32, &AddTransposed};

}  // namespace HWY_NAMESPACE
}  // namespace memattn::detail
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace memattn::detail {

// Every target this build compiled, best first (Highway's bit order: lower bit = better).
const std::vector<const Kernels*>& compiled_kernels() {
  static const std::vector<const Kernels*> list = [] {
    std::vector<const Kernels*> l;
#define MEMATTN_HWY_TARGET(ns) l.push_back(&ns::kKernels);
#include "cpu/hwy_targets.inc"
    return l;
  }();
  return list;
}

}  // namespace memattn::detail
#endif  // HWY_ONCE
