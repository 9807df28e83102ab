// The C API (memattn/memattn.h): checks what only C can get wrong (null pointers, enum values out
// of range), converts to the C++ types, calls the C++ API and turns every exception into a status.
#include "memattn/memattn.h"

#include <algorithm>
#include <cstdio>
#include <iterator>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "api/c_bridge.hpp"
#include "memattn/memattn.hpp"

#ifndef MEMATTN_VERSION_STRING
#error "MEMATTN_VERSION_STRING (the CMake project version) must be defined by the build"
#endif

namespace {

using memattn::Error;
using memattn::ErrorCode;
using memattn::Tensor;

// The C codes are the C++ codes' numbers, so a code maps by value; these keep the two in step.
static_assert(MEMATTN_INVALID_ARGUMENT == int(ErrorCode::invalid_argument));
static_assert(MEMATTN_SIZE_OVERFLOW == int(ErrorCode::size_overflow));
static_assert(MEMATTN_WORKSPACE_TOO_SMALL == int(ErrorCode::workspace_too_small));
static_assert(MEMATTN_ALIASING == int(ErrorCode::aliasing));
static_assert(MEMATTN_OUT_OF_MEMORY == int(ErrorCode::out_of_memory));
static_assert(MEMATTN_UNSUPPORTED == int(ErrorCode::unsupported));
static_assert(MEMATTN_WRONG_DTYPE == int(ErrorCode::wrong_dtype));
// Likewise the C enums are the C++ enums' numbers; each name table below is indexed by them.
static_assert(MEMATTN_F32 == int(memattn::DType::f32) &&
              MEMATTN_BF16 == int(memattn::DType::bf16) &&
              MEMATTN_F16 == int(memattn::DType::f16) &&
              MEMATTN_F64 == int(memattn::DType::f64) && MEMATTN_U8 == int(memattn::DType::u8) &&
              MEMATTN_I32 == int(memattn::DType::i32) && MEMATTN_I64 == int(memattn::DType::i64));
static_assert(MEMATTN_ALGORITHM_AUTOMATIC == int(memattn::Algorithm::automatic) &&
              MEMATTN_ALGORITHM_NAIVE == int(memattn::Algorithm::naive) &&
              MEMATTN_ALGORITHM_SEQUENTIAL == int(memattn::Algorithm::sequential) &&
              MEMATTN_ALGORITHM_CHUNKED == int(memattn::Algorithm::chunked) &&
              MEMATTN_ALGORITHM_FLASH == int(memattn::Algorithm::flash));
static_assert(MEMATTN_ALIGN_TOP_LEFT == int(memattn::Align::top_left) &&
              MEMATTN_ALIGN_BOTTOM_RIGHT == int(memattn::Align::bottom_right));

constexpr const char* kStatusNames[] = {
    "MEMATTN_OK",       "MEMATTN_INVALID_ARGUMENT", "MEMATTN_SIZE_OVERFLOW",
    "MEMATTN_WORKSPACE_TOO_SMALL", "MEMATTN_ALIASING", "MEMATTN_OUT_OF_MEMORY",
    "MEMATTN_UNSUPPORTED", "MEMATTN_WRONG_DTYPE"};
constexpr const char* kDTypeNames[] = {"MEMATTN_F32", "MEMATTN_BF16", "MEMATTN_F16", "MEMATTN_F64",
                                       "MEMATTN_U8",  "MEMATTN_I32",  "MEMATTN_I64"};
constexpr const char* kAlgorithmNames[] = {
    "MEMATTN_ALGORITHM_AUTOMATIC", "MEMATTN_ALGORITHM_NAIVE", "MEMATTN_ALGORITHM_SEQUENTIAL",
    "MEMATTN_ALGORITHM_CHUNKED", "MEMATTN_ALGORITHM_FLASH"};
constexpr const char* kAlignNames[] = {"MEMATTN_ALIGN_TOP_LEFT", "MEMATTN_ALIGN_BOTTOM_RIGHT"};
static_assert(std::size(kStatusNames) == MEMATTN_WRONG_DTYPE + 1 &&
              std::size(kDTypeNames) == MEMATTN_I64 + 1 &&
              std::size(kAlgorithmNames) == MEMATTN_ALGORITHM_FLASH + 1 &&
              std::size(kAlignNames) == MEMATTN_ALIGN_BOTTOM_RIGHT + 1);

// Fixed storage: recording an error never allocates, so it cannot fail while reporting one.
thread_local char t_last_error[1024];

memattn_status record(memattn_status status, const char* prefix, const char* message) noexcept {
  std::snprintf(t_last_error, sizeof t_last_error, "%s%s", prefix, message);
  return status;
}

// Runs the body of one C entry point; no exception crosses into C.
template <typename Body>
memattn_status guarded(Body&& body) noexcept {
  try {
    body();
    return MEMATTN_OK;
  } catch (const Error& e) {
    const int code = int(e.code());
    const bool known = code > MEMATTN_OK && code < int(std::size(kStatusNames));
    return record(known ? memattn_status(code) : MEMATTN_INTERNAL, "", e.what());
  } catch (const std::bad_alloc&) {
    return record(MEMATTN_OUT_OF_MEMORY, "", "out of memory (std::bad_alloc)");
  } catch (const std::exception& e) {
    return record(MEMATTN_INTERNAL, "internal error: ", e.what());
  } catch (...) {
    return record(MEMATTN_INTERNAL, "internal error: ", "unknown exception");
  }
}

[[noreturn]] void invalid(const std::string& message) {
  throw Error(ErrorCode::invalid_argument, message);
}

template <typename T>
T& required(T* p, const char* name) {
  if (p == nullptr) invalid(std::string(name) + ": null pointer, expected a valid pointer");
  return *p;
}

// An enum field as C stored it, which may be any int: converted only when it names a value.
template <typename E, size_t N>
E checked_enum(int value, const std::string& field, const char* const (&names)[N]) {
  if (value >= 0 && value < int(N)) return E(value);
  std::string expected;
  for (size_t i = 0; i < N; ++i)
    expected += (i ? ", " : "") + std::string(names[i]) + " (" + std::to_string(i) + ")";
  invalid(field + ": expected one of " + expected + ", got " + std::to_string(value));
}

Tensor to_tensor(const memattn_tensor* c, const char* name) {
  const memattn_tensor& t = required(c, name);
  Tensor r;
  r.data = t.data;
  r.dtype = checked_enum<memattn::DType>(t.dtype, std::string(name) + ".dtype", kDTypeNames);
  r.ndim = t.ndim;
  std::copy_n(t.shape, 4, r.shape.begin());
  std::copy_n(t.strides, 4, r.strides.begin());
  return r;
}

std::optional<Tensor> to_optional_tensor(const memattn_tensor* c, const char* name) {
  return c ? std::optional(to_tensor(c, name)) : std::nullopt;
}

const Tensor* pointer_to(const std::optional<Tensor>& t) { return t ? &*t : nullptr; }

// memattn::Options and the mask, bias, ALiBi slopes, sinks and cu_seqlens tensors it points to,
// kept alive together.
struct CppOptions {
  std::optional<Tensor> mask, bias, alibi_slopes, sinks, cu_seqlens_q, cu_seqlens_k;
  memattn::Options options;

  explicit CppOptions(const memattn_options* c) {
    const memattn_options& o = required(c, "options");
    mask = to_optional_tensor(o.mask, "options.mask");
    bias = to_optional_tensor(o.bias, "options.bias");
    alibi_slopes = to_optional_tensor(o.alibi_slopes, "options.alibi_slopes");
    sinks = to_optional_tensor(o.sinks, "options.sinks");
    if (o.has_scale) options.scale = o.scale;
    options.algorithm =
        checked_enum<memattn::Algorithm>(o.algorithm, "options.algorithm", kAlgorithmNames);
    options.query_chunk = o.query_chunk;
    options.key_chunk = o.key_chunk;
    options.causal = o.causal != 0;
    options.align = checked_enum<memattn::Align>(o.align, "options.align", kAlignNames);
    options.window_left = o.window_left;
    options.window_right = o.window_right;
    options.diagonal_offset = o.diagonal_offset;
    options.mask = pointer_to(mask);
    options.bias = pointer_to(bias);
    options.softcap = o.softcap;
    options.alibi_slopes = pointer_to(alibi_slopes);
    options.sinks = pointer_to(sinks);
    options.num_threads = o.num_threads;
    options.target = o.target;
    cu_seqlens_q = to_optional_tensor(o.cu_seqlens_q, "options.cu_seqlens_q");
    cu_seqlens_k = to_optional_tensor(o.cu_seqlens_k, "options.cu_seqlens_k");
    options.cu_seqlens_q = pointer_to(cu_seqlens_q);
    options.cu_seqlens_k = pointer_to(cu_seqlens_k);
    options.max_seqlen_q = o.max_seqlen_q;
    options.max_seqlen_k = o.max_seqlen_k;
  }
  CppOptions(const CppOptions&) = delete;  // options points into this object
  CppOptions& operator=(const CppOptions&) = delete;
};

memattn::Workspace to_workspace(memattn_workspace w) { return {w.data, w.bytes}; }

}  // namespace

extern "C" {

memattn_options memattn_options_default(void) {
  memattn_options o{};
  o.algorithm = MEMATTN_ALGORITHM_AUTOMATIC;
  o.align = MEMATTN_ALIGN_TOP_LEFT;
  o.window_left = o.window_right = -1;
  return o;
}

memattn_status memattn_forward(const memattn_tensor* q, const memattn_tensor* k,
                               const memattn_tensor* v, const memattn_tensor* out,
                               const memattn_tensor* lse, const memattn_options* options,
                               memattn_workspace workspace) {
  return guarded([&] {
    const Tensor cq = to_tensor(q, "q"), ck = to_tensor(k, "k"), cv = to_tensor(v, "v");
    const Tensor cout = to_tensor(out, "out");
    const std::optional<Tensor> clse = to_optional_tensor(lse, "lse");
    const CppOptions o(options);
    memattn::forward(cq, ck, cv, cout, pointer_to(clse), o.options, to_workspace(workspace));
  });
}

memattn_status memattn_workspace_bytes(const memattn_tensor* q, const memattn_tensor* k,
                                       const memattn_tensor* v, const memattn_options* options,
                                       size_t* bytes) {
  return guarded([&] {
    const Tensor cq = to_tensor(q, "q"), ck = to_tensor(k, "k"), cv = to_tensor(v, "v");
    const CppOptions o(options);
    size_t& result = required(bytes, "bytes");
    result = memattn::workspace_bytes(cq, ck, cv, o.options);
  });
}

memattn_status memattn_attention_with_kvcache(const memattn_tensor* q, const memattn_tensor* k_cache,
                                              const memattn_tensor* v_cache, const memattn_tensor* seqlens_k,
                                              const memattn_tensor* block_table, const memattn_tensor* out,
                                              const memattn_tensor* lse, const memattn_options* options,
                                              memattn_workspace workspace) {
  return guarded([&] {
    const Tensor cq = to_tensor(q, "q"), ck = to_tensor(k_cache, "k_cache"), cv = to_tensor(v_cache, "v_cache");
    const Tensor clens = to_tensor(seqlens_k, "seqlens_k"), cout = to_tensor(out, "out");
    const std::optional<Tensor> ctable = to_optional_tensor(block_table, "block_table");
    const std::optional<Tensor> clse = to_optional_tensor(lse, "lse");
    const CppOptions o(options);
    memattn::attention_with_kvcache(cq, ck, cv, clens, pointer_to(ctable), cout, pointer_to(clse), o.options,
                                    to_workspace(workspace));
  });
}

memattn_status memattn_kvcache_workspace_bytes(const memattn_tensor* q, const memattn_tensor* k_cache,
                                               const memattn_tensor* v_cache, const memattn_tensor* seqlens_k,
                                               const memattn_tensor* block_table, const memattn_options* options,
                                               size_t* bytes) {
  return guarded([&] {
    const Tensor cq = to_tensor(q, "q"), ck = to_tensor(k_cache, "k_cache"), cv = to_tensor(v_cache, "v_cache");
    const Tensor clens = to_tensor(seqlens_k, "seqlens_k");
    const std::optional<Tensor> ctable = to_optional_tensor(block_table, "block_table");
    const CppOptions o(options);
    size_t& result = required(bytes, "bytes");
    result = memattn::kvcache_workspace_bytes(cq, ck, cv, clens, pointer_to(ctable), o.options);
  });
}

memattn_status memattn_backward(const memattn_tensor* q, const memattn_tensor* k,
                                const memattn_tensor* v, const memattn_tensor* out,
                                const memattn_tensor* dout, const memattn_tensor* lse,
                                const memattn_tensor* dq, const memattn_tensor* dk,
                                const memattn_tensor* dv, const memattn_options* options,
                                const memattn_tensor* dbias, memattn_workspace workspace) {
  return memattn_backward_ex(q, k, v, out, dout, lse, dq, dk, dv, options, dbias, nullptr, workspace);
}

memattn_status memattn_backward_ex(const memattn_tensor* q, const memattn_tensor* k,
                                   const memattn_tensor* v, const memattn_tensor* out,
                                   const memattn_tensor* dout, const memattn_tensor* lse,
                                   const memattn_tensor* dq, const memattn_tensor* dk,
                                   const memattn_tensor* dv, const memattn_options* options,
                                   const memattn_tensor* dbias, const memattn_tensor* dsinks,
                                   memattn_workspace workspace) {
  return guarded([&] {
    const Tensor cq = to_tensor(q, "q"), ck = to_tensor(k, "k"), cv = to_tensor(v, "v");
    const Tensor cout = to_tensor(out, "out"), cdout = to_tensor(dout, "dout");
    const Tensor clse = to_tensor(lse, "lse");
    const Tensor cdq = to_tensor(dq, "dq"), cdk = to_tensor(dk, "dk"), cdv = to_tensor(dv, "dv");
    const std::optional<Tensor> cdbias = to_optional_tensor(dbias, "dbias");
    const std::optional<Tensor> cdsinks = to_optional_tensor(dsinks, "dsinks");
    const CppOptions o(options);
    memattn::backward(cq, ck, cv, cout, cdout, clse, cdq, cdk, cdv, o.options, pointer_to(cdbias),
                      to_workspace(workspace), pointer_to(cdsinks));
  });
}

memattn_status memattn_backward_workspace_bytes(const memattn_tensor* q, const memattn_tensor* k,
                                                const memattn_tensor* v,
                                                const memattn_options* options, int bias_grad,
                                                size_t* bytes) {
  return guarded([&] {
    const Tensor cq = to_tensor(q, "q"), ck = to_tensor(k, "k"), cv = to_tensor(v, "v");
    const CppOptions o(options);
    size_t& result = required(bytes, "bytes");
    result = memattn::backward_workspace_bytes(cq, ck, cv, o.options, {bias_grad != 0});
  });
}

memattn_status memattn_merge(const memattn_tensor* outs, const memattn_tensor* lses, size_t parts,
                             const memattn_tensor* out, const memattn_tensor* lse) {
  return guarded([&] {
    if (parts != 0) {  // with no parts the arrays are never read, so NULL is fine
      required(outs, "outs");
      required(lses, "lses");
    }
    std::vector<Tensor> couts, clses;
    for (size_t i = 0; i < parts; ++i) {
      const std::string index = "[" + std::to_string(i) + "]";
      couts.push_back(to_tensor(outs + i, ("outs" + index).c_str()));
      clses.push_back(to_tensor(lses + i, ("lses" + index).c_str()));
    }
    const Tensor cout = to_tensor(out, "out");
    const std::optional<Tensor> clse = to_optional_tensor(lse, "lse");
    memattn::merge(couts, clses, cout, pointer_to(clse));
  });
}

memattn_status memattn_set_allocator(const memattn_allocator* allocator,
                                     memattn_allocator* previous) {
  return guarded([&] {
    const memattn_allocator& next = required(allocator, "allocator");
    const memattn::Allocator old =
        memattn::set_allocator({next.allocate, next.deallocate, next.context});
    if (previous) *previous = {old.allocate, old.deallocate, old.context};
  });
}

const char* memattn_last_error(void) { return t_last_error; }

const char* memattn_status_name(memattn_status status) {
  const int s = status;
  if (s >= 0 && s < int(std::size(kStatusNames))) return kStatusNames[s];
  return s == MEMATTN_INTERNAL ? "MEMATTN_INTERNAL" : "unknown status";
}

const char* memattn_version(void) { return MEMATTN_VERSION_STRING; }

const char* memattn_supported_targets(void) {
  // Computed once; "" if even that failed (the list itself is fixed for the process).
  static const std::string joined = []() noexcept {
    std::string names;
    const memattn_status status = guarded([&] {
      for (const std::string& name : memattn::supported_targets())
        names += (names.empty() ? "" : ",") + name;
    });
    if (status != MEMATTN_OK) names.clear();
    return names;
  }();
  return joined.c_str();
}

const char* memattn_tile_family(memattn_dtype dtype, const memattn_options* options) {
  const char* family = nullptr;
  const memattn_status status = guarded([&] {
    const memattn::DType d = checked_enum<memattn::DType>(dtype, "dtype", kDTypeNames);
    const memattn_options defaults = memattn_options_default();
    const CppOptions o(options ? options : &defaults);
    family = memattn::tile_family(d, o.options);
  });
  return status == MEMATTN_OK ? family : nullptr;
}

const char* memattn_backward_tile_family(const memattn_tensor* q, const memattn_tensor* k,
                                         const memattn_tensor* v, const memattn_options* options) {
  const char* family = nullptr;
  const memattn_status status = guarded([&] {
    const Tensor cq = to_tensor(q, "q"), ck = to_tensor(k, "k"), cv = to_tensor(v, "v");
    const memattn_options defaults = memattn_options_default();
    const CppOptions o(options ? options : &defaults);
    family = memattn::backward_tile_family(cq, ck, cv, o.options);
  });
  return status == MEMATTN_OK ? family : nullptr;
}

}  // extern "C"

// The C front door's conversions, for the C entry points of other memattn libraries
// (memattn_dist), so that they check and report exactly as these do.
namespace memattn::detail {

memattn_status c_guarded(const std::function<void()>& body) noexcept { return guarded(body); }

Tensor c_tensor(const memattn_tensor* t, const char* name) { return to_tensor(t, name); }

void with_c_options(const memattn_options* options, const std::function<void(const Options&)>& use) {
  const CppOptions o(options);
  use(o.options);
}

}  // namespace memattn::detail
