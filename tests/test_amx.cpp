// AMX bf16: the TDPBF16PS emulation against a literal model of the SDM's pseudo-code, the hardware
// against the emulation (only where AMX runs), the family's scores and P V on hand-built chunks
// against double loops, whole forward calls on the emulated family against the fp64 reference, and
// the caller's own tile configuration given back by every call (hardware and emulation).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cfenv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/half.hpp"
#include "cpu/amx_tiles.hpp"
#include "cpu/family_amx.hpp"
#include "cpu/kernels.hpp"
#include "support.hpp"

#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

using namespace memattn::detail;
using memattn::bf16;
using memattn::bits_to_float;
using memattn::float_to_bits;
using memattn::to_bf16;
using memattn::to_float;

namespace {

// ---- A literal model of the SDM's TDPBF16PS, written apart from the emulation ----

// a * b + c rounded once to f32 without fmaf: the product of two floats is exact in double, TwoSum
// gives the exact sum as s + e, and rounding to odd at 53 bits then to nearest even at 24 bits
// rounds correctly (53 >= 24 + 2), subnormal results included.
float model_fma(float a, float b, float c) {
  const double x = double(a) * double(b), y = double(c);
  if (!std::isfinite(a) || !std::isfinite(b) || !std::isfinite(c)) return float(x + y);
  const double s = x + y, yy = s - x, xx = s - yy;
  const double e = (x - xx) + (y - yy);
  uint64_t u;
  std::memcpy(&u, &s, 8);
  if (e == 0 || (u & 1)) return float(s);
  return float(std::nextafter(s, e > 0 ? INFINITY : -INFINITY));
}

// DAZ and FTZ alike: an f32 with a zero exponent field becomes a zero of its sign.
float flush(float x) {
  const uint32_t u = float_to_bits(x);
  return (u & 0x7f800000u) == 0 ? bits_to_float(u & 0x80000000u) : x;
}
float bf16_in(uint16_t b) { return flush(bits_to_float(uint32_t(b) << 16)); }

// C[m][n] (m < rows, n < cols) for A rows of 2 * pairs bf16 and B rows of cols bf16 pairs, as the
// SDM writes it: per row, temp[] := 0; for k, for n: the even and the odd FMA; then per n
// tmp := temp[2n] + temp[2n+1]; C := C + tmp. DAZ on every input, FTZ on every result.
void model_tdpbf16ps(std::vector<float>& c, const std::vector<uint16_t>& a, const std::vector<uint16_t>& b,
                     int rows, int pairs, int cols) {
  for (int m = 0; m < rows; ++m) {
    float temp[32] = {};
    for (int k = 0; k < pairs; ++k)
      for (int n = 0; n < cols; ++n) {
        temp[2 * n] = flush(model_fma(bf16_in(a[m * 2 * pairs + 2 * k]), bf16_in(b[k * 2 * cols + 2 * n]), temp[2 * n]));
        temp[2 * n + 1] =
            flush(model_fma(bf16_in(a[m * 2 * pairs + 2 * k + 1]), bf16_in(b[k * 2 * cols + 2 * n + 1]), temp[2 * n + 1]));
      }
    for (int n = 0; n < cols; ++n) {
      const float tmp = flush(model_fma(temp[2 * n], 1.0f, temp[2 * n + 1]));
      c[m * cols + n] = flush(model_fma(flush(c[m * cols + n]), 1.0f, tmp));
    }
  }
}

// ---- Random tiles with the values that test DAZ, FTZ, overflow and NaN ----

enum class Mix { edges, specials, tiny };

struct Draw {
  std::mt19937_64 rng;
  Mix mix;
  double uniform() { return std::uniform_real_distribution<double>(0, 1)(rng); }
  int sign() { return uniform() < 0.5 ? -1 : 1; }
  // edges: mostly O(1) values; some tiny (products below 2^-126), subnormal, zero and huge
  // (products overflow). specials: the same with infinities and NaN. tiny: values near 2^-63, whose
  // products and partial sums straddle 2^-126, so that every DAZ and FTZ step shows.
  float value() {
    const double u = uniform();
    if (mix == Mix::tiny) return float(sign() * std::ldexp(1.0 + uniform(), -61 - int(uniform() * 5)));
    const bool specials = mix == Mix::specials;
    if (u < 0.60) return float(std::normal_distribution<double>(0, 1)(rng));
    if (u < 0.75) return float(sign() * std::ldexp(1.0 + uniform(), -60 - int(uniform() * 70)));
    if (u < 0.82) return float(sign() * std::ldexp(uniform(), -126));  // subnormal in f32 and bf16
    if (u < 0.88) return sign() * 0.0f;
    if (u < 0.96 || !specials) return float(sign() * std::ldexp(1.0 + uniform(), 60 + int(uniform() * 67)));
    return u < 0.98 ? sign() * INFINITY : std::numeric_limits<float>::quiet_NaN();
  }
  uint16_t bf16_bits() { return to_bf16(value()).bits; }
};

// One TDPBF16PS on tiles C (rows x cols f32), A (rows x 2 pairs bf16), B (pairs x 2 cols bf16),
// through backend Ops: configure, load (row strides wider than the tiles), multiply, store.
struct TileCase {
  int rows, pairs, cols;
  std::vector<float> c;
  std::vector<uint16_t> a, b;
  TileCase(int rows_, int pairs_, int cols_, uint64_t seed, Mix mix) : rows(rows_), pairs(pairs_), cols(cols_) {
    Draw d{std::mt19937_64(seed), mix};
    // C as small as the tiny products, so that they are not lost in it.
    for (int i = 0; i < rows * cols; ++i) c.push_back(mix == Mix::tiny ? d.value() * 0x1p-62f : d.value());
    for (int i = 0; i < rows * 2 * pairs; ++i) a.push_back(d.bf16_bits());
    for (int i = 0; i < pairs * 2 * cols; ++i) b.push_back(d.bf16_bits());
  }
};

template <typename Ops>
std::vector<float> run_tile(const TileCase& t) {
  constexpr int C = 1, A = 3, B = 6;  // any three tiles
  TileConfig cfg;
  cfg.tile[C] = {uint8_t(t.rows), uint16_t(4 * t.cols)};
  cfg.tile[A] = {uint8_t(t.rows), uint16_t(4 * t.pairs)};
  cfg.tile[B] = {uint8_t(t.pairs), uint16_t(4 * t.cols)};
  // Rows 80 bytes apart: the loads must take only the configured bytes of each row.
  constexpr int kPitch = 80;
  std::vector<uint8_t> cm(size_t(t.rows) * kPitch, 0xee), am(size_t(t.rows) * kPitch, 0xff), bm(size_t(t.pairs) * kPitch, 0xff);
  for (int r = 0; r < t.rows; ++r) std::memcpy(&cm[size_t(r) * kPitch], &t.c[size_t(r) * t.cols], size_t(4 * t.cols));
  for (int r = 0; r < t.rows; ++r) std::memcpy(&am[size_t(r) * kPitch], &t.a[size_t(r) * 2 * t.pairs], size_t(4 * t.pairs));
  for (int r = 0; r < t.pairs; ++r) std::memcpy(&bm[size_t(r) * kPitch], &t.b[size_t(r) * 2 * t.cols], size_t(4 * t.cols));
  Ops::configure(cfg);
  Ops::template load<C>(cm.data(), kPitch);
  Ops::template load<A>(am.data(), kPitch);
  Ops::template load<B>(bm.data(), kPitch);
  Ops::template dpbf16ps<C, A, B>();
  std::vector<uint8_t> out(cm.size(), 0xee);
  Ops::template store<C>(out.data(), kPitch);
  Ops::release();
  std::vector<float> c(t.c.size());
  for (int r = 0; r < t.rows; ++r) {
    std::memcpy(&c[size_t(r) * t.cols], &out[size_t(r) * kPitch], size_t(4 * t.cols));
    for (int x = 4 * t.cols; x < kPitch; ++x) EXPECT_EQ(out[size_t(r) * kPitch + size_t(x)], 0xee) << "store past colsb";
  }
  return c;
}

// "" when every element holds the same bits (any NaN matching any NaN), else the first difference.
std::string tile_difference(const std::vector<float>& got, const std::vector<float>& want) {
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i]) && std::isnan(want[i])) continue;
    if (float_to_bits(got[i]) != float_to_bits(want[i]))
      return "element " + std::to_string(i) + ": " + std::to_string(got[i]) + " (bits " + std::to_string(float_to_bits(got[i])) +
             ") vs " + std::to_string(want[i]) + " (bits " + std::to_string(float_to_bits(want[i])) + ")";
  }
  return "";
}

struct Dims {
  int rows, pairs, cols;
};
constexpr Dims kTileDims[] = {{16, 16, 16}, {7, 6, 10}, {1, 1, 1}, {16, 3, 5}, {9, 16, 16}};

}  // namespace

TEST(Amx, EmulationMatchesSdmModel) {
  uint64_t seed = 1;
  for (Mix mix : {Mix::edges, Mix::specials, Mix::tiny})
    for (const Dims& d : kTileDims)
      for (int rep = 0; rep < 20; ++rep) {
        const TileCase t(d.rows, d.pairs, d.cols, seed++, mix);
        std::vector<float> want = t.c;
        model_tdpbf16ps(want, t.a, t.b, t.rows, t.pairs, t.cols);
        ASSERT_EQ(tile_difference(run_tile<AmxEmulated>(t), want), "")
            << d.rows << "x" << d.pairs << "x" << d.cols << " seed " << seed - 1;
      }
}

// The SDM sums the even and the odd products apart and adds their sum to C once; two FMAs into C
// in turn (the Intrinsics Guide's older text) would give 1 here, each 2^-24 tying back to 1.
TEST(Amx, EmulationSumsPairsBeforeAddingToC) {
  const uint16_t half_ulp_root = to_bf16(0x1p-12f).bits;
  TileCase t(1, 1, 1, 0, Mix::edges);
  t.c = {1.0f};
  t.a = {half_ulp_root, half_ulp_root};
  t.b = {half_ulp_root, half_ulp_root};
  EXPECT_EQ(run_tile<AmxEmulated>(t)[0], 1.0f + 0x1p-23f);
}

TEST(Amx, EmulationFlushesDenormals) {
  TileCase t(1, 1, 1, 0, Mix::edges);
  // Input denormals are zero: a subnormal bf16 times 1, plus a subnormal C, gives +0.
  t.c = {0x1p-130f};
  t.a = {to_bf16(0x1p-128f).bits, 0};
  t.b = {to_bf16(1.0f).bits, 0};
  EXPECT_EQ(float_to_bits(run_tile<AmxEmulated>(t)[0]), 0u);
  // Products below 2^-126 flush to zeros of their sign: even = odd = -0, so C = -0 + (-0 + -0) = -0
  // where gradual underflow would give -2^-127.
  t.c = {-0.0f};
  t.a = {to_bf16(-0x1p-64f).bits, to_bf16(-0x1p-64f).bits};
  t.b = {to_bf16(0x1p-64f).bits, to_bf16(0x1p-64f).bits};
  EXPECT_EQ(float_to_bits(run_tile<AmxEmulated>(t)[0]), 0x80000000u);
}

// TDPBF16PS ignores MXCSR: a caller's rounding mode, FTZ and DAZ change no bit of the emulation's
// results, and the caller gets its floating-point state back.
TEST(Amx, EmulationIgnoresCallerFloatingPointState) {
  const TileCase t(16, 16, 16, 5, Mix::tiny);
  const std::vector<float> want = run_tile<AmxEmulated>(t);
  std::fenv_t saved;
  std::fegetenv(&saved);
  std::fesetround(FE_TOWARDZERO);
#if defined(__x86_64__)
  _mm_setcsr(_mm_getcsr() | 0x8040u);  // FTZ and DAZ
  const unsigned state = _mm_getcsr() & ~0x3fu;
#endif
  const std::vector<float> got = run_tile<AmxEmulated>(t);
#if defined(__x86_64__)
  EXPECT_EQ(_mm_getcsr() & ~0x3fu, state);
#endif
  EXPECT_EQ(std::fegetround(), FE_TOWARDZERO);
  std::fesetenv(&saved);
  EXPECT_EQ(tile_difference(got, want), "");
}

TEST(Amx, EmulationFaultsLikeHardware) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  TileConfig cfg;
  cfg.tile[0] = {16, 64};
  cfg.tile[1] = {16, 64};
  cfg.tile[2] = {8, 64};  // B must have A's 16 pairs as rows
  const auto mismatched = [&] {
    AmxEmulated::configure(cfg);
    AmxEmulated::dpbf16ps<0, 1, 2>();
  };
  EXPECT_DEATH(mismatched(), "shapes do not match");
  EXPECT_DEATH(AmxEmulated::zero<0>(), "before LDTILECFG");
  cfg.tile[3] = {17, 64};
  EXPECT_DEATH(AmxEmulated::configure(cfg), "larger than palette 1");
}

TEST(Amx, HardwareMatchesEmulationBitwise) {
  if (!amx_bf16_usable()) GTEST_SKIP() << "no usable AMX-BF16 on this machine (CPU, XCR0 or kernel permission)";
  uint64_t seed = 1000;
  for (Mix mix : {Mix::edges, Mix::specials, Mix::tiny})
    for (const Dims& d : kTileDims)
      for (int rep = 0; rep < 20; ++rep) {
        const TileCase t(d.rows, d.pairs, d.cols, seed++, mix);
        ASSERT_EQ(tile_difference(run_tile<AmxHardware>(t), run_tile<AmxEmulated>(t)), "")
            << d.rows << "x" << d.pairs << "x" << d.cols << " seed " << seed - 1;
      }
}

// ---- The family on hand-built chunks ----

namespace {

struct RigShape {
  int64_t rows, keys, dim, dim_v, query_chunk, key_chunk;
  int64_t elem_stride = 1;    // q, k, v elements this far apart (1: contiguous rows)
  bool reverse_keys = false;  // k and v rows in memory from the last key to the first
};

std::string describe(const RigShape& s) {
  return "rows " + std::to_string(s.rows) + " keys " + std::to_string(s.keys) + " dim " + std::to_string(s.dim) + " dim_v " +
         std::to_string(s.dim_v) + " chunks " + std::to_string(s.query_chunk) + "/" + std::to_string(s.key_chunk) +
         " stride " + std::to_string(s.elem_stride) + (s.reverse_keys ? " reversed" : "");
}

constexpr float kGuard = 12345.0f;  // past st and acc: must survive every call
constexpr size_t kGuardFloats = 256;

// The operands of one chunk (query rows 0..rows, keys 0..keys of batch 0, head 0), the driver's
// slices and the family's, every scratch byte first poisoned with NaN.
struct Rig {
  RigShape sh;
  Params p;
  std::vector<bf16> q, k, v;
  std::vector<float> st, acc;
  std::vector<uint8_t> live;
  std::vector<unsigned char> work;
  FlashSlices w{};
  AmxSlices s{};
  size_t cqp, dvp;

  Rig(const RigShape& shape, uint64_t seed) : sh(shape) {
    cqp = pad_floats(size_t(sh.query_chunk)), dvp = pad_floats(size_t(sh.dim_v));
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> n01(0, 1);
    const auto fill = [&](std::vector<bf16>& x, int64_t n) {
      x.assign(size_t(n * sh.elem_stride), bf16{0xffff});
      for (int64_t i = 0; i < n; ++i) x[size_t(i * sh.elem_stride)] = to_bf16(n01(rng));
    };
    fill(q, sh.rows * sh.dim), fill(k, sh.keys * sh.dim), fill(v, sh.keys * sh.dim_v);
    p.batch = 1, p.seq_q = sh.rows, p.seq_k = sh.keys, p.heads_q = p.heads_kv = 1, p.group = 1;
    p.dim = sh.dim, p.dim_v = sh.dim_v, p.dtype = memattn::DType::bf16;
    p.q = view(q.data(), sh.rows, sh.dim, false), p.k = view(k.data(), sh.keys, sh.dim, sh.reverse_keys);
    p.v = view(v.data(), sh.keys, sh.dim_v, sh.reverse_keys);
    p.query_chunk = sh.query_chunk, p.key_chunk = sh.key_chunk;
    p.kernels = &select_kernels(nullptr);
    st.assign(size_t(sh.key_chunk) * cqp + kGuardFloats, kGuard);
    acc.assign(size_t(sh.query_chunk) * dvp + kGuardFloats, kGuard);
    std::fill_n(st.begin(), size_t(sh.key_chunk) * cqp, std::numeric_limits<float>::quiet_NaN());
    live.assign(size_t(sh.key_chunk), 1);
    w.st = st.data(), w.acc = acc.data(), w.live = live.data();
    Carver sizer;
    AmxSlices::carve(p, sizer);
    work.assign(sizer.used() + kAlign, 0xff);
    Carver carver(work.data() + (kAlign - reinterpret_cast<uintptr_t>(work.data()) % kAlign));
    s = AmxSlices::carve(p, carver);
  }

  // `count` rows of `width` elements (elem_stride apart), stored first to last or last to first.
  View view(bf16* data, int64_t count, int64_t width, bool reverse) const {
    View x;
    x.data = data, x.dtype = memattn::DType::bf16;
    const int64_t row = width * sh.elem_stride;
    if (reverse) x.data = data + (count - 1) * row;
    x.stride[0] = count * row, x.stride[1] = reverse ? -row : row, x.stride[2] = row, x.stride[3] = sh.elem_stride;
    return x;
  }
  double qv(int64_t r, int64_t i) const { return to_float(*p.q.at<bf16>(0, r, 0, i)); }
  double kv(int64_t t, int64_t i) const { return to_float(*p.k.at<bf16>(0, t, 0, i)); }
  double vv(int64_t t, int64_t i) const { return to_float(*p.v.at<bf16>(0, t, 0, i)); }
  void set_k_row(int64_t t, float x) {
    for (int64_t i = 0; i < sh.dim; ++i) *const_cast<bf16*>(p.k.at<bf16>(0, t, 0, i)) = to_bf16(x);
  }
  void set_v(int64_t t, int64_t i, float x) { *const_cast<bf16*>(p.v.at<bf16>(0, t, 0, i)) = to_bf16(x); }

  Chunk chunk(bool full, bool all_read) const { return {0, 0, 0, 0, sh.rows, sh.rows, 0, sh.keys, full, all_read, live.data()}; }
  float& st_at(int64_t t, int64_t r) { return st[size_t(t) * cqp + size_t(r)]; }
  float& acc_at(int64_t r, int64_t c) { return acc[size_t(r) * dvp + size_t(c)]; }
  bool guards_intact() const {
    for (size_t i = st.size() - kGuardFloats; i < st.size(); ++i)
      if (st[i] != kGuard) return false;
    for (size_t i = acc.size() - kGuardFloats; i < acc.size(); ++i)
      if (acc[i] != kGuard) return false;
    return true;
  }
};

// |error| of a length-n recursive f32 sum in two chains plus two additions, with room to spare.
double sum_bound(int64_t n, double magnitude) { return double(n + 4) * 0x1p-24 * magnitude + 1e-30; }

template <typename Ops>
void expect_scores(Rig& rig, const Chunk& c) {
  AmxFamily<Ops> fam(rig.p, rig.w, rig.s);
  fam.load_queries(c);
  fam.scores(c);
  for (int64_t t = 0; t < c.keys; ++t)
    for (int64_t r = 0; r < int64_t(rig.cqp); ++r) {
      const float got = rig.st_at(t, r);
      ASSERT_TRUE(std::isfinite(got)) << "st[" << t << "][" << r << "]";
      if (r >= c.rows || !c.key_read(t)) continue;
      double exact = 0, magnitude = 0;
      for (int64_t i = 0; i < rig.sh.dim; ++i) {
        exact += rig.qv(r, i) * rig.kv(t, i);
        magnitude += std::fabs(rig.qv(r, i) * rig.kv(t, i));
      }
      ASSERT_LE(std::fabs(got - exact), sum_bound(rig.sh.dim, magnitude)) << "st[" << t << "][" << r << "]";
    }
  EXPECT_TRUE(rig.guards_intact());
}

// Probabilities in st (0 for keys no row reads), random accumulators, then acc += P V against the
// sum in double of the bf16-rounded probabilities times the values.
template <typename Ops>
void expect_values(Rig& rig, const Chunk& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u01(0, 1);
  std::normal_distribution<float> n01(0, 1);
  for (int64_t t = 0; t < c.keys; ++t)
    for (int64_t r = 0; r < int64_t(rig.cqp); ++r) rig.st_at(t, r) = c.key_read(t) || r >= c.rows ? u01(rng) : 0.0f;
  for (int64_t r = 0; r < rig.sh.query_chunk; ++r)
    for (int64_t col = 0; col < int64_t(rig.dvp); ++col) rig.acc_at(r, col) = r < c.rows ? n01(rng) : -7.0f;
  const std::vector<float> before = rig.acc;
  AmxFamily<Ops> fam(rig.p, rig.w, rig.s);
  ASSERT_TRUE(fam.accumulate_values(c));
  for (int64_t r = 0; r < rig.sh.query_chunk; ++r)
    for (int64_t col = 0; col < rig.sh.dim_v; ++col) {
      const float got = rig.acc_at(r, col);
      if (r >= c.rows) {
        ASSERT_EQ(got, -7.0f) << "acc row " << r << " past the chunk's rows was written";
        continue;
      }
      double exact = before[size_t(r) * rig.dvp + size_t(col)], magnitude = std::fabs(exact);
      for (int64_t t = 0; t < c.keys; ++t) {
        if (!c.key_read(t)) continue;
        const double term = double(to_float(to_bf16(rig.st_at(t, r)))) * rig.vv(t, col);
        exact += term, magnitude += std::fabs(term);
      }
      ASSERT_LE(std::fabs(got - exact), sum_bound(c.keys, magnitude)) << "acc[" << r << "][" << col << "]";
    }
  EXPECT_TRUE(rig.guards_intact());
}

// Runs check<Ops>() for the emulation, and for the hardware where it runs.
template <template <typename> class Check, typename... Args>
void for_backends(Args&&... args) {
  {
    SCOPED_TRACE("AmxEmulated");
    Check<AmxEmulated>::run(args...);
  }
  if (amx_bf16_usable()) {
    SCOPED_TRACE("AmxHardware");
    Check<AmxHardware>::run(args...);
  }
}

const int64_t kDims[] = {1, 3, 31, 33, 64, 100, 128, 256};

template <typename Ops>
struct ScoresAndValues {
  static void run(const RigShape& sh, uint64_t seed) {
    SCOPED_TRACE(describe(sh));
    for (bool full : {true, false}) {
      Rig rig(sh, seed);
      expect_scores<Ops>(rig, rig.chunk(full, true));
      expect_values<Ops>(rig, rig.chunk(full, true), seed + 1);
    }
  }
};

}  // namespace

TEST(AmxFamily, ScoresAndValuesOddShapes) {
  uint64_t seed = 10;
  for (int64_t d : kDims) {
    // Odd rows and keys inside larger chunks, chunks not multiples of 16, and whole tiles.
    for_backends<ScoresAndValues>(RigShape{37, 45, d, d, 40, 50}, seed++);
    for_backends<ScoresAndValues>(RigShape{5, 7, d, 100 - d % 64, 5, 7}, seed++);
    for_backends<ScoresAndValues>(RigShape{32, 64, d, d, 32, 64}, seed++);
  }
}

TEST(AmxFamily, ScoresAndValuesStridedAndReversed) {
  uint64_t seed = 100;
  for (int64_t d : {32, 33, 64}) {
    for_backends<ScoresAndValues>(RigShape{19, 48, d, 31, 24, 48, 2, false}, seed++);  // gathered rows
    for_backends<ScoresAndValues>(RigShape{19, 48, d, 31, 24, 48, 1, true}, seed++);   // negative row pitch
    for_backends<ScoresAndValues>(RigShape{16, 32, d, 16, 16, 32, 1, false}, seed++);  // K in place
  }
}

namespace {

// Keys no row reads hold NaN in K and V: they must stay unread (zero scores, no effect on acc).
template <typename Ops>
struct UnreadKeys {
  static void run(const RigShape& sh) {
    SCOPED_TRACE(describe(sh));
    Rig rig(sh, 7);
    for (int64_t t = 0; t < sh.keys; t += 3) {
      rig.live[size_t(t)] = 0;
      rig.set_k_row(t, NAN);
      for (int64_t i = 0; i < sh.dim_v; ++i) rig.set_v(t, i, NAN);
    }
    expect_scores<Ops>(rig, rig.chunk(false, false));
    expect_values<Ops>(rig, rig.chunk(false, false), 8);
  }
};

// A NaN or an infinity among the values read: a boundary chunk returns false and leaves acc as it
// was; a full chunk multiplies it in (every row sees every key).
template <typename Ops>
struct NonFiniteValues {
  static void run(float bad) {
    const RigShape sh{21, 35, 40, 24, 21, 35};
    Rig rig(sh, 9);
    rig.set_v(17, 5, bad);
    for (int64_t t = 0; t < sh.keys; ++t)
      for (int64_t r = 0; r < int64_t(rig.cqp); ++r) rig.st_at(t, r) = 0.25f;
    for (int64_t r = 0; r < sh.query_chunk; ++r)
      for (int64_t col = 0; col < int64_t(rig.dvp); ++col) rig.acc_at(r, col) = 1.0f;
    const std::vector<float> before = rig.acc;
    {
      AmxFamily<Ops> fam(rig.p, rig.w, rig.s);
      EXPECT_FALSE(fam.accumulate_values(rig.chunk(false, true)));
    }
    EXPECT_EQ(std::memcmp(rig.acc.data(), before.data(), before.size() * sizeof(float)), 0);
    AmxFamily<Ops> fam(rig.p, rig.w, rig.s);
    EXPECT_TRUE(fam.accumulate_values(rig.chunk(true, true)));
    for (int64_t r = 0; r < sh.rows; ++r) {
      EXPECT_EQ(std::isnan(rig.acc_at(r, 5)), std::isnan(bad)) << r;
      EXPECT_EQ(std::isinf(rig.acc_at(r, 5)), std::isinf(bad)) << r;
      EXPECT_TRUE(std::isfinite(rig.acc_at(r, 4))) << r;
    }
  }
};

}  // namespace

TEST(AmxFamily, KeysNoRowReadsAreNotRead) {
  for_backends<UnreadKeys>(RigShape{13, 40, 33, 20, 16, 40});
  for_backends<UnreadKeys>(RigShape{13, 48, 64, 20, 16, 48});
}

TEST(AmxFamily, NonFiniteValues) {
  for_backends<NonFiniteValues>(std::numeric_limits<float>::quiet_NaN());
  for_backends<NonFiniteValues>(-INFINITY);
}

namespace {

// The family's results on the hardware and on the emulation hold the same bits.
template <typename Ops>
struct FamilyBits {
  static std::vector<float> run(const RigShape& sh, uint64_t seed) {
    Rig rig(sh, seed);
    std::vector<float> out;
    {
      AmxFamily<Ops> fam(rig.p, rig.w, rig.s);
      const Chunk c = rig.chunk(true, true);
      fam.load_queries(c);
      fam.scores(c);
      out.assign(rig.st.begin(), rig.st.begin() + int64_t(sh.keys) * int64_t(rig.cqp));
      for (float& x : rig.st) x = std::isnan(x) ? 0.5f : x / 64;
      std::fill_n(rig.acc.begin(), size_t(sh.query_chunk) * rig.dvp, 0.5f);
      fam.accumulate_values(c);
    }
    out.insert(out.end(), rig.acc.begin(), rig.acc.begin() + int64_t(sh.rows) * int64_t(rig.dvp));
    return out;
  }
};

}  // namespace

TEST(AmxFamily, HardwareMatchesEmulationBitwise) {
  if (!amx_bf16_usable()) GTEST_SKIP() << "no usable AMX-BF16 on this machine (CPU, XCR0 or kernel permission)";
  uint64_t seed = 300;
  for (int64_t d : kDims) {
    const RigShape sh{37, 45, d, d, 40, 50};
    EXPECT_EQ(tile_difference(FamilyBits<AmxHardware>::run(sh, seed), FamilyBits<AmxEmulated>::run(sh, seed)), "")
        << describe(sh);
    ++seed;
  }
}

// The AVX-512 transposition of P gives the portable one's bits on every f32 pattern: NaN and
// infinities, subnormals, ties, and tiles cut short by the keys.
TEST(AmxFamily, ProbabilityRowsVectorMatchesPortable) {
  if (!pack_probability_rows_vector()) GTEST_SKIP() << "no AVX-512F on this CPU";
  std::mt19937_64 rng(77);
  for (size_t keys : {1, 2, 31, 32, 33, 64, 70})
    for (size_t rows : {16, 48}) {
      const size_t ld = rows + 16, p_row = pad_tile_depth(keys) + 32;
      std::vector<float> st(keys * ld);
      for (float& x : st) {
        uint32_t u = uint32_t(rng());
        if (rng() % 4 == 0) u = (u & 0xffff0000u) | 0x8000u;  // halfway between two bf16
        x = bits_to_float(u);
      }
      std::vector<uint16_t> vec(rows * p_row, 0xaaaa), port(rows * p_row, 0xaaaa);
      pack_probability_rows(st.data(), ld, keys, rows, vec.data(), p_row, true);
      pack_probability_rows(st.data(), ld, keys, rows, port.data(), p_row, false);
      ASSERT_EQ(vec, port) << "keys " << keys << " rows " << rows;
      for (size_t r = 0; r < rows; ++r)
        for (size_t t = 0; t < keys; ++t) ASSERT_EQ(port[r * p_row + t], to_bf16(st[t * ld + r]).bits);
    }
}

// ---- Whole forward calls on the emulated family ----

namespace {

// Runs c on flash with MEMATTN_FAMILY=amx_bf16_emulated; false when the planner does not offer
// that family (a build whose driver does not dispatch to it yet).
bool run_emulated_family(mt::Case& c) {
  mt::ScopedEnv env("MEMATTN_FAMILY", "amx_bf16_emulated");
  c.options.algorithm = memattn::Algorithm::flash;
  const uint64_t before = AmxEmulated::executed();
  try {
    c.out.fill(std::numeric_limits<double>::quiet_NaN());
    c.lse.fill(std::numeric_limits<double>::quiet_NaN());
    c.run();
  } catch (const memattn::Error& e) {
    if (e.code() == memattn::ErrorCode::unsupported) return false;
    throw;
  }
  EXPECT_GT(AmxEmulated::executed(), before) << "the call did not run on the emulated AMX family";
  return true;
}

// TESTPLAN's primary rule and the per-element conditioning check against Ref64 and Base_bf16,
// and the LSE within xformers' bf16 tolerance (exactly -inf for a row that sees no key).
void expect_emulated_family_accurate(mt::Case& c) {
  SCOPED_TRACE(mt::describe(c));
  if (!run_emulated_family(c)) GTEST_SKIP() << "the planner does not offer amx_bf16_emulated in this build";
  const mt::RefProblem p = c.problem();
  const mt::RefResult ref = mt::reference64(p), base = mt::baseline(p, c.dtype);
  const std::vector<double> got = c.out_values();
  EXPECT_EQ(mt::accuracy_failure(got, ref.out, base.out, c.dtype), "");
  EXPECT_EQ(mt::conditioning_failure(got, p, ref, c.dtype), "");
  for (int64_t x = 0; x < c.lse.numel(); ++x) {
    const double want = ref.lse[size_t(x)], lse = c.lse.get(x);
    if (std::isinf(want)) EXPECT_EQ(lse, want) << "lse " << x;
    else EXPECT_LE(std::fabs(lse - want), 2e-4 * std::max(1.0, std::fabs(want))) << "lse " << x;
  }
}

mt::Case bf16_case(mt::Shape s, uint64_t seed, int64_t query_chunk, int64_t key_chunk) {
  mt::Case c(s, memattn::DType::bf16, seed);
  c.options.query_chunk = query_chunk, c.options.key_chunk = key_chunk;
  return c;
}

}  // namespace

TEST(AmxForward, PlainOddShapes) {
  for (int64_t d : kDims) {
    mt::Case c = bf16_case({2, 37, 45, 2, 2, d, 100 - d % 64}, 20 + uint64_t(d), 16, 24);
    expect_emulated_family_accurate(c);
  }
}

TEST(AmxForward, CausalAndWindow) {
  for (memattn::Align align : {memattn::Align::top_left, memattn::Align::bottom_right}) {
    mt::Case c = bf16_case({1, 40, 70, 2, 1, 64, 64}, 31, 16, 32);
    c.options.causal = true, c.options.align = align;
    expect_emulated_family_accurate(c);
    mt::Case w = bf16_case({1, 50, 50, 1, 1, 33, 40}, 32, 8, 16);
    w.options.window_left = 5, w.options.window_right = 3, w.options.align = align;
    expect_emulated_family_accurate(w);
  }
}

TEST(AmxForward, MaskAndBias) {
  const mt::Shape s{2, 33, 47, 2, 1, 48, 40};
  mt::Case c = bf16_case(s, 41, 8, 16);
  std::vector<uint8_t> m = mt::random_mask(size_t(s.B * s.Hq * s.Sq * s.Sk), 42, 0.6);
  std::fill_n(m.begin() + (1 * s.Hq * s.Sq + 3) * s.Sk, s.Sk, uint8_t(0));  // row (1, 0, 3) sees nothing
  c.set_mask({s.B, s.Hq, s.Sq, s.Sk}, m);
  expect_emulated_family_accurate(c);
  mt::Case b = bf16_case(s, 43, 16, 32);
  b.set_bias({1, s.Hq, s.Sq, s.Sk}, memattn::DType::f32, mt::randn_values(size_t(s.Hq * s.Sq * s.Sk), 44));
  b.options.causal = true;
  expect_emulated_family_accurate(b);
}

TEST(AmxForward, GroupedQueryHeadsAndThreads) {
  mt::Case c = bf16_case({2, 29, 61, 4, 2, 100, 128}, 51, 16, 32);
  c.options.num_threads = 3;
  expect_emulated_family_accurate(c);
  mt::Case h = bf16_case({1, 64, 96, 4, 1, 128, 64}, 52, 0, 0);  // the planner's chunks
  expect_emulated_family_accurate(h);
}

// ---- The caller's tile state across a call ----

namespace {

// A caller's own configuration, unlike memattn's (every tile 16 x 64): odd shapes, tiles left out.
TileConfig callers_tiles() {
  TileConfig cfg;
  cfg.tile[0] = {3, 12};
  cfg.tile[2] = {16, 64};
  cfg.tile[5] = {7, 40};
  cfg.tile[7] = {1, 4};
  return cfg;
}

TileConfig other_tiles() {
  TileConfig cfg;
  cfg.tile[1] = {5, 20};
  cfg.tile[6] = {16, 8};
  return cfg;
}

std::string describe(const std::optional<TileConfig>& cfg) {
  if (!cfg) return "no configuration";
  std::string s;
  for (int t = 0; t < kAmxTiles; ++t)
    s += " tmm" + std::to_string(t) + " " + std::to_string(cfg->tile[t].rows) + "x" + std::to_string(cfg->tile[t].colsb);
  return s;
}

// The 64 bytes LDTILECFG reads and STTILECFG writes, handled by the test itself rather than through
// the code under test.
struct alignas(64) TilecfgBytes {
  uint8_t palette = 0, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TilecfgBytes) == 64);

TilecfgBytes palette1(const TileConfig& cfg) {
  TilecfgBytes m;
  m.palette = 1;
  for (int t = 0; t < kAmxTiles; ++t) m.colsb[t] = cfg.tile[t].colsb, m.rows[t] = cfg.tile[t].rows;
  return m;
}

std::string hex(const TilecfgBytes& m) {
  const auto* b = reinterpret_cast<const uint8_t*>(&m);
  std::string s;
  for (size_t i = 0; i < sizeof m; ++i) {
    static const char digits[] = "0123456789abcdef";
    s += digits[b[i] >> 4], s += digits[b[i] & 15];
    if (i % 16 == 15 && i + 1 < sizeof m) s += ' ';
  }
  return s;
}

#if defined(__x86_64__) && defined(__GNUC__)
TilecfgBytes stored_tilecfg() {
  TilecfgBytes m;
  __asm__ volatile("sttilecfg %0" : "=m"(m)::"memory");
  return m;
}
void load_tilecfg(const TilecfgBytes& m) { __asm__ volatile("ldtilecfg %0" ::"m"(m) : "memory"); }
void release_tiles() { __asm__ volatile("tilerelease" ::: "memory"); }
#else
TilecfgBytes stored_tilecfg() { return {}; }
void load_tilecfg(const TilecfgBytes&) {}
void release_tiles() {}
#endif

// A bf16 forward call with more than a decode step's queries, so that it runs the tile family.
mt::Case tile_family_case(int threads) {
  mt::Case c({2, 64, 96, 2, 1, 64, 64}, memattn::DType::bf16, 61);
  c.options.num_threads = threads;
  return c;
}

bool runs_on_amx_hardware(const mt::Case& c) {
  return std::string(memattn::tile_family(memattn::DType::bf16, c.options)) == "amx_bf16";
}

}  // namespace

// A caller that uses AMX itself gets its tile configuration back from a forward call that ran on
// the tiles, whether the call's items ran on the caller's thread alone or on several.
TEST(AmxCallerState, ForwardGivesBackCallersTileConfiguration) {
  if (!amx_bf16_usable()) GTEST_SKIP() << "no usable AMX-BF16 on this machine (CPU, XCR0 or kernel permission)";
  for (int threads : {1, 0}) {
    mt::Case c = tile_family_case(threads);
    if (!runs_on_amx_hardware(c)) GTEST_SKIP() << "bf16 forward does not run on amx_bf16 here (MEMATTN_FAMILY?)";
    const TilecfgBytes callers = palette1(callers_tiles());
    load_tilecfg(callers);
    c.run();
    const TilecfgBytes after = stored_tilecfg();
    release_tiles();
    EXPECT_EQ(hex(after), hex(callers)) << threads << " threads (0: all)";
  }
}

// A thread that held no tile state before the call holds none after it: no configuration kept, so
// no tile state saved at its every context switch.
TEST(AmxCallerState, ForwardLeavesNoTileStateWhereCallerHadNone) {
  if (!amx_bf16_usable()) GTEST_SKIP() << "no usable AMX-BF16 on this machine (CPU, XCR0 or kernel permission)";
  for (int threads : {1, 0}) {
    mt::Case c = tile_family_case(threads);
    if (!runs_on_amx_hardware(c)) GTEST_SKIP() << "bf16 forward does not run on amx_bf16 here (MEMATTN_FAMILY?)";
    release_tiles();
    c.run();
    EXPECT_EQ(hex(stored_tilecfg()), hex(TilecfgBytes{})) << threads << " threads (0: all)";
  }
}

// The OpenMP threads that ran the call's items (the caller's pool, which the regions below reuse)
// end with no tile state, as they started, while the caller, thread 0 of each region, keeps its
// configuration. Linux copies a thread's tile configuration into the threads it creates, so the
// pool is made before the caller loads its configuration: workers the call itself created would
// start with the caller's, and end with it.
TEST(AmxCallerState, ForwardLeavesNoTileStateOnItsWorkers) {
  if (!amx_bf16_usable()) GTEST_SKIP() << "no usable AMX-BF16 on this machine (CPU, XCR0 or kernel permission)";
  const int threads = std::max(2, omp_get_max_threads());
  mt::Case c = tile_family_case(threads);
  if (!runs_on_amx_hardware(c)) GTEST_SKIP() << "bf16 forward does not run on amx_bf16 here (MEMATTN_FAMILY?)";
  std::vector<std::string> seen(static_cast<size_t>(threads));
  release_tiles();
#pragma omp parallel num_threads(threads)
  seen[size_t(omp_get_thread_num())] = hex(stored_tilecfg());
  for (size_t t = 0; t < seen.size(); ++t) ASSERT_EQ(seen[t], hex(TilecfgBytes{})) << "before the call, OpenMP thread " << t;
  const TilecfgBytes callers = palette1(callers_tiles());
  load_tilecfg(callers);
  c.run();
#pragma omp parallel num_threads(threads)
  seen[size_t(omp_get_thread_num())] = hex(stored_tilecfg());
  release_tiles();
  EXPECT_EQ(seen[0], hex(callers)) << "the caller's thread";
  for (size_t t = 1; t < seen.size(); ++t) EXPECT_EQ(seen[t], hex(TilecfgBytes{})) << "OpenMP thread " << t;
}

// configure/release pairs nest: each release gives back what its own configure found, down to no
// configuration at all; on the hardware (read by STTILECFG) and on the emulation alike. Each runs on
// a fresh thread, which starts with no tile state.
TEST(AmxCallerState, NestedConfigureGivesBackEachLevel) {
  std::thread([] {
    EXPECT_EQ(describe(AmxEmulated::configuration()), describe(std::nullopt));
    AmxEmulated::configure(callers_tiles());
    AmxEmulated::configure(other_tiles());
    EXPECT_EQ(describe(AmxEmulated::configuration()), describe(other_tiles()));
    AmxEmulated::release();
    EXPECT_EQ(describe(AmxEmulated::configuration()), describe(callers_tiles())) << "emulated, after the inner release";
    AmxEmulated::release();
    EXPECT_EQ(describe(AmxEmulated::configuration()), describe(std::nullopt)) << "emulated, after the outer release";
  }).join();
  if (!amx_bf16_usable()) GTEST_SKIP() << "no usable AMX-BF16 on this machine (CPU, XCR0 or kernel permission)";
  std::thread([] {
    EXPECT_EQ(hex(stored_tilecfg()), hex(TilecfgBytes{})) << "a fresh thread";
    AmxHardware::configure(callers_tiles());
    AmxHardware::configure(other_tiles());
    EXPECT_EQ(hex(stored_tilecfg()), hex(palette1(other_tiles())));
    AmxHardware::release();
    EXPECT_EQ(hex(stored_tilecfg()), hex(palette1(callers_tiles()))) << "hardware, after the inner release";
    AmxHardware::release();
    EXPECT_EQ(hex(stored_tilecfg()), hex(TilecfgBytes{})) << "hardware, after the outer release";
  }).join();
}

// The emulated family keeps the same promise to a caller of the emulation: its configuration back
// after the call, none where it had none.
TEST(AmxCallerState, EmulatedForwardGivesBackCallersConfiguration) {
  mt::Case c = tile_family_case(1);
  AmxEmulated::configure(callers_tiles());
  const bool ran = run_emulated_family(c);
  const std::optional<TileConfig> after = AmxEmulated::configuration();
  AmxEmulated::release();
  if (!ran) GTEST_SKIP() << "the planner does not offer amx_bf16_emulated in this build";
  EXPECT_EQ(describe(after), describe(callers_tiles()));
  ASSERT_TRUE(run_emulated_family(c));
  EXPECT_EQ(describe(AmxEmulated::configuration()), describe(std::nullopt));
}
