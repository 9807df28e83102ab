// merge(): checks the parts and the outputs, then combines the parts row by row in a fixed order.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>

#include "api/merge_params.hpp"
#include "api/validate.hpp"
#include "common/half.hpp"
#include "common/parallel.hpp"
#include "common/threads.hpp"
#include "memattn/memattn.hpp"

namespace memattn {
namespace detail {
namespace {

bool is_float_dtype(DType d) {
  return d == DType::f32 || d == DType::bf16 || d == DType::f16 || d == DType::f64;
}

// "outs[3]": short enough for the small-string buffer, so valid calls allocate nothing.
std::string indexed(const char* name, size_t i) {
  return std::string(name) + '[' + std::to_string(i) + ']';
}

// Same element addresses: strides of size-1 dims are never used, so they may differ.
bool same_view(const Tensor& a, const Tensor& b) {
  if (a.data != b.data || a.dtype != b.dtype || a.ndim != b.ndim) return false;
  for (int d = 0; d < a.ndim; ++d)
    if (a.shape[d] != b.shape[d] || (a.shape[d] > 1 && a.strides[d] != b.strides[d])) return false;
  return true;
}

// An output may be the very same view as a part of its own kind (in-place merge), else must not
// share memory with it.
void check_output_against(const Tensor& output, const char* output_name, const Tensor& input,
                          const char* input_name, bool same_view_allowed) {
  if (same_view_allowed && same_view(output, input)) return;
  try {
    check_no_alias(output, output_name, input, input_name);
  } catch (const Error& e) {
    if (!same_view_allowed) throw;
    throw Error(e.code(),
                cat(e.what(), "; in place, ", output_name, " must be the very same view (",
                    "data, dtype, shape, strides) as ", input_name));
  }
}

void check_shape(const Tensor& t, const std::string& name, const int64_t (&want)[4], int ndim,
                 const char* meaning) {
  for (int d = 0; d < ndim; ++d)
    if (t.shape[d] != want[d]) {
      std::string expected = "[";
      for (int e = 0; e < ndim; ++e) expected += cat(e ? "," : "", want[e]);
      fail(ErrorCode::invalid_argument,
           cat(name, ": shape ", shape_str(t), " expected ", expected, "] (", meaning, ")"));
    }
}

void check_lse(const Tensor& t, const std::string& name, const int64_t (&want)[4]) {
  check_tensor(t, name.c_str(), 3);
  if (t.dtype != DType::f32)
    fail(ErrorCode::wrong_dtype, cat(name, ": dtype must be f32, got ", dtype_name(t.dtype)));
  check_shape(t, name, want, 3, "[batch, heads, seq_q] of out");
}

int resolve_threads(int requested) {
  if (requested < 0)
    fail(ErrorCode::invalid_argument, cat("num_threads must be 0 (all) or > 0, got ", requested));
  return requested > 0 ? requested : default_threads();
}

}  // namespace

MergeParams make_merge_params(std::span<const Tensor> outs, std::span<const Tensor> lses,
                              const Tensor& out, const Tensor* lse, const MergeOptions& options) {
  if (outs.size() != lses.size())
    fail(ErrorCode::invalid_argument,
         cat("outs and lses must have the same length (one lse per part); got ", outs.size(),
             " outs and ", lses.size(), " lses"));
  check_tensor(out, "out", 4);
  if (!is_float_dtype(out.dtype))
    fail(ErrorCode::wrong_dtype, cat("out: dtype ", dtype_name(out.dtype),
                                     " is not supported; expected one of f32, bf16, f16, f64"));
  check_writable(out, "out");
  MergeParams p;
  p.batch = out.shape[0];
  p.seq_q = out.shape[1];
  p.heads = out.shape[2];
  p.dim_v = out.shape[3];
  const int64_t out_shape[4] = {p.batch, p.seq_q, p.heads, p.dim_v};
  const int64_t lse_shape[4] = {p.batch, p.heads, p.seq_q, 0};
  if (lse) {
    check_lse(*lse, "lse", lse_shape);
    check_writable(*lse, "lse");
    p.lse = *lse;
    p.has_lse = true;
  }
  for (size_t i = 0; i < outs.size(); ++i) {
    const std::string name = indexed("outs", i);
    check_tensor(outs[i], name.c_str(), 4);
    if (!is_float_dtype(outs[i].dtype))
      fail(ErrorCode::wrong_dtype, cat(name, ": dtype ", dtype_name(outs[i].dtype),
                                       " is not supported; expected one of f32, bf16, f16, f64"));
    if (outs[i].dtype != outs[0].dtype)
      fail(ErrorCode::wrong_dtype,
           cat(name, ": dtype must match outs[0] (", dtype_name(outs[0].dtype), "), got ",
               dtype_name(outs[i].dtype)));
    check_shape(outs[i], name, out_shape, 4, "the shape of out: [batch, seq_q, heads, head_dim_v]");
    check_lse(lses[i], indexed("lses", i), lse_shape);
  }
  if (!outs.empty() && (outs[0].dtype == DType::f64) != (out.dtype == DType::f64))
    fail(ErrorCode::wrong_dtype,
         cat("out: dtype ", dtype_name(out.dtype), " cannot receive parts of dtype ",
             dtype_name(outs[0].dtype), "; expected ",
             outs[0].dtype == DType::f64 ? "f64" : "one of f32, bf16, f16"));
  p.threads = resolve_threads(options.num_threads);

  for (size_t i = 0; i < outs.size(); ++i) {
    const std::string out_i = indexed("outs", i), lse_i = indexed("lses", i);
    check_output_against(out, "out", outs[i], out_i.c_str(), true);
    check_output_against(out, "out", lses[i], lse_i.c_str(), false);
    if (lse) {
      check_output_against(*lse, "lse", lses[i], lse_i.c_str(), true);
      check_output_against(*lse, "lse", outs[i], out_i.c_str(), false);
    }
  }
  if (lse) check_no_alias(out, "out", *lse, "lse");
  p.outs = outs;
  p.lses = lses;
  p.out = out;
  return p;
}

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

template <typename T>
T* out_row(const Tensor& t, int64_t b, int64_t i, int64_t h) {
  return static_cast<T*>(t.data) + b * t.strides[0] + i * t.strides[1] + h * t.strides[2];
}

float* lse_at(const Tensor& t, int64_t b, int64_t h, int64_t i) {
  return static_cast<float*>(t.data) + b * t.strides[0] + h * t.strides[1] + i * t.strides[2];
}

// One row (b, h, i). The parts' lse values are read again for each tile rather than kept, so the
// kernel needs no memory proportional to the number of parts; an in-place lse is written last.
template <typename P, typename O>
void merge_row(const MergeParams& p, int64_t b, int64_t h, int64_t i) {
  using Acc = std::conditional_t<std::is_same_v<P, double>, double, float>;
  constexpr int64_t kTile = 128;
  double m = -kInf;
  bool nan = false;
  for (const Tensor& l : p.lses) {
    const double x = *lse_at(l, b, h, i);
    nan = nan || std::isnan(x);
    m = std::max(m, x);
  }
  if (nan) m = std::numeric_limits<double>::quiet_NaN();
  O* o = out_row<O>(p.out, b, i, h);
  const int64_t os = p.out.strides[3];
  if (m == -kInf) {  // no part saw a key: the fully-masked row of forward()
    for (int64_t c = 0; c < p.dim_v; ++c) o[c * os] = Elem<O>::store(Acc(0));
    if (p.has_lse) *lse_at(p.lse, b, h, i) = -std::numeric_limits<float>::infinity();
    return;
  }
  double sum = 0;  // >= 1 when m is finite: the largest part contributes exp(0)
  for (const Tensor& l : p.lses) {
    const double x = *lse_at(l, b, h, i);
    if (x != -kInf) sum += std::exp(x - m);
  }
  for (int64_t c0 = 0; c0 < p.dim_v; c0 += kTile) {
    const int64_t n = std::min(kTile, p.dim_v - c0);
    Acc acc[kTile] = {};
    for (size_t k = 0; k < p.outs.size(); ++k) {
      const double x = *lse_at(p.lses[k], b, h, i);
      if (x == -kInf) continue;  // an empty part: its out row is not read
      const Acc w = Acc(std::exp(x - m) / sum);
      const P* src = out_row<const P>(p.outs[k], b, i, h) + c0 * p.outs[k].strides[3];
      const int64_t ss = p.outs[k].strides[3];
      for (int64_t c = 0; c < n; ++c) acc[c] += w * Acc(Elem<P>::load(src[c * ss]));
    }
    for (int64_t c = 0; c < n; ++c) o[(c0 + c) * os] = Elem<O>::store(acc[c]);
  }
  if (p.has_lse) *lse_at(p.lse, b, h, i) = float(m + std::log(sum));
}

template <typename P, typename O>
void merge_all(const MergeParams& p) {
  // Rows are independent; blocks of about kItemWork element reads amortise the scheduling, and
  // small merges (memory-bound, microseconds) stay on the calling thread.
  constexpr int64_t kItemWork = 1 << 14;
  const int64_t rows = p.batch * p.heads * p.seq_q;
  const int64_t row_work = int64_t(p.outs.size() + 1) * (p.dim_v + 1);
  const int64_t rows_per_item = std::max<int64_t>(1, kItemWork / row_work);
  const int64_t items = (rows + rows_per_item - 1) / rows_per_item;
  parallel_for_items(items, p.threads, nullptr, 0, [&](int64_t item, char*) {
    const int64_t end = std::min(rows, (item + 1) * rows_per_item);
    for (int64_t r = item * rows_per_item; r < end; ++r)
      merge_row<P, O>(p, r / (p.heads * p.seq_q), r / p.seq_q % p.heads, r % p.seq_q);
  });
}

template <typename P>
void merge_into(const MergeParams& p) {
  switch (p.out.dtype) {
    case DType::bf16: return merge_all<P, bf16>(p);
    case DType::f16: return merge_all<P, f16>(p);
    default: return merge_all<P, float>(p);
  }
}

}  // namespace

void merge_rows(const MergeParams& p) {
  // Nothing to write (dim_v = 0 without lse may pair with any row count: do not walk them).
  if (p.batch == 0 || p.heads == 0 || p.seq_q == 0 || (p.dim_v == 0 && !p.has_lse)) return;
  // With no parts every row is empty; the part dtype then only has to match out's precision.
  const DType parts = p.outs.empty() ? p.out.dtype : p.outs[0].dtype;
  switch (parts) {
    case DType::f64: return merge_all<double, double>(p);
    case DType::bf16: return merge_into<bf16>(p);
    case DType::f16: return merge_into<f16>(p);
    default: return merge_into<float>(p);
  }
}

}  // namespace detail

void merge(std::span<const Tensor> outs, std::span<const Tensor> lses, const Tensor& out,
           const Tensor* lse, const MergeOptions& options) {
  detail::merge_rows(detail::make_merge_params(outs, lses, out, lse, options));
}

}  // namespace memattn
