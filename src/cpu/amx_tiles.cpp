// AMX tile operations: the hardware backend's configuration (saving and giving back the caller's),
// release and usability check, and the scalar emulation of palette 1 and TDPBF16PS.
#include "cpu/amx_tiles.hpp"

#include <atomic>
#include <cfenv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common/half.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif
#if defined(__x86_64__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace memattn::detail {

void amx_fault(const char* what) {
  std::fprintf(stderr, "memattn: AMX tile fault: %s\n", what);
  std::abort();
}

namespace {

#if defined(__x86_64__) && defined(__GNUC__)
// CPUID.(7,0):EDX bit 22 is AMX-BF16 and bit 24 AMX-TILE; the OS saves the tile configuration and
// data when XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA) are set, which xgetbv may only be asked
// once CPUID.1:ECX bit 27 (OSXSAVE) says so.
bool cpu_has_amx_bf16() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid_count(7, 0, a, b, c, d);
  const bool amx = ((d >> 22) & 1u) && ((d >> 24) & 1u);
  __cpuid(1, a, b, c, d);
  if (!amx || !((c >> 27) & 1u)) return false;
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (lo & (3u << 17)) == (3u << 17);
}
#else
bool cpu_has_amx_bf16() { return false; }
#endif

// Linux (5.16 and later) hands out the tile data state per process on request; older kernels and
// other systems refuse, and the hardware path stays off.
bool tile_data_permitted() {
#if defined(__x86_64__) && defined(__linux__)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

void check_config(const TileConfig& cfg) {
  for (const TileShape& t : cfg.tile) {
    if (t.rows > kAmxRows || t.colsb > kAmxColsb) amx_fault("tile larger than palette 1 allows");
    if ((t.rows == 0) != (t.colsb == 0)) amx_fault("tile with rows but no columns, or columns but no rows");
  }
}

}  // namespace

bool amx_bf16_usable() {
  static const bool usable = cpu_has_amx_bf16() && tile_data_permitted();
  return usable;
}

namespace {

// What each configure still awaiting its release saved, innermost last: one thread's, as the tile
// state it saves is the thread's.
template <typename Saved>
class SavedConfigurations {
 public:
  void push(const Saved& s) {
    if (depth_ == kAmxNesting) amx_fault("configure nested deeper than kAmxNesting without release");
    saved_[depth_++] = s;
  }
  // False for a release with no configure pending: there is nothing to give back.
  bool pop(Saved& s) {
    if (depth_ == 0) return false;
    s = saved_[--depth_];
    return true;
  }

 private:
  Saved saved_[kAmxNesting];
  int depth_ = 0;
};

}  // namespace

#if defined(__x86_64__) && defined(__GNUC__)
namespace {

// The 64-byte operand of LDTILECFG and STTILECFG: palette, start row, then 16 column widths and 16
// row counts of which palette 1 uses 8; everything else zero. Palette 0 (STTILECFG's 64 zero bytes)
// means the thread had no configuration loaded.
struct alignas(64) TilecfgBytes {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
static_assert(sizeof(TilecfgBytes) == 64);

thread_local SavedConfigurations<TilecfgBytes> t_hardware_saved;

}  // namespace

void AmxHardware::configure(const TileConfig& cfg) {
  if (!amx_bf16_usable()) amx_fault("AMX used where the CPU or the OS does not offer it");
  check_config(cfg);
  TilecfgBytes callers;
  __asm__ volatile("sttilecfg %0" : "=m"(callers)::"memory");
  t_hardware_saved.push(callers);
  TilecfgBytes m{};
  m.palette = 1;
  for (int t = 0; t < kAmxTiles; ++t) m.colsb[t] = cfg.tile[t].colsb, m.rows[t] = cfg.tile[t].rows;
  __asm__ volatile("ldtilecfg %0" ::"m"(m) : "memory");
}

// LDTILECFG of the saved bytes puts back the configuration STTILECFG read (it was valid then, so it
// is now); TILERELEASE where there was none returns the thread to the state it had, no tile state.
void AmxHardware::release() {
  TilecfgBytes callers;
  if (t_hardware_saved.pop(callers) && callers.palette != 0) {
    __asm__ volatile("ldtilecfg %0" ::"m"(callers) : "memory");
  } else {
    __asm__ volatile("tilerelease" ::: "memory");
  }
}
#endif

// ---- The emulation ----

namespace {

// One thread's tile state, as the hardware keeps it per thread.
struct EmulatedTiles {
  TileConfig cfg;
  bool configured = false;
  uint8_t data[kAmxTiles][kAmxRows][kAmxColsb];
};
thread_local EmulatedTiles t_tiles;
thread_local SavedConfigurations<std::optional<TileConfig>> t_emulated_saved;
std::atomic<uint64_t> g_executed{0};

const TileShape& configured_shape(int t) {
  if (!t_tiles.configured) amx_fault("tile operation before LDTILECFG");
  if (t < 0 || t >= kAmxTiles) amx_fault("tile number outside palette 1");
  const TileShape& s = t_tiles.cfg.tile[t];
  if (s.rows == 0) amx_fault("tile operation on a tile the configuration leaves out");
  return s;
}

// TILELOADD and TILESTORED move whole 32-bit elements.
const TileShape& memory_shape(int t) {
  const TileShape& s = configured_shape(t);
  if (s.colsb % 4) amx_fault("tile load or store with row bytes not a multiple of 4");
  return s;
}

// TDPBF16PS neither consults nor updates MXCSR: the emulation computes in the default environment
// (round to nearest even, no DAZ or FTZ) and gives the caller's back as it was, flags included.
class DefaultFloatingPoint {
 public:
  DefaultFloatingPoint() {
    std::fegetenv(&saved_);
    std::fesetenv(FE_DFL_ENV);
  }
  ~DefaultFloatingPoint() { std::fesetenv(&saved_); }
  DefaultFloatingPoint(const DefaultFloatingPoint&) = delete;
  DefaultFloatingPoint& operator=(const DefaultFloatingPoint&) = delete;

 private:
  std::fenv_t saved_;
};

// TDPBF16PS treats denormal inputs as zero (DAZ) and flushes denormal results to zero (FTZ),
// keeping the sign.
float flush_denormal(float x) { return std::fpclassify(x) == FP_SUBNORMAL ? std::copysign(0.0f, x) : x; }
float bf16_operand(uint16_t bits) { return flush_denormal(to_float(bf16{bits})); }

}  // namespace

// The Intel SDM's operation of TDPBF16PS (Vol. 2B; the same text in Bochs' emulator,
// cpu/avx/amx.cc): per output element, two f32 accumulators start at zero; pair k adds
// a[2k] * b[2k] to the even one and a[2k+1] * b[2k+1] to the odd one, each a fused multiply-add
// (one rounding) with DAZ and FTZ, round to nearest even; then tmp = even + odd and c = c + tmp,
// two more rounded, flushed additions. The Intrinsics Guide's older text (two sequential FMAs
// into c itself) gives other bits; the SDM's is the one followed here. std::fma rounds once, as
// the hardware's FMA; the products of two bf16 values are exact in f32 unless they underflow, where
// the fused rounding still sees them exactly. A result is flushed when it is subnormal once
// rounded; an exact value less than half a subnormal step below 2^-126 rounds up to 2^-126 and is
// kept (whether the hardware judges tininess before or after rounding in that sliver is not
// documented).
float tdpbf16ps_element(float c, const uint16_t* a, const uint16_t* b, ptrdiff_t b_pair_stride, int pairs) {
  float even = 0.0f, odd = 0.0f;
  for (int k = 0; k < pairs; ++k) {
    const uint16_t* bk = b + k * b_pair_stride;
    even = flush_denormal(std::fma(bf16_operand(a[2 * k]), bf16_operand(bk[0]), even));
    odd = flush_denormal(std::fma(bf16_operand(a[2 * k + 1]), bf16_operand(bk[1]), odd));
  }
  return flush_denormal(flush_denormal(c) + flush_denormal(even + odd));
}

void AmxEmulated::configure(const TileConfig& cfg) {
  check_config(cfg);
  t_emulated_saved.push(configuration());
  t_tiles.cfg = cfg;
  t_tiles.configured = true;
  std::memset(t_tiles.data, 0, sizeof t_tiles.data);
}

std::optional<TileConfig> AmxEmulated::configuration() {
  if (!t_tiles.configured) return std::nullopt;
  return t_tiles.cfg;
}

// As the hardware backend: the configuration configure saved comes back with every tile zeroed,
// and a thread that had none is left with none.
void AmxEmulated::release() {
  std::optional<TileConfig> callers;
  t_emulated_saved.pop(callers);
  t_tiles.configured = callers.has_value();
  if (callers) t_tiles.cfg = *callers;
  std::memset(t_tiles.data, 0, sizeof t_tiles.data);
}

uint64_t AmxEmulated::executed() { return g_executed.load(std::memory_order_relaxed); }

void AmxEmulated::zero_tile(int t) {
  configured_shape(t);
  std::memset(t_tiles.data[t], 0, sizeof t_tiles.data[t]);
}

// TILELOADD: the configured rows and bytes, the rest of the tile zeroed.
void AmxEmulated::load_tile(int t, const void* p, ptrdiff_t stride) {
  const TileShape s = memory_shape(t);
  std::memset(t_tiles.data[t], 0, sizeof t_tiles.data[t]);
  for (int r = 0; r < s.rows; ++r)
    std::memcpy(t_tiles.data[t][r], static_cast<const uint8_t*>(p) + r * stride, s.colsb);
}

void AmxEmulated::store_tile(int t, void* p, ptrdiff_t stride) {
  const TileShape s = memory_shape(t);
  for (int r = 0; r < s.rows; ++r) std::memcpy(static_cast<uint8_t*>(p) + r * stride, t_tiles.data[t][r], s.colsb);
}

// The shape rules under which the SDM raises #UD, then the arithmetic element by element.
void AmxEmulated::dpbf16ps_tiles(int c, int a, int b) {
  const TileShape sc = configured_shape(c), sa = configured_shape(a), sb = configured_shape(b);
  if (c == a || c == b || a == b) amx_fault("TDPBF16PS with a repeated tile");
  if (sc.colsb % 4 || sa.colsb % 4 || sb.colsb % 4) amx_fault("TDPBF16PS row bytes not a multiple of 4");
  if (sc.colsb != sb.colsb || sa.colsb / 4 != sb.rows || sc.rows != sa.rows)
    amx_fault("TDPBF16PS tile shapes do not match");
  float out[kAmxRows][kAmxColsb / 4] = {};
  const DefaultFloatingPoint fp;
  for (int n = 0; n < sc.colsb / 4; ++n) {
    uint16_t bcol[kAmxRows][2];
    for (int k = 0; k < sb.rows; ++k) std::memcpy(bcol[k], t_tiles.data[b][k] + 4 * n, 4);
    for (int m = 0; m < sc.rows; ++m) {
      float acc;
      uint16_t arow[kAmxColsb / 2];
      std::memcpy(&acc, t_tiles.data[c][m] + 4 * n, 4);
      std::memcpy(arow, t_tiles.data[a][m], sizeof arow);
      out[m][n] = tdpbf16ps_element(acc, arow, bcol[0], 2, sa.colsb / 4);
    }
  }
  std::memset(t_tiles.data[c], 0, sizeof t_tiles.data[c]);
  g_executed.fetch_add(1, std::memory_order_relaxed);
  for (int m = 0; m < sc.rows; ++m) std::memcpy(t_tiles.data[c][m], out[m], size_t(sc.colsb));
}

}  // namespace memattn::detail
