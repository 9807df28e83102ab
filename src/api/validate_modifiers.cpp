// Validation of the score modifiers (softcap, ALiBi slopes, attention sinks) into a Params: each
// message names the option, what was expected and what was given.
#include <cmath>
#include <string>

#include "api/sequences.hpp"
#include "api/validate.hpp"

namespace memattn::detail {
namespace {

// An f32 per-head operand: `name` with shape [heads_q], or also [batch, heads_q] when
// `per_batch` is allowed (batch: the sequences of a varlen call); every value finite (read here,
// before anything is written).
View check_per_head(const Tensor& t, const char* name, const Params& p, bool per_batch, const Options& o) {
  const bool varlen = is_varlen(o) && o.cu_seqlens_q != nullptr;
  const int64_t batch = varlen ? o.cu_seqlens_q->shape[0] - 1 : p.batch;
  const std::string expected =
      per_batch ? cat("[", p.heads_q, "] or [", batch, ",", p.heads_q, "] ([heads_q] or [",
                      varlen ? "sequences" : "batch", ", heads_q])")
                : cat("[", p.heads_q, "] ([heads_q])");
  if (t.ndim != 1 && !(per_batch && t.ndim == 2))
    fail(ErrorCode::invalid_argument,
         cat(name, ": expected shape ", expected, ", got ", t.ndim, " dimensions"));
  check_tensor(t, name, t.ndim);
  if (t.dtype != DType::f32)
    fail(ErrorCode::wrong_dtype, cat(name, ": dtype must be f32, got ", dtype_name(t.dtype)));
  const bool batched = t.ndim == 2;
  if (t.shape[batched ? 1 : 0] != p.heads_q || (batched && t.shape[0] != batch))
    fail(ErrorCode::invalid_argument,
         cat(name, ": shape ", shape_str(t), " expected ", expected));
  View v;
  v.data = t.data;
  v.dtype = t.dtype;
  // Indexed as (b, h): a [heads_q] tensor is the same for every batch.
  v.stride[0] = batched && t.shape[0] > 1 ? t.strides[0] : 0;
  v.stride[1] = t.shape[batched ? 1 : 0] > 1 ? t.strides[batched ? 1 : 0] : 0;
  for (int64_t b = 0; b < (batched ? batch : 1); ++b)
    for (int64_t h = 0; h < p.heads_q; ++h) {
      const float x = *v.at<float>(b, h, 0);
      if (!std::isfinite(x))
        fail(ErrorCode::invalid_argument,
             cat(name, ": values must be finite, got ", x, " at ",
                 batched ? cat("[", b, ",", h, "]") : cat("[", h, "]")));
    }
  return v;
}

}  // namespace

void check_score_modifiers(Params& p, const Options& o) {
  if (!std::isfinite(o.softcap) || o.softcap < 0)
    fail(ErrorCode::invalid_argument,
         cat("softcap must be finite and >= 0 (0: off), got ", o.softcap));
  p.softcap64 = o.softcap;
  p.softcap = float(o.softcap);
  if (p.dtype != DType::f64 && o.softcap > 0 && !(std::isfinite(p.softcap) && p.softcap > 0))
    fail(ErrorCode::invalid_argument,
         cat("softcap ", o.softcap, " is beyond the float range of the scores for ",
             dtype_name(p.dtype), " inputs (it must round to a float > 0 and <= 3.4e38; f64 inputs take any)"));
  if (p.dtype != DType::f64) p.softcap64 = double(p.softcap);
  if (o.alibi_slopes) {
    p.alibi = check_per_head(*o.alibi_slopes, "alibi_slopes", p, true, o);
    p.has_alibi = true;
  }
  if (o.sinks) {
    p.sinks = check_per_head(*o.sinks, "sinks", p, false, o);
    p.has_sinks = true;
  }
}

}  // namespace memattn::detail
