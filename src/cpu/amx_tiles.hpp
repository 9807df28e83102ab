// The AMX bf16 tile operations behind one static interface, with two backends: the hardware
// instructions (AmxHardware) and an exact scalar emulation of their semantics (AmxEmulated).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

namespace memattn::detail {

// Palette 1: 8 tiles of at most 16 rows of 64 bytes.
constexpr int kAmxTiles = 8;
constexpr int kAmxRows = 16;
constexpr int kAmxColsb = 64;

struct TileShape {
  uint8_t rows = 0;    // 0 (with colsb 0): the tile is not configured
  uint16_t colsb = 0;  // bytes per row
};
struct TileConfig {
  TileShape tile[kAmxTiles];
};

// True where this CPU has AMX-TILE and AMX-BF16, the OS saves tile state (XCR0 bits 17 and 18)
// and the kernel granted this process the tile data permission (asked once, on the first call).
bool amx_bf16_usable();

// Both backends offer, for compile-time tile numbers T, C, A, B:
//   configure(cfg)           save the thread's tile configuration (STTILECFG), then load cfg
//                            (LDTILECFG: every tile zeroed)
//   zero<T>()                tile T = 0
//   load<T>(p, stride)       tile T row r = the configured colsb bytes at p + r * stride
//   store<T>(p, stride)      the reverse
//   dpbf16ps<C, A, B>()      C (f32 rows) += A (bf16 rows) x B (bf16 pairs): TDPBF16PS
//   release()                give back what the matching configure saved: load that
//                            configuration again (every tile zeroed), or, where the thread had
//                            none, drop the thread's tile state (TILERELEASE)
// A thread configures before its first tile operation and releases when it is done, so that no
// thread keeps the tile state (and its cost at every context switch) past its use, and a caller
// that uses AMX itself finds its tile configuration (palette, rows and bytes per row of every
// tile) as it left it. Its tile data is not kept: LDTILECFG zeroes every tile, and memattn's own
// tile operations overwrite them anyway. The x86-64 System V psABI makes tmm0-tmm7 volatile (not
// preserved across calls), so a caller may keep nothing in them across a call, to memattn or to
// any other function. configure/release pairs nest (up to kAmxNesting deep), each release giving
// back what its own configure saved.
constexpr int kAmxNesting = 4;

// Stops the process with `what`: a tile operation that the hardware would fault on (#UD, #GP).
[[noreturn]] void amx_fault(const char* what);

#if defined(__x86_64__) && defined(__GNUC__)
// The instructions through inline assembly rather than GCC 12's _tile_* macros: those paste their
// tile argument as text (a template parameter cannot be passed) and their tileloadd tells the
// compiler of no memory it reads. Every statement here clobbers memory, which orders it against
// the stores that fill the operands and the loads that read the results. The assembler takes AMX
// instructions whatever the compiler's target flags, so no target attribute is needed.
struct AmxHardware {
  static void configure(const TileConfig& cfg);
  template <int T>
  static void zero() {
    __asm__ volatile("tilezero %%tmm%c0" ::"i"(T) : "memory");
  }
  template <int T>
  static void load(const void* p, ptrdiff_t stride) {
    __asm__ volatile("{tileloadd (%0,%1,1), %%tmm%c2|tileloadd %%tmm%c2, [%0+%1*1]}" ::"r"(p), "r"(stride), "i"(T)
                     : "memory");
  }
  template <int T>
  static void store(void* p, ptrdiff_t stride) {
    __asm__ volatile("{tilestored %%tmm%c2, (%0,%1,1)|tilestored [%0+%1*1], %%tmm%c2}" ::"r"(p), "r"(stride), "i"(T)
                     : "memory");
  }
  template <int C, int A, int B>
  static void dpbf16ps() {
    static_assert(C != A && C != B && A != B, "TDPBF16PS faults (#UD) on repeated tiles");
    __asm__ volatile("{tdpbf16ps %%tmm%c2, %%tmm%c1, %%tmm%c0|tdpbf16ps %%tmm%c0, %%tmm%c1, %%tmm%c2}"
                     ::"i"(C), "i"(A), "i"(B)
                     : "memory");
  }
  static void release();
};
#else
// No AMX outside x86-64: amx_bf16_usable() is false and nothing may call these.
struct AmxHardware {
  static void configure(const TileConfig&) { amx_fault("AMX on a CPU without it"); }
  template <int T>
  static void zero() {}
  template <int T>
  static void load(const void*, ptrdiff_t) {}
  template <int T>
  static void store(void*, ptrdiff_t) {}
  template <int C, int A, int B>
  static void dpbf16ps() {}
  static void release() {}
};
#endif

// The emulation: tile registers and configuration are per thread (thread_local), configure and
// release save and give back the thread's configuration as the hardware backend does, every shape
// rule the hardware checks is checked (amx_fault), and TDPBF16PS reproduces the instruction's
// arithmetic bit for bit (see tdpbf16ps_element in amx_tiles.cpp).
struct AmxEmulated {
  static void configure(const TileConfig& cfg);
  // The thread's loaded configuration, nullopt where it has none (what STTILECFG would store).
  static std::optional<TileConfig> configuration();
  template <int T>
  static void zero() {
    zero_tile(T);
  }
  template <int T>
  static void load(const void* p, ptrdiff_t stride) {
    load_tile(T, p, stride);
  }
  template <int T>
  static void store(void* p, ptrdiff_t stride) {
    store_tile(T, p, stride);
  }
  template <int C, int A, int B>
  static void dpbf16ps() {
    static_assert(C != A && C != B && A != B, "TDPBF16PS faults (#UD) on repeated tiles");
    dpbf16ps_tiles(C, A, B);
  }
  static void release();
  // TDPBF16PS instructions emulated so far by all threads: lets a test see that a call ran here.
  static uint64_t executed();

  static void zero_tile(int t);
  static void load_tile(int t, const void* p, ptrdiff_t stride);
  static void store_tile(int t, void* p, ptrdiff_t stride);
  static void dpbf16ps_tiles(int c, int a, int b);
};

// One output element of TDPBF16PS: c + sum_k a[2k] b[2k] + a[2k+1] b[2k+1] over `pairs` pairs of
// bf16 bits, in the instruction's order and rounding (exposed for the tests).
float tdpbf16ps_element(float c, const uint16_t* a, const uint16_t* b, ptrdiff_t b_pair_stride, int pairs);

}  // namespace memattn::detail
