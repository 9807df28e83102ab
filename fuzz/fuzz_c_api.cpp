// libFuzzer harness of the C API: the decoded calls through memattn.h, equal to the C++ API's, plus null pointers, out-of-range enums, bad ndim and a failing allocator.
#include <array>
#include <climits>
#include <cstring>

#include "fuzz_checks.hpp"
#include "memattn/memattn.h"

namespace {

using fuzz::Pass;
using fuzz::Problem;

std::vector<std::string> g_targets;

// What only a C caller can get wrong, applied to one call; every kind must be refused with
// MEMATTN_INVALID_ARGUMENT before anything is written.
struct Corruption {
  enum Kind { none, null_pointer, dtype, algorithm, align, ndim } kind = none;
  int which = 0;  // the pointer or tensor it hits
  int value = 0;  // the raw enum or ndim value
};

memattn_tensor to_c(const fuzz::Operand& op) {
  memattn_tensor t{};
  t.data = op.view.data;
  t.dtype = memattn_dtype(int(op.view.dtype));
  t.ndim = op.view.ndim;
  std::memcpy(t.shape, op.view.shape.data(), sizeof t.shape);
  std::memcpy(t.strides, op.view.strides.data(), sizeof t.strides);
  return t;
}

// The operands in the order Corruption::which counts them; 12 names the options pointer.
constexpr int kOperands = 12;
std::array<const fuzz::Operand*, kOperands> operands_of(const Problem& p) {
  return {&p.q, &p.k, &p.v, &p.out, &p.lse, &p.dout, &p.dq, &p.dk, &p.dv, &p.dbias, &p.mask, &p.bias};
}

struct CFrontDoor : fuzz::FrontDoor {
  Corruption corruption;

  int call(const Problem& p, Pass pass, int num_threads, memattn::Workspace ws, size_t* bytes) override {
    const auto operands = operands_of(p);
    memattn_tensor t[kOperands];
    const memattn_tensor* ptr[kOperands];
    for (int i = 0; i < kOperands; ++i) t[i] = to_c(*operands[i]), ptr[i] = operands[i]->present ? &t[i] : nullptr;
    memattn_options o = memattn_options_default();
    const memattn::Options& cpp = p.options;
    o.has_scale = cpp.scale.has_value(), o.scale = cpp.scale.value_or(0.0);
    o.algorithm = memattn_algorithm(int(cpp.algorithm));
    o.query_chunk = cpp.query_chunk, o.key_chunk = cpp.key_chunk;
    o.causal = cpp.causal, o.align = memattn_align(int(cpp.align));
    o.window_left = cpp.window_left, o.window_right = cpp.window_right;
    o.mask = ptr[10], o.bias = ptr[11], o.num_threads = num_threads, o.target = cpp.target;
    // Operands of the later options and calls (modifiers, varlen, KV cache, dsinks): passed as
    // decoded; the corruptions above keep to the first twelve.
    const std::array<const fuzz::Operand*, 7> later = {&p.alibi, &p.sinks, &p.cu_seqlens_q, &p.cu_seqlens_k,
                                                       &p.seqlens_k, &p.block_table, &p.dsinks};
    memattn_tensor lt[later.size()];
    const memattn_tensor* lp[later.size()];
    for (size_t i = 0; i < later.size(); ++i) lt[i] = to_c(*later[i]), lp[i] = later[i]->present ? &lt[i] : nullptr;
    o.softcap = cpp.softcap, o.alibi_slopes = lp[0], o.sinks = lp[1];
    o.cu_seqlens_q = cpp.cu_seqlens_q ? lp[2] : nullptr, o.cu_seqlens_k = cpp.cu_seqlens_k ? lp[3] : nullptr;
    o.max_seqlen_q = cpp.max_seqlen_q, o.max_seqlen_k = cpp.max_seqlen_k;
    const memattn_options* options = &o;
    const Corruption& c = corruption;
    if (c.kind == Corruption::null_pointer && c.which == kOperands) options = nullptr;
    if (c.kind == Corruption::null_pointer && c.which < kOperands) ptr[c.which] = nullptr;
    if (c.kind == Corruption::dtype) t[c.which].dtype = memattn_dtype(c.value);
    if (c.kind == Corruption::ndim) t[c.which].ndim = c.value;
    if (c.kind == Corruption::algorithm) o.algorithm = memattn_algorithm(c.value);
    if (c.kind == Corruption::align) o.align = memattn_align(c.value);
    const memattn_workspace w{ws.data, ws.bytes};
    memattn_status s;
    if (pass == Pass::forward && p.mode == fuzz::Mode::kvcache)
      s = bytes ? memattn_kvcache_workspace_bytes(ptr[0], ptr[1], ptr[2], lp[4], lp[5], options, bytes)
                : memattn_attention_with_kvcache(ptr[0], ptr[1], ptr[2], lp[4], lp[5], ptr[3], ptr[4], options, w);
    else if (pass == Pass::forward)
      s = bytes ? memattn_workspace_bytes(ptr[0], ptr[1], ptr[2], options, bytes)
                : memattn_forward(ptr[0], ptr[1], ptr[2], ptr[3], ptr[4], options, w);
    else if (bytes)
      s = memattn_backward_workspace_bytes(ptr[0], ptr[1], ptr[2], options, p.dbias.present, bytes);
    else if (p.dsinks.present)
      s = memattn_backward_ex(ptr[0], ptr[1], ptr[2], ptr[3], ptr[5], ptr[4], ptr[6], ptr[7], ptr[8], options, ptr[9],
                              lp[6], w);
    else
      s = memattn_backward(ptr[0], ptr[1], ptr[2], ptr[3], ptr[5], ptr[4], ptr[6], ptr[7], ptr[8], options, ptr[9], w);
    fuzz::check(s != MEMATTN_INTERNAL, std::string("MEMATTN_INTERNAL: ") + memattn_last_error());
    fuzz::check(s == MEMATTN_OK || memattn_last_error()[0] != '\0', "a failed C call left memattn_last_error() empty");
    fuzz::check(std::strcmp(memattn_status_name(s), "unknown status") != 0, "a C call returned an unnamed status");
    return int(s);
  }
};

// Fails every allocation: calls must report MEMATTN_OUT_OF_MEMORY (or another error) and write nothing.
void* refuse(size_t, size_t, void*) { return nullptr; }
void never_called(void*, size_t, void*) { fuzz::fail("deallocate called for memory that was never allocated"); }

// The C door must agree with the C++ door bit for bit: same status, same bytes written.
void check_same_as_cpp(CFrontDoor& c_door, const Problem& p) {
  fuzz::CppFrontDoor cpp_door;
  const fuzz::Snapshot start = fuzz::snapshot(p);
  for (Pass pass : {Pass::forward, Pass::backward}) {
    if (pass == Pass::backward && !p.backward) return;
    const fuzz::Snapshot before = fuzz::snapshot(p);
    const int c_status = c_door.call(p, pass, 1, {}, nullptr);
    const fuzz::Snapshot after_c = fuzz::snapshot(p);
    fuzz::restore(before);
    const int cpp_status = cpp_door.call(p, pass, 1, {}, nullptr);
    // The backward requires lse: C refuses its NULL before anything else, C++ the empty view where
    // its checks reach it (another error may come first), so both refuse, maybe with other codes.
    if (pass == Pass::backward && !p.lse.present)
      fuzz::check(c_status == MEMATTN_INVALID_ARGUMENT && cpp_status != 0, "a backward without lse was not refused");
    else
      fuzz::check(c_status == cpp_status, "C status " + std::to_string(c_status) + " != C++ error code " + std::to_string(cpp_status));
    fuzz::check(fuzz::snapshot(p) == after_c, "the C and C++ APIs wrote different bytes");
    if (cpp_status != 0) break;
  }
  fuzz::restore(start);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_targets = fuzz::start();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  CFrontDoor door;
  static constexpr int kRawEnums[] = {5, 9, -1, 255, 256, INT_MAX, INT_MIN, 2, 7};
  static constexpr int kRawNdims[] = {-1, 0, 1, 2, 5, 100};
  Corruption& c = door.corruption;
  c.kind = Corruption::Kind(in.ConsumeIntegralInRange(0, 11) < 6 ? 0 : in.ConsumeIntegralInRange(1, 5));
  c.which = in.ConsumeIntegralInRange(0, kOperands);
  c.value = c.kind == Corruption::ndim ? kRawNdims[in.ConsumeIntegralInRange<size_t>(0, std::size(kRawNdims) - 1)]
                                       : kRawEnums[in.ConsumeIntegralInRange<size_t>(0, std::size(kRawEnums) - 1)];
  const bool failing_allocator = in.ConsumeIntegralInRange(0, 15) == 0;
  Problem p;
  fuzz::decode(in, p, g_targets);
  fuzz::check(memattn_version()[0] != '\0' && memattn_supported_targets()[0] != '\0', "empty version or target list");

  const bool tensor_hit = (c.kind == Corruption::null_pointer || c.kind == Corruption::dtype || c.kind == Corruption::ndim) &&
                          c.which < kOperands;
  const auto hit_operands = operands_of(p);
  // A corruption of a tensor the call does not pass (absent, or backward-only in a forward call) changes nothing.
  const bool effective = (c.kind == Corruption::algorithm && (c.value < 0 || c.value > MEMATTN_ALGORITHM_FLASH)) ||
                         (c.kind == Corruption::align && (c.value < 0 || c.value > MEMATTN_ALIGN_BOTTOM_RIGHT)) ||
                         (c.kind == Corruption::null_pointer && c.which == kOperands) ||
                         (tensor_hit && hit_operands[c.which]->present && (c.which <= 4 || c.which >= 10) &&
                          !(c.kind == Corruption::null_pointer && (c.which == 4 || c.which >= 10)) &&
                          !(c.kind == Corruption::dtype && c.value >= 0 && c.value <= 4) &&
                          !(c.kind == Corruption::ndim && c.value == hit_operands[c.which]->view.ndim));
  if (c.kind != Corruption::none) {
    // A call the decoder already made invalid may fail first for that (e.g. unsupported).
    if (!effective || p.huge || !p.refusal.empty()) return 0;
    const fuzz::Snapshot before = fuzz::snapshot(p);
    const int status = door.call(p, Pass::forward, p.options.num_threads, {}, nullptr);
    fuzz::check(status == MEMATTN_INVALID_ARGUMENT || status == MEMATTN_WRONG_DTYPE,
                "a C-only corruption (kind " + std::to_string(c.kind) + ", operand " + std::to_string(c.which) + ", value " +
                    std::to_string(c.value) + ") got status " + std::to_string(status) + ": " + memattn_last_error());
    fuzz::check_unchanged(before, "a refused C call touched memory");
    return 0;
  }
  if (failing_allocator && !p.huge) {
    const memattn_allocator refusing{refuse, never_called, nullptr};
    memattn_allocator previous{};
    fuzz::check(memattn_set_allocator(&refusing, &previous) == MEMATTN_OK, "memattn_set_allocator failed");
    const fuzz::Snapshot before = fuzz::snapshot(p);
    const int status = door.call(p, Pass::forward, p.options.num_threads, {}, nullptr);
    memattn_set_allocator(&previous, nullptr);
    if (status != MEMATTN_OK) fuzz::check_unchanged(before, "a call that failed to allocate touched memory");
    return 0;
  }
  fuzz::exercise(door, p);
  if (!p.huge) check_same_as_cpp(door, p);
  return 0;
}
