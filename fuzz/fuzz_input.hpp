// Decodes libFuzzer bytes into one attention problem: shapes, strided storage, dtypes, options, masks, biases, values.
#pragma once

#include <fuzzer/FuzzedDataProvider.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "memattn/memattn.hpp"

namespace fuzz {

using memattn::DType;
using memattn::Tensor;

// A failed check: libFuzzer sees the abort, saves the input and reports it.
[[noreturn]] inline void fail(const std::string& what) {
  std::fprintf(stderr, "fuzz check failed: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}
inline void check(bool ok, const std::string& what) {
  if (!ok) fail(what);
}

// ---- Element encodings, written here so that the reference does not trust the library's ----

inline size_t element_bytes(DType dt) {
  switch (dt) {
    case DType::bf16: case DType::f16: return 2;
    case DType::f64: case DType::i64: return 8;
    case DType::u8: return 1;
    default: return 4;  // f32, and the storage of an invalid dtype the library must refuse
  }
}

inline double f16_to_double(uint16_t h) {
  const int e = h >> 10 & 31, m = h & 1023;
  const double sign = h & 0x8000 ? -1.0 : 1.0;
  if (e == 31) return m ? std::numeric_limits<double>::quiet_NaN() : sign * INFINITY;
  return sign * (e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25));
}

// Round to nearest even; the rounding mode only decides which value is stored, and the reference
// reads the stored value back, so it needs no particular care.
inline uint16_t f16_from_double(double x) {
  if (std::isnan(x)) return 0x7e00;
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const double a = std::fabs(x);
  if (a >= 65520.0) return sign | 0x7c00;
  if (a < 0x1p-14) return sign | uint16_t(std::nearbyint(a * 0x1p24));
  int e;
  double m = std::nearbyint(std::frexp(a, &e) * 2048);  // a = m / 1024 * 2^(e-1)
  if (m == 2048) m = 1024, ++e;
  if (e - 1 + 15 >= 31) return sign | 0x7c00;
  return uint16_t(sign | (e - 1 + 15) << 10 | (int(m) - 1024));
}

inline double load(DType dt, const unsigned char* p) {
  switch (dt) {
    case DType::f64: { double d; std::memcpy(&d, p, 8); return d; }
    case DType::bf16: {
      uint16_t h; std::memcpy(&h, p, 2);
      const uint32_t u = uint32_t(h) << 16;
      float f; std::memcpy(&f, &u, 4); return f;
    }
    case DType::f16: { uint16_t h; std::memcpy(&h, p, 2); return f16_to_double(h); }
    case DType::u8: return *p;
    case DType::i32: { int32_t i; std::memcpy(&i, p, 4); return i; }
    case DType::i64: { int64_t i; std::memcpy(&i, p, 8); return double(i); }
    default: { float f; std::memcpy(&f, p, 4); return f; }
  }
}

inline void store(DType dt, unsigned char* p, double x) {
  switch (dt) {
    case DType::f64: std::memcpy(p, &x, 8); return;
    case DType::bf16: {
      const float f = float(x);
      uint32_t u; std::memcpy(&u, &f, 4);
      const uint16_t h = std::isnan(f) ? 0x7fc0 : uint16_t((u + 0x7fff + (u >> 16 & 1)) >> 16);
      std::memcpy(p, &h, 2); return;
    }
    case DType::f16: { const uint16_t h = f16_from_double(x); std::memcpy(p, &h, 2); return; }
    case DType::u8: *p = x != 0; return;
    case DType::i32: { const int32_t i = int32_t(x); std::memcpy(p, &i, 4); return; }
    case DType::i64: { const int64_t i = int64_t(x); std::memcpy(p, &i, 8); return; }
    default: { const float f = float(x); std::memcpy(p, &f, 4); return; }
  }
}

// Half the gap from 1 to the next value of dt.
inline double unit_roundoff(DType dt) {
  return dt == DType::f64 ? 0x1p-53 : dt == DType::bf16 ? 0x1p-8 : dt == DType::f16 ? 0x1p-11 : 0x1p-24;
}

// ---- Strided views over their own byte stores ----

using Bytes = std::vector<unsigned char>;
constexpr unsigned char kPoison = 0xff;  // NaN in every float dtype: unwritten output or padding read shows up

// Visits every index of the view's shape (nothing when a dim is 0 or ndim is out of 0..4).
template <typename Fn>
void for_each_index(const Tensor& t, Fn&& fn) {
  if (t.ndim < 0 || t.ndim > 4) return;
  std::array<int64_t, 4> i{0, 0, 0, 0};
  for (int d = 0; d < t.ndim; ++d)
    if (t.shape[size_t(d)] <= 0) return;
  while (true) {
    fn(i);
    int d = t.ndim - 1;
    for (; d >= 0; --d) {
      if (++i[size_t(d)] < t.shape[size_t(d)]) break;
      i[size_t(d)] = 0;
    }
    if (d < 0) return;
  }
}

// A tensor view and the store it lives in (shared when operands are slots of one packed buffer).
struct Operand {
  std::shared_ptr<Bytes> store;
  Tensor view;
  bool present = false;

  int64_t offset(const std::array<int64_t, 4>& i) const {
    int64_t o = 0;
    for (int d = 0; d < view.ndim; ++d) o += i[size_t(d)] * view.strides[size_t(d)];
    return o;
  }
  const unsigned char* at(const std::array<int64_t, 4>& i) const {
    return static_cast<const unsigned char*>(view.data) + offset(i) * int64_t(element_bytes(view.dtype));
  }
  double get(const std::array<int64_t, 4>& i) const { return load(view.dtype, at(i)); }
  void set(const std::array<int64_t, 4>& i, double x) const {
    fuzz::store(view.dtype, const_cast<unsigned char*>(at(i)), x);
  }
};

// Values: a seeded magnitude-controlled fill plus a few special values placed by the input.
struct ValueSource {
  uint64_t state;
  int exponent;
  std::vector<std::pair<uint32_t, double>> specials;

  explicit ValueSource(FuzzedDataProvider& in) : state(in.ConsumeIntegral<uint32_t>() | 1) {
    static constexpr int kExponents[] = {0, 0, 0, 2, 4, -4, -20, 8, 16, 30, 60, 127};
    exponent = kExponents[in.ConsumeIntegralInRange<size_t>(0, std::size(kExponents) - 1)];
    static constexpr double kSpecial[] = {NAN, INFINITY, -INFINITY, 3.0e38, -3.0e38, 65504.0, 0x1p-126,
                                          0x1p-140, -0.0, 1e4, -1e4, 0x1p-20};
    for (int n = in.ConsumeIntegralInRange(0, 3); n > 0; --n)
      specials.emplace_back(in.ConsumeIntegral<uint8_t>(),
                            kSpecial[in.ConsumeIntegralInRange<size_t>(0, std::size(kSpecial) - 1)]);
  }
  double next(uint32_t index) {
    for (const auto& [where, value] : specials)
      if (where == index) return value;
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;  // xorshift64
    const double u = double(state >> 11) * 0x1p-53 * 2 - 1;
    return std::ldexp(u, exponent);
  }
};

// Byte layout of a view: memory order, padding, flipped and zero strides, and rare raw strides
// (which may overlap or interleave, and must then be refused for outputs).
inline Operand make_operand(FuzzedDataProvider& in, DType dtype, int ndim, std::array<int64_t, 4> shape,
                            bool negative_strides = true) {
  Operand op;
  op.present = true;
  op.view.dtype = dtype, op.view.ndim = ndim, op.view.shape = shape;
  const uint8_t kind = in.ConsumeIntegral<uint8_t>();
  static constexpr int kOrders[4][4] = {{0, 1, 2, 3}, {0, 2, 1, 3}, {3, 2, 1, 0}, {2, 0, 1, 3}};
  const int* order = kOrders[kind & 3];
  const int64_t pad = kind >> 2 & 3;
  int64_t step = 1;
  for (int r = 3; r >= 0; --r) {  // innermost in memory first
    const int d = order[r];
    if (d >= ndim) continue;
    op.view.strides[size_t(d)] = step;
    step = step * std::max<int64_t>(shape[size_t(d)], 1) + (r % 2 ? pad : 0);
  }
  if ((kind & 16) && negative_strides) {
    const uint8_t flip = in.ConsumeIntegral<uint8_t>();
    for (int d = 0; d < ndim; ++d)
      if (flip >> d & 1) op.view.strides[size_t(d)] = -op.view.strides[size_t(d)];
  }
  if (kind & 32) {
    const uint8_t zero = in.ConsumeIntegral<uint8_t>();
    for (int d = 0; d < ndim; ++d)
      if (zero >> d & 1) op.view.strides[size_t(d)] = 0;
  }
  if ((kind & 64) && ndim > 0)
    op.view.strides[in.ConsumeIntegralInRange<size_t>(0, size_t(ndim - 1))] = in.ConsumeIntegralInRange<int64_t>(negative_strides ? -9 : 0, 9);
  int64_t lo = 0, hi = 0, numel = 1;
  for (int d = 0; d < ndim; ++d) {
    const int64_t extent = (shape[size_t(d)] - 1) * op.view.strides[size_t(d)];
    (extent < 0 ? lo : hi) += extent;
    numel *= shape[size_t(d)];
  }
  if (numel == 0 && (kind & 128)) return op;  // a null pointer is allowed on an empty tensor
  const size_t elem = element_bytes(dtype);
  op.store = std::make_shared<Bytes>(size_t(hi - lo + 1) * elem, kPoison);
  op.view.data = op.store->data() + size_t(-lo) * elem;
  return op;
}

inline void fill(const Operand& op, ValueSource& values) {
  uint32_t n = 0;
  for_each_index(op.view, [&](const auto& i) { op.set(i, values.next(n++)); });
}


// How the batch reaches the library: dense [B, S, H, D] operands through forward/backward, packed
// sequences with cu_seqlens (varlen), or new queries against a key/value cache
// (attention_with_kvcache, forward only).
enum class Mode { dense, varlen, kvcache };

// One sequence of the batch as the reference reads it: where its query rows lie in q (and out,
// lse, dq), and where each of its keys lies in k and v (and dk, dv): a batch and row (dense and
// varlen) or a page and row (paged cache). Its lengths give its causal and window diagonal.
struct Sequence {
  int64_t q_batch = 0, q_row = 0, len_q = 0;
  std::vector<std::array<int64_t, 2>> keys;
  int64_t len_k() const { return int64_t(keys.size()); }
};

// One decoded call: operands, options and what to run. Not copyable: options point into it.
struct Problem {
  DType dtype = DType::f32;    // of q and out (and of k and v unless a KV cache dtype is decoded)
  int64_t B = 1, Sq = 1, Sk = 1, Hq = 1, Hkv = 1, D = 1, Dv = 1;  // the dense shapes; sequences hold the rest
  Operand q, k, v, out, lse, mask, bias, dout, dq, dk, dv, dbias;
  Operand alibi, sinks, dsinks, cu_seqlens_q, cu_seqlens_k, seqlens_k, block_table;
  memattn::Options options;
  Mode mode = Mode::dense;
  std::vector<Sequence> sequences;
  // Set when the decoder made the call invalid on purpose (what the contract refuses): a call that
  // succeeds anyway is a finding. backward_refusal covers what only the backward refuses.
  std::string refusal, backward_refusal;
  int threads_other = 1;       // the second run's thread count, for the bitwise comparison
  int workspace_mode = 0;      // 0: the library allocates; 1: exact caller workspace; 2: one byte short
  size_t workspace_misalign = 0;
  bool backward = false;
  bool huge = false;           // stride-0 shapes near 2^62: only sizing calls are made
  std::string target_storage;

  Problem() = default;
  Problem(const Problem&) = delete;
  Problem& operator=(const Problem&) = delete;

  std::vector<const Operand*> inputs() const {
    return {&q, &k, &v, &mask, &bias, &dout, &alibi, &sinks, &cu_seqlens_q, &cu_seqlens_k, &seqlens_k, &block_table};
  }
  std::vector<const Operand*> forward_outputs() const { return {&out, &lse}; }
  std::vector<const Operand*> backward_outputs() const { return {&dq, &dk, &dv, &dbias, &dsinks}; }
  std::vector<const Operand*> all() const {
    std::vector<const Operand*> ops = inputs();
    for (const Operand* op : {&out, &lse, &dq, &dk, &dv, &dbias, &dsinks}) ops.push_back(op);
    return ops;
  }
};

// Decodes the dense problem (the layout every seed was written for; fuzz_modes.hpp decodes what
// follows it). Empty input gives a small valid f32 call, so every field's minimum is the plain
// choice and the fuzzer reaches errors by moving away from it.
inline void decode_dense(FuzzedDataProvider& in, Problem& p, const std::vector<std::string>& targets) {
  static constexpr DType kDtypes[] = {DType::f32, DType::bf16, DType::f16, DType::f64, DType::f32,
                                      DType::u8, DType(9)};
  p.dtype = kDtypes[in.ConsumeIntegralInRange<size_t>(0, std::size(kDtypes) - 1)];
  p.B = in.ConsumeIntegralInRange<int64_t>(1, 2);
  p.Sq = in.ConsumeIntegralInRange<int64_t>(1, 9);
  p.Sk = in.ConsumeIntegralInRange<int64_t>(1, 12);
  p.Hkv = in.ConsumeIntegralInRange<int64_t>(1, 3);
  p.Hq = p.Hkv * in.ConsumeIntegralInRange<int64_t>(1, 2);
  p.D = in.ConsumeIntegralInRange<int64_t>(1, 16);
  p.Dv = in.ConsumeIntegralInRange<int64_t>(1, 16);
  // One perturbation that validation must catch or handle: empty dims, heads that do not divide,
  // mismatched head dims, or (sizing calls only) stride-0 sequences near 2^62.
  switch (in.ConsumeIntegralInRange(0, 15)) {
    case 1: p.B = 0; break;
    case 2: p.Sq = 0; break;
    case 3: p.Sk = 0; break;
    case 4: p.Hq += 1; break;
    case 5: p.D = 0; break;
    case 6: p.huge = true; break;
    default: break;
  }
  std::array<int64_t, 4> q_shape{p.B, p.Sq, p.Hq, p.D}, k_shape{p.B, p.Sk, p.Hkv, p.D}, v_shape{p.B, p.Sk, p.Hkv, p.Dv};
  if (p.huge) {
    const int64_t big = int64_t(1) << in.ConsumeIntegralInRange(31, 62);
    (in.ConsumeBool() ? k_shape[1] : q_shape[1]) = big;
    v_shape[1] = k_shape[1];
  }
  const bool mismatch = in.ConsumeIntegralInRange(0, 15) == 0;
  if (mismatch) v_shape[size_t(in.ConsumeIntegralInRange(0, 2))] += 1;  // dim 3 is dv, free to differ

  const bool packed = in.ConsumeIntegralInRange(0, 7) == 0 && p.Sq == p.Sk && p.Hq == p.Hkv && p.D == p.Dv && !p.huge;
  if (packed) {  // q, k, v, out as slots of one [B, S, 4, H, D] buffer: disjoint, must be accepted
    const size_t elem = element_bytes(p.dtype);
    auto shared = std::make_shared<Bytes>(size_t((p.B * p.Sq + 1) * 4 * p.Hq * p.D) * elem, kPoison);  // + a row: never empty
    Operand* slots[] = {&p.q, &p.k, &p.v, &p.out};
    for (int s = 0; s < 4; ++s) {
      Operand& op = *slots[s];
      op.present = true, op.store = shared;
      op.view = Tensor::strided(shared->data() + size_t(s * p.Hq * p.D) * elem, p.dtype, {p.B, p.Sq, p.Hq, p.D},
                                {p.Sq * 4 * p.Hq * p.D, 4 * p.Hq * p.D, p.D, 1});
    }
  } else {
    // Huge sequences are laid out at length 1, then stretched with stride 0: no memory for any length.
    const auto laid_out = [&](std::array<int64_t, 4> s, size_t seq_dim, bool negative) {
      const int64_t length = s[seq_dim];
      if (p.huge) s[seq_dim] = 1;
      Operand op = make_operand(in, p.dtype, 4, s, negative);
      if (p.huge) op.view.shape[seq_dim] = length, op.view.strides[seq_dim] = 0;
      return op;
    };
    p.q = laid_out(q_shape, 1, true), p.k = laid_out(k_shape, 1, true);
    p.v = laid_out(v_shape, 1, true);
    p.out = laid_out({q_shape[0], q_shape[1], q_shape[2], v_shape[3]}, 1, true);
    if (in.ConsumeIntegralInRange(0, 15) == 0) p.out.view = p.q.view, p.out.store = p.q.store;  // aliasing: refused
  }
  if (in.ConsumeBool() && !p.huge) p.lse = make_operand(in, DType::f32, 3, {q_shape[0], q_shape[2], q_shape[1], 0});

  memattn::Options& o = p.options;
  o.causal = in.ConsumeBool();
  o.align = in.ConsumeBool() ? memattn::Align::bottom_right : memattn::Align::top_left;
  static constexpr int64_t kWindows[] = {-1, 0, 1, 2, 3, 5, -2, std::numeric_limits<int64_t>::max()};
  o.window_left = kWindows[in.ConsumeIntegralInRange<size_t>(0, std::size(kWindows) - 1)];
  o.window_right = kWindows[in.ConsumeIntegralInRange<size_t>(0, std::size(kWindows) - 1)];
  static constexpr double kScales[] = {0.25, 0.0, -1.0, 3.0, 1e-30, 1e20, 1e39, 1e300, NAN, INFINITY, -INFINITY};
  if (in.ConsumeBool()) o.scale = kScales[in.ConsumeIntegralInRange<size_t>(0, std::size(kScales) - 1)];
  o.algorithm = memattn::Algorithm(in.ConsumeIntegralInRange(0, 4));
  static constexpr int64_t kChunks[] = {0, 1, 2, 3, 7, 16, -1};
  o.query_chunk = kChunks[in.ConsumeIntegralInRange<size_t>(0, std::size(kChunks) - 1)];
  o.key_chunk = kChunks[in.ConsumeIntegralInRange<size_t>(0, std::size(kChunks) - 1)];
  static constexpr int kThreads[] = {1, 3, 2, 0, -1};
  o.num_threads = kThreads[in.ConsumeIntegralInRange<size_t>(0, std::size(kThreads) - 1)];
  p.threads_other = o.num_threads == 1 ? 3 : 1;
  const size_t target = in.ConsumeIntegralInRange<size_t>(0, targets.size() + 1);
  if (target > 0) {
    p.target_storage = target <= targets.size() ? targets[target - 1] : "no_such_target";
    o.target = p.target_storage.c_str();
  }

  // Mask and bias: each dim the full size or 1 (broadcast), rarely one more (refused).
  const std::array<int64_t, 4> full{q_shape[0], q_shape[2], q_shape[1], k_shape[1]};
  const auto broadcast_shape = [&] {
    std::array<int64_t, 4> s = full;
    const uint8_t bits = in.ConsumeIntegral<uint8_t>();
    for (int d = 0; d < 4; ++d)
      if (bits >> d & 1) s[size_t(d)] = 1;
    if (bits >> 4 == 15) s[size_t(bits & 3)] += 1;
    return s;
  };
  if (in.ConsumeBool() && !p.huge) {
    const bool wrong = in.ConsumeIntegralInRange(0, 15) == 0;
    p.mask = make_operand(in, wrong ? DType::f32 : DType::u8, 4, broadcast_shape());
    const uint8_t keep = in.ConsumeIntegral<uint8_t>();
    uint64_t bits = in.ConsumeIntegral<uint64_t>() | 1;
    for_each_index(p.mask.view, [&](const auto& i) {
      bits ^= bits << 13, bits ^= bits >> 7, bits ^= bits << 17;
      p.mask.set(i, (bits & 255) < keep ? 1.0 : 0.0);
    });
    o.mask = &p.mask.view;
  }
  if (in.ConsumeBool() && !p.huge) {
    static constexpr DType kBiasDtypes[] = {DType::f32, DType::bf16, DType::f16, DType::f64, DType::u8};
    const size_t pick = in.ConsumeIntegralInRange<size_t>(0, std::size(kBiasDtypes));
    p.bias = make_operand(in, pick == 0 ? p.dtype : kBiasDtypes[pick - 1], 4, broadcast_shape());
    ValueSource values(in);
    fill(p.bias, values);
    o.bias = &p.bias.view;
  }
  p.workspace_mode = in.ConsumeIntegralInRange(0, 5) % 3 == 0 ? 0 : in.ConsumeIntegralInRange(1, 2) % 2 ? 1 : 2;
  p.workspace_misalign = in.ConsumeIntegralInRange<size_t>(0, 7);

  p.backward = in.ConsumeBool() && !p.huge;
  if (p.backward) {
    p.dout = make_operand(in, p.dtype, 4, p.out.view.shape);
    p.dq = make_operand(in, p.dtype, 4, q_shape);
    p.dk = make_operand(in, p.dtype, 4, k_shape);
    p.dv = make_operand(in, p.dtype, 4, v_shape);
    if (p.bias.present && in.ConsumeBool()) p.dbias = make_operand(in, p.bias.view.dtype, 4, p.bias.view.shape);
  }
  if (!p.huge) {
    ValueSource qv(in), kv(in), vv(in);
    fill(p.q, qv), fill(p.k, kv), fill(p.v, vv);
    if (p.dout.present) {
      ValueSource dv(in);
      fill(p.dout, dv);
    }
  }
}

}  // namespace fuzz
