// bf16 and IEEE f16 storage types with exact, portable conversions to and from f32.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace memattn {

struct bf16 {
  uint16_t bits;
};
struct f16 {
  uint16_t bits;
};

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float to_float(bf16 x) { return bits_to_float(uint32_t(x.bits) << 16); }

// Round to nearest even; NaN stays NaN (quiet bit forced so truncation cannot make it Inf).
inline bf16 to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{uint16_t(u >> 16)};
}

inline float to_float(f16 x) {
  const uint32_t sign = uint32_t(x.bits & 0x8000u) << 16;
  const uint32_t exp = (x.bits >> 10) & 0x1fu;
  const uint32_t man = x.bits & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));
  if (exp != 0) return bits_to_float(sign | ((exp + 112u) << 23) | (man << 13));
  // Subnormal: man * 2^-24 is exact in f32.
  const float mag = float(man) * 0x1p-24f;
  return sign ? -mag : mag;
}

// Round to nearest even, overflow to Inf, underflow through the subnormals to signed zero.
inline f16 to_f16(float f) {
  const uint32_t u = float_to_bits(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t au = u & 0x7fffffffu;
  if (au > 0x7f800000u) return f16{uint16_t(sign | 0x7e00u | ((au >> 13) & 0x3ffu))};
  if (au >= 0x477ff000u) return f16{uint16_t(sign | 0x7c00u)};  // rounds to >= 65520: Inf
  if (au < 0x38800000u) {                                        // below 2^-14: subnormal or zero
    // Adding 0.5 (2^-1) aligns the value's bits so that the FPU does the even rounding at 2^-24.
    const float r = bits_to_float(au) + 0.5f;
    return f16{uint16_t(sign | uint16_t(float_to_bits(r) - float_to_bits(0.5f)))};
  }
  const uint32_t rounded = au + 0xfffu + ((au >> 13) & 1u);
  return f16{uint16_t(sign | uint16_t((rounded - (112u << 23)) >> 13))};
}

// Uniform element access for kernels templated on the storage type.
template <typename T>
struct Elem;
template <>
struct Elem<float> {
  static float load(float x) { return x; }
  static float store(float x) { return x; }
};
template <>
struct Elem<double> {
  static double load(double x) { return x; }
  static double store(double x) { return x; }
};
template <>
struct Elem<bf16> {
  static float load(bf16 x) { return to_float(x); }
  static bf16 store(float x) { return to_bf16(x); }
};
template <>
struct Elem<f16> {
  static float load(f16 x) { return to_float(x); }
  static f16 store(float x) { return to_f16(x); }
};

}  // namespace memattn
