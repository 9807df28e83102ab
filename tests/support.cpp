// Test support implementation: dtype rounding written independently of the library, Ref64,
// Base_dt and the accuracy rule.
#include "support.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

namespace mt {
namespace {

// Round to `p` significant bits with round-half-even, `emin` the smallest normal exponent (the
// subnormal quantum below it) and overflow to Inf past the largest finite `maxv`.
double round_sig(double x, int p, int emin, double maxv) {
  if (!std::isfinite(x) || x == 0) return x;
  int e;
  std::frexp(x, &e);
  const int lead = std::max(e - 1, emin);
  const double quantum = std::ldexp(1.0, lead - (p - 1));
  const double r = std::nearbyint(x / quantum) * quantum;
  if (std::fabs(r) > maxv) return std::copysign(std::numeric_limits<double>::infinity(), x);
  return r;
}

const double kBf16Max = std::ldexp(255.0, 120);  // (2 - 2^-7) * 2^127
const double kF16Max = 65504.0;

}  // namespace

double round_to(DType dt, double x) {
  switch (dt) {
    case DType::f32: return double(float(x));
    case DType::bf16: return round_sig(x, 8, -126, kBf16Max);
    case DType::f16: return round_sig(x, 11, -14, kF16Max);
    case DType::u8: return x != 0 ? 1 : 0;
    default: return x;
  }
}

Buf::Buf(DType dt, std::vector<int64_t> sh) : dtype(dt), shape(std::move(sh)) {
  bytes.assign(size_t(numel()) * memattn::dtype_size(dt), 0);
}

int64_t Buf::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

double Buf::get(int64_t i) const {
  const unsigned char* p = bytes.data() + size_t(i) * memattn::dtype_size(dtype);
  switch (dtype) {
    case DType::f32: { float f; std::memcpy(&f, p, 4); return f; }
    case DType::f64: { double d; std::memcpy(&d, p, 8); return d; }
    case DType::u8: return *p;
    case DType::bf16: {
      uint16_t b; std::memcpy(&b, p, 2);
      const uint32_t u = uint32_t(b) << 16; float f; std::memcpy(&f, &u, 4); return f;
    }
    case DType::f16: { _Float16 h; std::memcpy(&h, p, 2); return double(h); }
  }
  return 0;
}

void Buf::set(int64_t i, double x) {
  unsigned char* p = bytes.data() + size_t(i) * memattn::dtype_size(dtype);
  const double r = round_to(dtype, x);
  switch (dtype) {
    case DType::f32: { float f = float(r); std::memcpy(p, &f, 4); break; }
    case DType::f64: std::memcpy(p, &r, 8); break;
    case DType::u8: *p = r != 0; break;
    case DType::bf16: {
      // r is exactly representable in bf16 (or NaN): the top half of its f32 bits.
      float f = float(r); uint32_t u; std::memcpy(&u, &f, 4);
      if (std::isnan(f)) u = 0x7fc00000u;
      const uint16_t b = uint16_t(u >> 16); std::memcpy(p, &b, 2); break;
    }
    case DType::f16: { _Float16 h = _Float16(float(r)); std::memcpy(p, &h, 2); break; }
  }
}

Tensor Buf::view() {
  Tensor t;
  t.data = bytes.data();
  t.dtype = dtype;
  t.ndim = int(shape.size());
  int64_t stride = 1;
  for (int i = t.ndim - 1; i >= 0; --i) {
    t.shape[i] = shape[i];
    t.strides[i] = stride;
    stride *= std::max<int64_t>(shape[i], 1);
  }
  return t;
}

std::vector<double> Buf::values() const {
  std::vector<double> r(static_cast<size_t>(numel()));
  for (int64_t i = 0; i < numel(); ++i) r[i] = get(i);
  return r;
}

void Buf::fill(double x) {
  for (int64_t i = 0; i < numel(); ++i) set(i, x);
}

void fill_randn(Buf& b, uint64_t seed, double sigma) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> n(0.0, sigma);
  for (int64_t i = 0; i < b.numel(); ++i) b.set(i, n(g));
}

void fill_uniform_int(Buf& b, uint64_t seed, int lo, int hi) {
  std::mt19937_64 g(seed);
  std::uniform_int_distribution<int> u(lo, hi);
  for (int64_t i = 0; i < b.numel(); ++i) b.set(i, u(g));
}

namespace {

// Index into a broadcast [B|1,H|1,Sq|1,Sk|1] row-major array.
double bcast(const std::vector<double>& a, const std::vector<int64_t>& sh, int64_t b, int64_t h,
             int64_t i, int64_t j) {
  const int64_t idx[4] = {b, h, i, j};
  int64_t off = 0;
  for (int d = 0; d < 4; ++d) off = off * sh[d] + (sh[d] == 1 ? 0 : idx[d]);
  return a[size_t(off)];
}

bool visible(const RefProblem& p, int64_t b, int64_t h, int64_t i, int64_t j) {
  const int64_t diag = p.align == memattn::Align::bottom_right ? p.s.Sk - p.s.Sq : 0;
  if (p.causal && j > i + diag) return false;
  if (p.window_left >= 0 && j < i + diag - p.window_left) return false;
  if (p.window_right >= 0 && j > i + diag + p.window_right) return false;
  if (!p.mask.empty() && bcast(p.mask, p.mask_shape, b, h, i, j) == 0) return false;
  return true;
}

// One naive pass; `rs` rounds scores, `rp` rounds probabilities, `ro` the output; `acc` rounds
// every accumulation step (identity in fp64, to f32 for the low-precision baselines).
template <typename Real, typename RS, typename RP, typename RA, typename RO>
RefResult naive_pass(const RefProblem& p, RS rs, RP rp, RA acc, RO ro) {
  const Shape& s = p.s;
  RefResult r;
  r.out.assign(size_t(s.B * s.Sq * s.Hq * s.Dv), 0.0);
  r.lse.assign(size_t(s.B * s.Hq * s.Sq), -std::numeric_limits<double>::infinity());
  const int64_t group = s.Hkv ? s.Hq / s.Hkv : 1;
  std::vector<Real> sc(size_t(s.Sk)), o(size_t(s.Dv));
  std::vector<char> vis(size_t(s.Sk));
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.Hq; ++h)
      for (int64_t i = 0; i < s.Sq; ++i) {
        const int64_t g = h / group;
        Real m = -std::numeric_limits<Real>::infinity();
        bool any = false;
        for (int64_t j = 0; j < s.Sk; ++j) {
          vis[j] = visible(p, b, h, i, j);
          if (!vis[j]) continue;
          any = true;
          Real d = 0;
          for (int64_t c = 0; c < s.D; ++c)
            d = acc(d + Real(p.q[((b * s.Sq + i) * s.Hq + h) * s.D + c]) *
                            Real(p.k[((b * s.Sk + j) * s.Hkv + g) * s.D + c]));
          Real x = acc(Real(p.scale) * d);
          if (!p.bias.empty()) x = acc(x + Real(bcast(p.bias, p.bias_shape, b, h, i, j)));
          sc[j] = rs(x);
          if (sc[j] > m) m = sc[j];
        }
        double* out = &r.out[size_t(((b * s.Sq + i) * s.Hq + h) * s.Dv)];
        if (!any) continue;  // fully masked: out 0, lse -inf
        const Real shift = std::isinf(m) && m < 0 ? Real(0) : m;
        Real l = 0;
        std::fill(o.begin(), o.end(), Real(0));
        bool nan = false;
        for (int64_t j = 0; j < s.Sk; ++j) {
          if (!vis[j]) continue;
          nan |= std::isnan(sc[j]);
          const Real e = acc(std::exp(sc[j] - shift));
          l = acc(l + e);
        }
        for (int64_t j = 0; j < s.Sk; ++j) {
          if (!vis[j]) continue;
          const Real pj = rp(acc(std::exp(sc[j] - shift) / (l == 0 ? Real(1) : l)));
          for (int64_t c = 0; c < s.Dv; ++c)
            o[c] = acc(o[c] + pj * Real(p.v[((b * s.Sk + j) * s.Hkv + g) * s.Dv + c]));
        }
        if (l == 0 && !nan) continue;  // every visible score -inf (bias): treated as fully masked
        for (int64_t c = 0; c < s.Dv; ++c) out[c] = double(ro(o[c]));
        r.lse[size_t((b * s.Hq + h) * s.Sq + i)] = double(m + std::log(l));
      }
  return r;
}

}  // namespace

RefResult reference64(const RefProblem& p) {
  const auto id = [](double x) { return x; };
  return naive_pass<double>(p, id, id, id, id);
}

RefResult reference_extended(const RefProblem& p) {
  const auto id = [](long double x) { return x; };
  return naive_pass<long double>(p, id, id, id, id);
}

RefResult baseline(const RefProblem& p, DType dt) {
  const auto f32 = [](double x) { return double(float(x)); };
  const auto id = [](double x) { return x; };
  if (dt == DType::f64) return reference64(p);
  if (dt == DType::f32) return naive_pass<double>(p, id, id, f32, f32);
  const auto lowp = [dt](double x) { return round_to(dt, x); };
  return naive_pass<double>(p, lowp, lowp, f32, lowp);
}

Case::Case(Shape sh, DType dt, uint64_t seed, double sigma)
    : s(sh), dtype(dt), q(dt, {sh.B, sh.Sq, sh.Hq, sh.D}), k(dt, {sh.B, sh.Sk, sh.Hkv, sh.D}),
      v(dt, {sh.B, sh.Sk, sh.Hkv, sh.Dv}), out(dt, {sh.B, sh.Sq, sh.Hq, sh.Dv}),
      lse(DType::f32, {sh.B, sh.Hq, sh.Sq}) {
  fill_randn(q, seed * 3 + 0, sigma);
  fill_randn(k, seed * 3 + 1, sigma);
  fill_randn(v, seed * 3 + 2, 1.0);
}

void Case::set_mask(std::vector<int64_t> shape, const std::vector<uint8_t>& values) {
  mask.emplace(DType::u8, shape);
  for (size_t i = 0; i < values.size(); ++i) mask->set(int64_t(i), values[i]);
  mask_view = mask->view();
  options.mask = &mask_view;
}

void Case::set_bias(std::vector<int64_t> shape, DType dt, const std::vector<double>& values) {
  bias.emplace(dt, shape);
  for (size_t i = 0; i < values.size(); ++i) bias->set(int64_t(i), values[i]);
  bias_view = bias->view();
  options.bias = &bias_view;
}

RefProblem Case::problem() const {
  RefProblem p;
  p.s = s;
  p.q = q.values();
  p.k = k.values();
  p.v = v.values();
  p.scale = options.scale ? double(*options.scale) : double(float(1.0 / std::sqrt(double(s.D))));
  p.causal = options.causal;
  p.align = options.align;
  p.window_left = options.window_left;
  p.window_right = options.window_right;
  if (mask) p.mask = mask->values(), p.mask_shape = mask->shape;
  if (bias) p.bias = bias->values(), p.bias_shape = bias->shape;
  return p;
}

void Case::run() {
  Tensor lse_view = lse.view();
  memattn::forward(q.view(), k.view(), v.view(), out.view(), &lse_view, options);
}

std::string accuracy_failure(const std::vector<double>& got, const std::vector<double>& ref,
                             const std::vector<double>& base, DType dt, double k) {
  if (got.size() != ref.size()) return "size mismatch";
  double err = 0, base_err = 0, floor = 0;
  size_t worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(ref[i]) != std::isnan(got[i])) {
      std::ostringstream s;
      s << "NaN parity broken at " << i << ": got " << got[i] << ", ref " << ref[i];
      return s.str();
    }
    if (std::isnan(ref[i])) continue;
    if (std::isinf(ref[i]) || std::isinf(got[i])) {
      if (got[i] != ref[i]) {
        std::ostringstream s;
        s << "infinity mismatch at " << i << ": got " << got[i] << ", ref " << ref[i];
        return s.str();
      }
      continue;
    }
    const double e = std::fabs(got[i] - ref[i]);
    if (e > err) err = e, worst = i;
    if (!std::isnan(base[i]) && !std::isinf(base[i])) base_err = std::max(base_err, std::fabs(base[i] - ref[i]));
    floor = std::max(floor, 2 * std::fabs(round_to(dt, ref[i] + 0.3) - 0.3 - ref[i]));
  }
  if (err <= k * base_err + floor) return "";
  std::ostringstream s;
  s.precision(17);
  s << "err " << err << " at " << worst << " (got " << got[worst] << ", ref " << ref[worst]
    << ") > " << k << " * base_err " << base_err << " + floor " << floor;
  return s.str();
}

void expect_accurate(Case& c, double k) {
  c.run();
  const RefProblem p = c.problem();
  // f64 outputs are judged against an 80-bit reference, with fp64 naive as their baseline.
  const RefResult ref = c.dtype == DType::f64 ? reference_extended(p) : reference64(p);
  const RefResult base = baseline(p, c.dtype);
  EXPECT_EQ(accuracy_failure(c.out_values(), ref.out, base.out, c.dtype, k), "")
      << "dtype " << memattn::dtype_name(c.dtype) << " algorithm "
      << memattn::algorithm_name(c.options.algorithm);
}

}  // namespace mt
