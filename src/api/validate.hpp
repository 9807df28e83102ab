// Argument checks shared by every entry point: each failure throws memattn::Error naming the
// argument, what was expected and what was given, before any output is touched.
#pragma once

#include <sstream>
#include <string>

#include "api/params.hpp"
#include "memattn/error.hpp"
#include "memattn/types.hpp"

namespace memattn::detail {

[[noreturn]] void fail(ErrorCode code, const std::string& message);
// The pieces of an error message, streamed one after the other.
template <typename... A>
std::string cat(const A&... a) {
  std::ostringstream s;
  (s << ... << a);
  return s.str();
}
std::string shape_str(const Tensor& t);

// Element span of a view in bytes, or throws size_overflow naming `name`.
struct Span {
  const char* lo = nullptr;  // first byte
  const char* hi = nullptr;  // one past the last byte; lo == hi for an empty tensor
};
Span byte_span(const Tensor& t, const char* name);

// Rank, non-negative dims, null pointers and 64-bit size arithmetic of one operand.
void check_tensor(const Tensor& t, const char* name, int ndim);
// An output must not overlap itself (no zero stride on an extent > 1, no interleaved dims).
void check_writable(const Tensor& t, const char* name);
// Throws ErrorCode::aliasing when `out` may share an element with `in`.
void check_no_alias(const Tensor& out, const char* out_name, const Tensor& in, const char* in_name);

// The kernel-side view of a validated tensor (size-1 dims get stride 0).
View make_view(const Tensor& t);

// Checks options.softcap, alibi_slopes and sinks against p's shapes and fills their fields.
void check_score_modifiers(Params& p, const Options& o);
// Sets causal, diag and the (clamped) window of p from the options and p.seq_q, p.seq_k.
void resolve_diagonal(Params& p, const Options& o);

// Fills the shape, operand and mask fields of Params from the forward operands and options.
// out may be null when only sizing a workspace.
Params make_forward_params(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor* out,
                           const Tensor* lse, const Options& options);

}  // namespace memattn::detail
