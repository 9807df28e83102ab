// Packed variable-length operands and their per-sequence dense problems (varlen_support.hpp).
#include "varlen_support.hpp"

#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

namespace mt {
namespace {

int64_t total(const std::vector<int64_t>& lengths) { return std::accumulate(lengths.begin(), lengths.end(), int64_t(0)); }

template <typename I>
std::vector<I> offsets_of(const std::vector<int64_t>& lengths) {
  std::vector<I> cu(lengths.size() + 1, 0);
  for (size_t b = 0; b < lengths.size(); ++b) cu[b + 1] = I(cu[b] + lengths[b]);
  return cu;
}

}  // namespace

VarlenCase::VarlenCase(std::vector<int64_t> lq, std::vector<int64_t> lk, int64_t hq, int64_t hkv, int64_t d,
                       int64_t dv_, DType dt, DType offsets, uint64_t seed)
    : len_q(std::move(lq)), len_k(std::move(lk)), heads_q(hq), heads_kv(hkv), dim(d), dim_v(dv_), dtype(dt),
      q(dt, {1, total(len_q), hq, d}), k(dt, {1, total(len_k), hkv, d}), v(dt, {1, total(len_k), hkv, dv_}),
      out(dt, {1, total(len_q), hq, dv_}), lse(DType::f32, {1, hq, total(len_q)}),
      dout(dt, {1, total(len_q), hq, dv_}), dq(dt, {1, total(len_q), hq, d}), dk(dt, {1, total(len_k), hkv, d}),
      dv(dt, {1, total(len_k), hkv, dv_}), cu_q32(offsets_of<int32_t>(len_q)), cu_k32(offsets_of<int32_t>(len_k)),
      cu_q64(offsets_of<int64_t>(len_q)), cu_k64(offsets_of<int64_t>(len_k)) {
  fill_randn(q, seed * 5 + 0);
  fill_randn(k, seed * 5 + 1);
  fill_randn(v, seed * 5 + 2);
  fill_randn(dout, seed * 5 + 3);
  use_offsets(offsets);
}

void VarlenCase::use_offsets(DType offsets) {
  const int64_t n = int64_t(len_q.size()) + 1;
  if (offsets == DType::i32) {
    cu_q = Tensor::contiguous(cu_q32.data(), DType::i32, {n});
    cu_k = Tensor::contiguous(cu_k32.data(), DType::i32, {n});
  } else {
    cu_q = Tensor::contiguous(cu_q64.data(), DType::i64, {n});
    cu_k = Tensor::contiguous(cu_k64.data(), DType::i64, {n});
  }
  options.cu_seqlens_q = &cu_q;
  options.cu_seqlens_k = &cu_k;
}

void VarlenCase::forward() {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  out.fill(nan);
  lse.fill(nan);
  Tensor lse_view = lse.view();
  memattn::forward(q.view(), k.view(), v.view(), out.view(), &lse_view, options);
}

void VarlenCase::backward() {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (Buf* g : {&dq, &dk, &dv}) g->fill(nan);
  memattn::backward(q.view(), k.view(), v.view(), out.view(), dout.view(), lse.view(), dq.view(), dk.view(),
                    dv.view(), options);
}

Buf VarlenCase::rows(const Buf& packed, int64_t first, int64_t count) {
  Buf r(packed.dtype, {1, count, packed.shape[2], packed.shape[3]});
  const size_t row_bytes = size_t(packed.shape[2] * packed.shape[3]) * memattn::dtype_size(packed.dtype);
  if (count > 0) std::memcpy(r.bytes.data(), packed.bytes.data() + size_t(first) * row_bytes, size_t(count) * row_bytes);
  return r;
}

BackwardCase VarlenCase::dense(size_t b) const {
  BackwardCase c(Shape{1, len_q[b], len_k[b], heads_q, heads_kv, dim, dim_v}, dtype);
  c.q = rows(q, first_q(b), len_q[b]);
  c.k = rows(k, first_k(b), len_k[b]);
  c.v = rows(v, first_k(b), len_k[b]);
  c.dout = rows(dout, first_q(b), len_q[b]);
  c.options = options;
  c.options.cu_seqlens_q = c.options.cu_seqlens_k = nullptr;
  c.options.max_seqlen_q = c.options.max_seqlen_k = 0;
  if (!alibi_slopes.empty()) {
    const size_t row = alibi_slopes.size() == size_t(heads_q) ? 0 : b * size_t(heads_q);
    c.set_alibi({heads_q}, std::vector<double>(alibi_slopes.begin() + ptrdiff_t(row),
                                               alibi_slopes.begin() + ptrdiff_t(row + size_t(heads_q))));
  }
  if (!sinks.empty()) c.set_sinks(sinks);
  return c;
}

void VarlenCase::set_modifiers(double softcap, std::vector<double> slopes, std::vector<double> sink_logits) {
  options.softcap = softcap;
  alibi_slopes = std::move(slopes), sinks = std::move(sink_logits);
  options.alibi_slopes = options.sinks = nullptr;
  if (!alibi_slopes.empty()) {
    alibi_buf = alibi_slopes.size() == size_t(heads_q) ? Buf(DType::f32, {heads_q})
                                                        : Buf(DType::f32, {int64_t(count()), heads_q});
    for (size_t e = 0; e < alibi_slopes.size(); ++e) alibi_buf.set(int64_t(e), alibi_slopes[e]);
    alibi_view = alibi_buf.view(), options.alibi_slopes = &alibi_view;
  }
  if (!sinks.empty()) {
    sinks_buf = Buf(DType::f32, {heads_q});
    for (int64_t h = 0; h < heads_q; ++h) sinks_buf.set(h, sinks[size_t(h)]);
    sinks_view = sinks_buf.view(), options.sinks = &sinks_view;
  }
}

RefProblem VarlenCase::problem(size_t b) const { return dense(b).problem(); }

std::vector<double> VarlenCase::lse_of(size_t b) const {
  std::vector<double> r;
  const int64_t tq = q.shape[1];
  for (int64_t h = 0; h < heads_q; ++h)
    for (int64_t i = 0; i < len_q[b]; ++i) r.push_back(lse.get(h * tq + first_q(b) + i));
  return r;
}

}  // namespace mt
