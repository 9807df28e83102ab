// Validation of user-supplied tensors and options into a Params, with messages that say what was
// expected and what was given.
#include "api/validate.hpp"

#include "api/sequences.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace memattn::detail {

void fail(ErrorCode code, const std::string& message) { throw Error(code, message); }

std::string shape_str(const Tensor& t) {
  std::ostringstream s;
  s << '[';
  for (int i = 0; i < std::clamp(t.ndim, 0, 4); ++i) s << (i ? "," : "") << t.shape[i];
  s << ']';
  return s.str();
}

static std::string strides_str(const Tensor& t) {
  std::ostringstream s;
  s << '[';
  for (int i = 0; i < std::clamp(t.ndim, 0, 4); ++i) s << (i ? "," : "") << t.strides[i];
  s << ']';
  return s.str();
}

static bool has_zero_extent(const Tensor& t) {
  for (int i = 0; i < t.ndim; ++i)
    if (t.shape[i] == 0) return true;
  return false;
}

static const char* align_name(Align a) {
  return a == Align::top_left ? "top_left" : a == Align::bottom_right ? "bottom_right" : "unknown";
}

// An enum field holds whatever its caller stored (a C caller or a binding can put any byte there):
// throws invalid_argument naming `owner` + `field` unless `value` is one of the enum's values
// 0..last, which the message lists by name.
template <typename E>
static void check_enum(E value, const char* owner, const char* field, E last, const char* (*name)(E)) {
  if (int(value) >= 0 && int(value) <= int(last)) return;
  std::string expected;
  for (int i = 0; i <= int(last); ++i) expected += cat(i ? ", " : "", name(E(i)));
  fail(ErrorCode::invalid_argument,
       cat(owner, field, ": expected one of ", expected, ", got ", int(value)));
}

void check_tensor(const Tensor& t, const char* name, int ndim) {
  if (t.ndim != ndim)
    fail(ErrorCode::invalid_argument,
         cat(name, ": expected ", ndim, " dimensions, got ", t.ndim, " (shape ", shape_str(t), ")"));
  for (int i = 0; i < ndim; ++i)
    if (t.shape[i] < 0)
      fail(ErrorCode::invalid_argument,
           cat(name, ": shape[", i, "] must be >= 0, got ", t.shape[i], " (shape ", shape_str(t), ")"));
  check_enum(t.dtype, name, ".dtype", DType::i64, dtype_name);
  byte_span(t, name);  // throws on 64-bit overflow
  if (t.data == nullptr && !has_zero_extent(t))
    fail(ErrorCode::invalid_argument,
         cat(name, ": data is null but the tensor has shape ", shape_str(t), " (", t.numel(),
             " elements)"));
}

Span byte_span(const Tensor& t, const char* name) {
  if (has_zero_extent(t)) return {static_cast<const char*>(t.data), static_cast<const char*>(t.data)};
  int64_t lo = 0, hi = 0, count = 1;
  const auto overflow = [&] {
    fail(ErrorCode::size_overflow, cat(name, ": tensor size overflows int64 (shape ", shape_str(t),
                                       ", strides ", strides_str(t), ")"));
  };
  for (int i = 0; i < t.ndim; ++i) {
    int64_t reach;
    if (__builtin_mul_overflow(t.shape[i] - 1, t.strides[i], &reach)) overflow();
    if (__builtin_add_overflow(reach < 0 ? lo : hi, reach, reach < 0 ? &lo : &hi)) overflow();
    if (__builtin_mul_overflow(count, t.shape[i], &count)) overflow();
  }
  const int64_t es = int64_t(dtype_size(t.dtype));
  int64_t lo_b, hi_b;
  if (__builtin_mul_overflow(lo, es, &lo_b) || __builtin_add_overflow(hi, 1, &hi) ||
      __builtin_mul_overflow(hi, es, &hi_b))
    overflow();
  // The addresses themselves must stay inside the address space.
  const uintptr_t base = reinterpret_cast<uintptr_t>(t.data);
  if ((lo_b < 0 && uintptr_t(-lo_b) > base) || uintptr_t(hi_b) > UINTPTR_MAX - base) overflow();
  const char* p = static_cast<const char*>(t.data);
  return {p + lo_b, p + hi_b};
}

void check_writable(const Tensor& t, const char* name) {
  struct Dim {
    int64_t extent, stride;
  };
  // An output with no elements writes nothing, so no stride can make it overlap (numpy gives
  // empty arrays all-zero strides).
  if (has_zero_extent(t)) return;
  std::vector<Dim> dims;
  for (int i = 0; i < t.ndim; ++i) {
    if (t.shape[i] <= 1) continue;
    if (t.strides[i] == 0)
      fail(ErrorCode::invalid_argument,
           cat(name, ": stride[", i, "] is 0 on a dimension of size ", t.shape[i],
               "; an output must not overlap itself (strides ", strides_str(t), ")"));
    dims.push_back({t.shape[i], std::llabs(t.strides[i])});
  }
  // Sorted by stride, each dim must step past everything the smaller dims reach.
  std::sort(dims.begin(), dims.end(), [](Dim a, Dim b) { return a.stride < b.stride; });
  int64_t reach = 0;
  for (const Dim& d : dims) {
    if (d.stride <= reach)
      fail(ErrorCode::invalid_argument,
           cat(name, ": strides ", strides_str(t), " with shape ", shape_str(t),
               " make elements overlap; an output must not overlap itself"));
    reach += d.stride * (d.extent - 1);
  }
}

// Index differences t in [lo, hi] along one dimension of element stride `stride` (> 0).
struct Step {
  int64_t lo, hi, stride;
};

// Can some sum_d t_d * stride_d with t_d in [lo_d, hi_d] equal `delta`? `steps` are sorted by
// decreasing stride and nested (each stride exceeds what the smaller steps reach), so at each
// level only the two multiples bracketing the remainder can lead to a solution.
static bool reachable(const std::vector<Step>& steps, size_t level, int64_t delta) {
  if (level == steps.size()) return delta == 0;
  const Step& s = steps[level];
  const int64_t below = delta >= 0 ? delta / s.stride : -((-delta + s.stride - 1) / s.stride);
  for (int64_t t : {below, below + 1}) {
    if (t < s.lo || t > s.hi) continue;
    if (reachable(steps, level + 1, delta - t * s.stride)) return true;
  }
  return false;
}

static bool may_share_element(const Tensor& a, const Tensor& b, Span sa, Span sb) {
  if (sa.lo == sa.hi || sb.lo == sb.hi) return false;
  if (sa.hi <= sb.lo || sb.hi <= sa.lo) return false;
  // Spans intersect. Interleaved views of one buffer (packed qkv, head-dim slices, even of
  // different widths) share element size and strides and sit at an offset that no difference of
  // indices can produce: a[i] and b[j] meet iff sum_d (i_d - j_d) * stride_d = b - a.
  const int64_t es = int64_t(dtype_size(a.dtype));
  if (es != int64_t(dtype_size(b.dtype)) || a.ndim != b.ndim) return true;
  const int64_t delta_b = static_cast<const char*>(b.data) - static_cast<const char*>(a.data);
  if (delta_b % es != 0) return true;
  std::vector<Step> steps;
  for (int i = 0; i < a.ndim; ++i) {
    const int64_t ea = a.shape[i], eb = b.shape[i];
    if (ea > 1 && eb > 1 && a.strides[i] != b.strides[i]) return true;  // cannot decide cheaply
    const int64_t stride = ea > 1 ? a.strides[i] : b.strides[i];  // a size-1 dim's stride is unused
    if (stride == 0 || (ea == 1 && eb == 1)) continue;
    // i - j ranges over [-(eb - 1), ea - 1]; a negative stride mirrors the range.
    if (stride > 0) steps.push_back({-(eb - 1), ea - 1, stride});
    else steps.push_back({-(ea - 1), eb - 1, -stride});
  }
  std::sort(steps.begin(), steps.end(), [](const Step& x, const Step& y) { return x.stride > y.stride; });
  int64_t reach = 0;
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
    int64_t widest;
    if (it->stride <= reach) return true;  // not nested: cannot decide cheaply, refuse
    if (__builtin_mul_overflow(it->stride, std::max(-it->lo, it->hi), &widest) ||
        __builtin_add_overflow(reach, widest, &reach))
      return true;
  }
  return reachable(steps, 0, delta_b / es);
}

void check_no_alias(const Tensor& out, const char* out_name, const Tensor& in, const char* in_name) {
  if (may_share_element(out, in, byte_span(out, out_name), byte_span(in, in_name)))
    fail(ErrorCode::aliasing,
         cat("unsupported operation: some elements of ", out_name, " and ", in_name,
             " refer to a single memory location; the output must not overlap any other operand"));
}

static bool is_float_dtype(DType d) {
  return d == DType::f32 || d == DType::bf16 || d == DType::f16 || d == DType::f64;
}

View make_view(const Tensor& t) {
  View v;
  v.data = t.data;
  v.dtype = t.dtype;
  // A tensor without elements is never dereferenced, but kernels still form row addresses from
  // it (q and k with head_dim 0): zero strides keep those at its base, which may be null.
  const bool empty = has_zero_extent(t);
  for (int i = 0; i < t.ndim; ++i) v.stride[i] = empty || t.shape[i] == 1 ? 0 : t.strides[i];
  return v;
}

// mask / bias: [B|1, H|1, Sq|1, Sk|1]; broadcast dims read with stride 0.
static View check_broadcast(const Tensor& t, const char* name, const Params& p) {
  check_tensor(t, name, 4);
  const int64_t target[4] = {p.batch, p.heads_q, p.seq_q, p.seq_k};
  for (int i = 0; i < 4; ++i)
    if (t.shape[i] != target[i] && t.shape[i] != 1)
      fail(ErrorCode::invalid_argument,
           cat(name, " shape ", shape_str(t), " not broadcastable to [B=", p.batch, ",H=", p.heads_q,
               ",Sq=", p.seq_q, ",Sk=", p.seq_k, "]; each dim must equal the target or be 1"));
  return make_view(t);
}

// Fails with size_overflow unless every prefix product of `factors` (name, value) fits in int64,
// naming the first that does not. A zero factor makes every later product zero.
static void check_products(std::initializer_list<std::pair<const char*, int64_t>> factors) {
  int64_t product = 1;
  for (auto f = factors.begin(); f != factors.end(); ++f) {
    if (!__builtin_mul_overflow(product, f->second, &product)) continue;
    std::string names, values;
    for (auto g = factors.begin(); g != f + 1; ++g) {
      names += cat(g == factors.begin() ? "" : " * ", g->first);
      values += cat(g == factors.begin() ? "" : ", ", g->first, " ", g->second);
    }
    fail(ErrorCode::size_overflow, cat(names, " overflows int64 (", values, ")"));
  }
}

// Every size the planners and kernels derive in int64 from the shapes, checked once here so that
// none of them can overflow later. Inputs with zero strides (and tensors with a zero dimension)
// take no memory, so their shapes are bounded by nothing else.
static void check_derived_sizes(const Params& p) {
  // Work items and row counts: (batch, head) pairs, then times the query or key chunks (at most
  // seq_q or seq_k of them).
  check_products({{"batch", p.batch}, {"heads_q", p.heads_q}, {"seq_q", p.seq_q}});
  check_products({{"batch", p.batch}, {"heads_kv", p.heads_kv}, {"seq_k", p.seq_k}});
  // Chunk counts (seq + chunk - 1 with chunk <= seq) and the key bounds of causal and window masks
  // (i + diag +- window +- 1, see the window clamp) stay within +-2 max(seq_q, seq_k).
  int64_t reach;
  if (__builtin_mul_overflow(std::max(p.seq_q, p.seq_k), int64_t(2), &reach))
    fail(ErrorCode::size_overflow, cat("2 * max(seq_q, seq_k) overflows int64 (seq_q ", p.seq_q,
                                       ", seq_k ", p.seq_k, ")"));
  // The flash planners size key chunks by the f32 bytes of one key's K row, V row and score.
  int64_t key_bytes;
  if (__builtin_add_overflow(p.dim, p.dim_v, &key_bytes) ||
      __builtin_add_overflow(key_bytes, int64_t(1), &key_bytes) ||
      __builtin_mul_overflow(key_bytes, int64_t(4), &key_bytes))
    fail(ErrorCode::size_overflow, cat("4 * (dim + dim_v + 1) overflows int64 (dim ", p.dim,
                                       ", dim_v ", p.dim_v, ")"));
}

void resolve_diagonal(Params& p, const Options& o) {
  constexpr int64_t kMaxOffset = int64_t(1) << 62;
  if (o.diagonal_offset < -kMaxOffset || o.diagonal_offset > kMaxOffset)
    fail(ErrorCode::invalid_argument,
         cat("diagonal_offset must be in [-2^62, 2^62], got ", o.diagonal_offset));
  using Wide = __int128;
  const Wide diag = Wide(o.align == Align::bottom_right ? p.seq_k - p.seq_q : 0) + o.diagonal_offset;
  // Row i's diagonal key is i + diag. A left window of diag + seq_q reaches key 0 from every row,
  // a right window of seq_k - diag the last key, so wider ones are clamped to these: then every
  // key bound (i + diag - left, i + diag + right + 1, causal's i + diag + 1) and ALiBi distance
  // (i + diag - j) lies in [lo, hi] below, which must fit in int64. Without an offset that holds
  // for any sequences the shape checks accept (|bounds| <= 2 max(seq_q, seq_k) + 1).
  const Wide lo = std::min<Wide>(diag - p.seq_k, -Wide(p.seq_q)) - 1;
  const Wide hi = std::max<Wide>(diag + p.seq_q, Wide(p.seq_q) + p.seq_k) + 1;
  if (lo < std::numeric_limits<int64_t>::min() || hi > std::numeric_limits<int64_t>::max())
    fail(ErrorCode::size_overflow,
         cat("diagonal_offset ", o.diagonal_offset, " moves the diagonal too far for key bounds in int64 (seq_q ",
             p.seq_q, ", seq_k ", p.seq_k, ", align ", align_name(o.align), ")"));
  p.causal = o.causal;
  p.diag = int64_t(diag);
  const int64_t left_reach = int64_t(std::max<Wide>(diag + p.seq_q, 0));
  const int64_t right_reach = int64_t(std::max<Wide>(Wide(p.seq_k) - diag, 0));
  p.window_left = o.window_left < 0 ? -1 : std::min(o.window_left, left_reach);
  p.window_right = o.window_right < 0 ? -1 : std::min(o.window_right, right_reach);
}

Params make_forward_params(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor* out,
                           const Tensor* lse, const Options& o) {
  if (q.ndim != 4 || k.ndim != 4 || v.ndim != 4)
    fail(ErrorCode::invalid_argument,
         cat("q, k, v must have the same rank (4: [B, S, H, D]); got q=", shape_str(q),
             ", k=", shape_str(k), ", v=", shape_str(v)));
  check_tensor(q, "q", 4);
  check_tensor(k, "k", 4);
  check_tensor(v, "v", 4);
  if (out) check_tensor(*out, "out", 4);

  // A KV cache in bf16 or f16 read by f32 queries is the one mix (the planner keeps it to flash).
  const bool kv_cache_mix = q.dtype == DType::f32 && k.dtype == v.dtype &&
                            (k.dtype == DType::bf16 || k.dtype == DType::f16);
  if ((q.dtype != k.dtype || q.dtype != v.dtype) && !kv_cache_mix)
    fail(ErrorCode::wrong_dtype,
         cat("q, k, v must have the same dtype, or f32 q with k and v both bf16 or both f16 (a KV "
             "cache); got q=",
             dtype_name(q.dtype), ", k=", dtype_name(k.dtype), ", v=", dtype_name(v.dtype)));
  if (!is_float_dtype(q.dtype))
    fail(ErrorCode::wrong_dtype,
         cat("q: dtype ", dtype_name(q.dtype),
             " is not supported; expected one of f32, bf16, f16 (f64 with the naive, sequential or "
             "chunked algorithm)"));
  if (out && out->dtype != q.dtype)
    fail(ErrorCode::wrong_dtype, cat("out: dtype must match q (", dtype_name(q.dtype), "), got ",
                                          dtype_name(out->dtype)));

  Params p;
  p.dtype = q.dtype;
  p.kv_dtype = k.dtype;
  p.batch = q.shape[0];
  p.seq_q = q.shape[1];
  p.heads_q = q.shape[2];
  p.dim = q.shape[3];
  p.seq_k = k.shape[1];
  p.heads_kv = k.shape[2];
  p.dim_v = v.shape[3];

  for (const auto& [t, name] : {std::pair{&k, "k"}, std::pair{&v, "v"}})
    if (t->shape[0] != p.batch)
      fail(ErrorCode::invalid_argument,
           cat(name, ": batch ", t->shape[0], " does not match q batch ", p.batch));
  if (v.shape[1] != p.seq_k)
    fail(ErrorCode::invalid_argument,
         cat("v: seq ", v.shape[1], " does not match k seq ", p.seq_k, " (keys and values pair up)"));
  if (v.shape[2] != p.heads_kv)
    fail(ErrorCode::invalid_argument,
         cat("v: heads ", v.shape[2], " does not match k heads ", p.heads_kv));
  if (p.heads_kv == 0 && p.heads_q != 0)
    fail(ErrorCode::invalid_argument,
         cat("num_heads_kv must be > 0 when num_heads_q is ", p.heads_q, ", got 0"));
  if (p.heads_kv != 0 && p.heads_q % p.heads_kv != 0)
    fail(ErrorCode::invalid_argument, cat("num_heads_q (", p.heads_q,
                                          ") must be a multiple of num_heads_kv (", p.heads_kv, ")"));
  p.group = p.heads_kv ? p.heads_q / p.heads_kv : 1;
  if (k.shape[3] != p.dim)
    fail(ErrorCode::invalid_argument,
         cat("q.shape[-1] (", p.dim, ") != k.shape[-1] (", k.shape[3], ")"));
  check_derived_sizes(p);
  if (is_varlen(o) || o.max_seqlen_q != 0 || o.max_seqlen_k != 0) check_sequence_tensors(p, o);
  const int64_t want_out[4] = {p.batch, p.seq_q, p.heads_q, p.dim_v};
  if (out) {
    for (int i = 0; i < 4; ++i)
      if (out->shape[i] != want_out[i])
        fail(ErrorCode::invalid_argument,
             cat("out: shape ", shape_str(*out), " expected [", want_out[0], ",", want_out[1], ",",
                 want_out[2], ",", want_out[3], "] ([batch, seq_q, heads_q, head_dim_v])"));
    check_writable(*out, "out");
    p.out = make_view(*out);
  }
  p.q = make_view(q);
  p.k = make_view(k);
  p.v = make_view(v);

  if (lse) {
    check_tensor(*lse, "lse", 3);
    if (lse->dtype != DType::f32)
      fail(ErrorCode::wrong_dtype, cat("lse: dtype must be f32, got ", dtype_name(lse->dtype)));
    if (lse->shape[0] != p.batch || lse->shape[1] != p.heads_q || lse->shape[2] != p.seq_q)
      fail(ErrorCode::invalid_argument, cat("lse: shape ", shape_str(*lse), " expected [", p.batch, ",",
                                            p.heads_q, ",", p.seq_q, "] ([batch, heads_q, seq_q])"));
    check_writable(*lse, "lse");
    p.lse = make_view(*lse);
    p.has_lse = true;
  }
  if (o.mask) {
    p.mask = check_broadcast(*o.mask, "mask", p);
    if (o.mask->dtype != DType::u8)
      fail(ErrorCode::wrong_dtype,
           cat("mask: dtype must be u8 (bool, nonzero = attend), got ", dtype_name(o.mask->dtype)));
    p.has_mask = true;
  }
  if (o.bias) {
    p.bias = check_broadcast(*o.bias, "bias", p);
    const DType bd = o.bias->dtype;
    if (!(bd == DType::f32 || bd == DType::bf16 || bd == DType::f16 ||
          (bd == DType::f64 && p.dtype == DType::f64)))
      fail(ErrorCode::wrong_dtype,
           cat("bias: dtype must be one of f32, bf16, f16 (f64 with f64 inputs), got ",
               dtype_name(bd)));
    p.has_bias = true;
  }

  if (o.scale && !std::isfinite(*o.scale))
    fail(ErrorCode::invalid_argument, cat("scale must be finite, got ", *o.scale));
  const double scale = o.scale ? *o.scale : (p.dim > 0 ? 1.0 / std::sqrt(double(p.dim)) : 1.0);
  p.scale = float(scale);
  if (p.dtype != DType::f64 && !std::isfinite(p.scale))
    fail(ErrorCode::invalid_argument,
         cat("scale ", scale, " is beyond the float range of the scores for ", dtype_name(p.dtype),
             " inputs (|scale| <= 3.4e38; f64 inputs take any finite scale)"));
  p.scale64 = p.dtype == DType::f64 ? scale : double(p.scale);

  for (const auto& [value, name] :
       {std::pair{o.window_left, "window_left"}, std::pair{o.window_right, "window_right"}})
    if (value < -1)
      fail(ErrorCode::invalid_argument,
           cat(name, " must be -1 (unbounded) or >= 0, got ", value));
  for (const auto& [value, name] :
       {std::pair{o.query_chunk, "query_chunk"}, std::pair{o.key_chunk, "key_chunk"}})
    if (value < 0)
      fail(ErrorCode::invalid_argument, cat(name, " must be 0 (automatic) or > 0, got ", value));
  if (o.num_threads < 0)
    fail(ErrorCode::invalid_argument,
         cat("num_threads must be 0 (all) or > 0, got ", o.num_threads));
  check_enum(o.algorithm, "options", ".algorithm", Algorithm::flash, algorithm_name);
  check_enum(o.align, "options", ".align", Align::bottom_right, align_name);
  resolve_diagonal(p, o);

  check_score_modifiers(p, o);

  const Tensor* inputs[] = {&q, &k, &v, o.mask, o.bias, o.alibi_slopes, o.sinks, o.cu_seqlens_q, o.cu_seqlens_k};
  const char* names[] = {"q", "k", "v", "mask", "bias", "alibi_slopes", "sinks", "cu_seqlens_q", "cu_seqlens_k"};
  for (size_t i = 0; i < std::size(inputs); ++i) {
    if (!inputs[i]) continue;
    if (out) check_no_alias(*out, "out", *inputs[i], names[i]);
    if (lse) check_no_alias(*lse, "lse", *inputs[i], names[i]);
  }
  if (out && lse) check_no_alias(*out, "out", *lse, "lse");
  return p;
}

}  // namespace memattn::detail
