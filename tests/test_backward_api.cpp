// backward() as an API: argument errors with outputs untouched (TESTPLAN 1-13 for the new
// operands), allocation faults (14), workspace contract and memory scaling, saved-lse
// equivalence (32), layouts of every operand (33) and determinism (37).
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <functional>
#include <limits>
#include <numeric>

#include "fault_support.hpp"
#include "support_backward.hpp"

using namespace mt;
using memattn::Algorithm;
using memattn::Align;
using memattn::ErrorCode;

namespace {

const double kNaN = std::numeric_limits<double>::quiet_NaN();

// The operands of one backward call; tests replace the one under test.
struct BwdCall {
  Tensor q, k, v, out, dout, lse, dq, dk, dv;
  std::optional<Tensor> dbias;
  memattn::Options options;
  explicit BwdCall(BackwardCase& c)
      : q(c.q.view()), k(c.k.view()), v(c.v.view()), out(c.out.view()), dout(c.dout.view()),
        lse(c.lse.view()), dq(c.dq.view()), dk(c.dk.view()), dv(c.dv.view()), options(c.options) {
    if (c.dbias) dbias = c.dbias->view();
  }
  void run(memattn::Workspace ws = {}) const {
    memattn::backward(q, k, v, out, dout, lse, dq, dk, dv, options, dbias ? &*dbias : nullptr, ws);
  }
};

BackwardCase small_case(uint64_t seed = 500) {
  BackwardCase c(Shape{2, 9, 11, 4, 2, 8, 6}, DType::f32, seed);
  c.run();
  return c;
}

void expect_bwd_error(BackwardCase& c, const BwdCall& call, ErrorCode code,
                      const std::vector<std::string>& parts) {
  std::vector<Buf*> outputs{&c.dq, &c.dk, &c.dv};
  if (c.dbias) outputs.push_back(&*c.dbias);
  expect_error([&] { call.run(); }, code, parts, outputs);
}

// A copy of `src` in another memory layout. mode 0: dims 1 and 2 swapped in memory (BHSD for the
// [B, S, H, D] operands); 1: a last-dim stride of 2; 2: dim 1 walked backwards (negative stride).
Embedded relayout(const Buf& src, int mode) {
  const int n = int(src.shape.size());
  std::vector<int> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  if (mode == 0 && n == 4) std::swap(order[1], order[2]);
  std::vector<int64_t> stride(static_cast<size_t>(n));
  stride[size_t(order[size_t(n - 1)])] = mode == 1 ? 2 : 1;
  for (int d = n - 2; d >= 0; --d)
    stride[size_t(order[size_t(d)])] =
        stride[size_t(order[size_t(d + 1)])] * std::max<int64_t>(src.shape[size_t(order[size_t(d + 1)])], 1);
  const int64_t total = stride[size_t(order[0])] * std::max<int64_t>(src.shape[size_t(order[0])], 1);
  Embedded e{Buf(src.dtype, {total}), Tensor{}};
  e.storage.fill(src.dtype == DType::u8 ? 1 : kNaN);
  e.view = e.storage.view();
  e.view.ndim = n;
  int64_t offset = 0;
  for (int d = 0; d < n; ++d) {
    e.view.shape[size_t(d)] = src.shape[size_t(d)];
    e.view.strides[size_t(d)] = stride[size_t(d)];
  }
  if (mode == 2) {
    offset = (src.shape[1] - 1) * stride[1];
    e.view.strides[1] = -stride[1];
  }
  e.view.data = e.storage.bytes.data() + offset * int64_t(memattn::dtype_size(src.dtype));
  copy_to_view(src, e.view);
  return e;
}

}  // namespace

TEST(BackwardErrors, err_shapes_dtypes_and_options) {
  BackwardCase c = small_case();
  Buf wrong_dq(DType::f32, {2, 9, 4, 7}), bf_dk(DType::bf16, {2, 11, 2, 8}), short_dout(DType::f32, {2, 8, 4, 6});
  Buf lse64(DType::f64, {2, 4, 9}), lse_bad(DType::f32, {2, 9, 4});
  {
    BwdCall call(c);
    call.dq = wrong_dq.view();
    expect_bwd_error(c, call, ErrorCode::invalid_argument, {"dq", "[2,9,4,7]", "[2,9,4,8]"});
  }
  {
    BwdCall call(c);
    call.dk = bf_dk.view();
    expect_bwd_error(c, call, ErrorCode::wrong_dtype, {"dk", "dtype", "f32", "bf16"});
  }
  {
    BwdCall call(c);
    call.dout = short_dout.view();
    expect_bwd_error(c, call, ErrorCode::invalid_argument, {"dout", "[2,8,4,6]", "[2,9,4,6]"});
  }
  {
    BwdCall call(c);
    call.lse = lse64.view();
    expect_bwd_error(c, call, ErrorCode::wrong_dtype, {"lse", "f32", "f64"});
    call.lse = lse_bad.view();
    expect_bwd_error(c, call, ErrorCode::invalid_argument, {"lse", "[2,9,4]", "[2,4,9]"});
  }
  {
    BwdCall call(c);
    call.options.algorithm = Algorithm::chunked;
    expect_bwd_error(c, call, ErrorCode::unsupported, {"algorithm", "naive and flash", "chunked"});
  }
  {
    BwdCall call(c);
    call.dbias = c.dq.view();  // no bias to differentiate
    expect_bwd_error(c, call, ErrorCode::invalid_argument, {"dbias", "options.bias"});
  }
  c.set_bias({1, 4, 9, 11}, DType::f32, randn_values(4 * 9 * 11, 1));
  Buf db_wrong(DType::f32, {1, 4, 9, 1}), db_bf(DType::bf16, {1, 4, 9, 11});
  {
    BwdCall call(c);
    call.dbias = db_wrong.view();
    expect_bwd_error(c, call, ErrorCode::invalid_argument, {"dbias", "[1,4,9,1]", "[1,4,9,11]"});
    call.dbias = db_bf.view();
    expect_bwd_error(c, call, ErrorCode::wrong_dtype, {"dbias", "f32", "bf16"});
  }
  BackwardCase f64(Shape{1, 3, 3, 1, 1, 4, 4}, DType::f64, 2);
  f64.run();
  BwdCall call(f64);
  call.options.algorithm = Algorithm::flash;
  expect_bwd_error(f64, call, ErrorCode::unsupported, {"flash", "f64", "naive"});
  EXPECT_THROW(memattn::backward_workspace_bytes(call.q, call.k, call.v, call.options), memattn::Error);
}

// Gradients that overlap an input or each other are refused (PyTorch's message); disjoint
// interleaved views of one buffer (dk and dv packed as [B, S, 2, H, D]) are accepted (TESTPLAN 9).
TEST(BackwardErrors, err_alias_output) {
  BackwardCase c(Shape{1, 6, 6, 2, 2, 8, 8}, DType::f32, 510);
  c.run();
  {
    BwdCall call(c);
    call.dk = call.dq;
    expect_bwd_error(c, call, ErrorCode::aliasing, {"dk", "dq", "refer to a single memory location"});
  }
  {
    BwdCall call(c);
    call.dq = call.q;
    expect_bwd_error(c, call, ErrorCode::aliasing, {"dq", "q"});
    call = BwdCall(c);
    call.dv = call.dout;
    expect_bwd_error(c, call, ErrorCode::aliasing, {"dv", "dout"});
    call = BwdCall(c);
    call.dq.strides[1] = 0;
    expect_bwd_error(c, call, ErrorCode::invalid_argument, {"dq", "stride[1] is 0"});
  }
  Buf packed(DType::f32, {1, 6, 2, 2, 8});
  packed.fill(kNaN);
  BwdCall call(c);
  call.dk = Tensor::strided(packed.data(), DType::f32, {1, 6, 2, 8}, {192, 32, 8, 1});
  call.dv = Tensor::strided(static_cast<float*>(packed.data()) + 16, DType::f32, {1, 6, 2, 8}, {192, 32, 8, 1});
  ASSERT_NO_THROW(call.run());
  c.run_backward();
  Buf dk(DType::f32, {1, 6, 2, 8}), dv(DType::f32, {1, 6, 2, 8});
  copy_from_view(call.dk, dk);
  copy_from_view(call.dv, dv);
  EXPECT_EQ(bitwise_difference(dk, c.dk), "");
  EXPECT_EQ(bitwise_difference(dv, c.dv), "");
}

// A caller workspace of backward_workspace_bytes() (any alignment) means no allocation; one byte
// less is refused before any output is touched (TESTPLAN 13).
TEST(BackwardFaults, fault_workspace_too_small) {
  for (Algorithm a : {Algorithm::naive, Algorithm::flash}) {
    BackwardCase c = small_case(520);
    c.set_bias({2, 1, 1, 11}, DType::f32, randn_values(22, 3));
    c.request_dbias();
    c.options.algorithm = a;
    c.run_both();
    const Buf dq = c.dq, dk = c.dk, dv = c.dv, db = *c.dbias;
    BwdCall call(c);
    const size_t need = memattn::backward_workspace_bytes(call.q, call.k, call.v, call.options, {true});
    ASSERT_GT(need, 0u);
    std::vector<unsigned char> ws(need + 8);
    expect_error([&] { call.run({ws.data(), need - 1}); }, ErrorCode::workspace_too_small,
                 {"need " + std::to_string(need) + " bytes, got " + std::to_string(need - 1)},
                 {&c.dq, &c.dk, &c.dv, &*c.dbias});
    TestAllocator counter;
    call.run({ws.data() + 4, need});  // misaligned: the slack in `need` covers aligning it up
    EXPECT_EQ(counter.allocations(), 0);
    EXPECT_EQ(bitwise_difference(c.dq, dq), "");
    EXPECT_EQ(bitwise_difference(c.dk, dk), "");
    EXPECT_EQ(bitwise_difference(c.dv, dv), "");
    EXPECT_EQ(bitwise_difference(*c.dbias, db), "");
  }
}

// Every allocation backward makes can fail: an out-of-memory error naming the workspace, outputs
// untouched, and the next call succeeds with the same result (TESTPLAN 14).
TEST(BackwardFaults, fault_alloc_failure) {
  BackwardCase c = small_case(530);
  c.run_backward();
  const Buf dq = c.dq;
  TestAllocator alloc;
  alloc.reset();
  c.run_backward();
  const int64_t total = alloc.allocations();
  ASSERT_GE(total, 1);
  for (int64_t k = 1; k <= total; ++k) {
    alloc.fail_at(k);
    BwdCall call(c);
    expect_bwd_error(c, call, ErrorCode::out_of_memory, {"failed to allocate", "backward workspace"});
  }
  alloc.fail_at(0);
  c.run_backward();
  EXPECT_EQ(bitwise_difference(c.dq, dq), "");
}

// The flash backward's extra memory does not grow with n (workspace and measured peak); naive's
// grows with Nq * Nk.
TEST(BackwardMemory, flash_constant_naive_quadratic) {
  size_t flash_bytes = 0, naive_prev = 0;
  std::vector<float> storage(size_t(16384) * 64);
  for (int64_t n : {256, 1024, 4096, 16384}) {
    const Tensor t = Tensor::contiguous(storage.data(), DType::f32, {1, n, 1, 64});
    memattn::Options o;
    o.num_threads = 2;
    const size_t flash = memattn::backward_workspace_bytes(t, t, t, o);
    // From n = 1024 on, the chunks (at most 512 keys) no longer shrink to fit n.
    if (n == 256) flash_bytes = flash;
    if (n == 1024) {
      EXPECT_GE(flash, flash_bytes);
      flash_bytes = flash;
    }
    EXPECT_EQ(flash, flash_bytes) << "n = " << n;
    EXPECT_LT(flash, size_t(4) << 20);
    o.algorithm = Algorithm::naive;
    const size_t naive = memattn::backward_workspace_bytes(t, t, t, o);
    EXPECT_GE(naive, size_t(n) * size_t(n) * 4);
    EXPECT_GT(naive, 3 * naive_prev);
    naive_prev = naive;
  }
  size_t peaks[2];
  for (int i = 0; i < 2; ++i) {
    BackwardCase c(Shape{1, 600 * (i + 1), 600 * (i + 1), 2, 1, 32, 32}, DType::f32, 540);
    c.options.num_threads = 2;
    c.run();
    TestAllocator alloc;
    c.run_backward();
    peaks[i] = alloc.peak();
  }
  EXPECT_EQ(peaks[0], peaks[1]);
}

// Backward from a saved lse and out equals backward after recomputing them (bitwise: the forward
// is deterministic); from the naive forward's lse and out it stays within the rule (TESTPLAN 32).
TEST(BackwardLse, num_lse_saved_equals_recomputed) {
  BackwardCase c(Shape{2, 33, 47, 4, 2, 16, 16}, DType::f32, 550);
  c.options.causal = true;
  c.options.align = Align::bottom_right;
  c.run_both();
  const Buf dq = c.dq, dk = c.dk, dv = c.dv;
  c.out.fill(0);
  c.lse.fill(0);
  c.run();  // recompute out and lse
  c.run_backward();
  EXPECT_EQ(bitwise_difference(c.dq, dq), "");
  EXPECT_EQ(bitwise_difference(c.dk, dk), "");
  EXPECT_EQ(bitwise_difference(c.dv, dv), "");
  memattn::Options naive = c.options;
  naive.algorithm = Algorithm::naive;
  Tensor lse_view = c.lse.view();
  memattn::forward(c.q.view(), c.k.view(), c.v.view(), c.out.view(), &lse_view, naive);
  c.run_backward();
  const RefProblem p = c.problem();
  const RefGrads ref = reference_backward64(p, c.dout.values());
  const RefGrads base = baseline_backward(p, c.dout.values(), DType::f32, DType::f32);
  EXPECT_EQ(accuracy_failure(c.dq.values(), ref.dq, base.dq, DType::f32, 3.0), "");
  EXPECT_EQ(accuracy_failure(c.dk.values(), ref.dk, base.dk, DType::f32, 3.0), "");
  EXPECT_EQ(accuracy_failure(c.dv.values(), ref.dv, base.dv, DType::f32, 3.0), "");
}

// Each operand alone, then all at once, in BHSD order, with a last-dim stride of 2 and with a
// negative sequence stride: gradients bitwise equal to the contiguous run (TESTPLAN 33).
TEST(BackwardLayout, lay_noncontiguous_all_operands) {
  for (DType dt : {DType::f32, DType::bf16}) {
    BackwardCase c(Shape{2, 9, 11, 4, 2, 8, 6}, dt, 560);
    c.options.causal = true;
    c.set_bias({1, 4, 9, 11}, DType::f32, randn_values(4 * 9 * 11, 4));
    c.request_dbias();
    c.options.query_chunk = 4;
    c.options.key_chunk = 4;
    c.run_both();
    const Buf want[] = {c.dq, c.dk, c.dv, *c.dbias};
    Buf* inputs[] = {&c.q, &c.k, &c.v, &c.out, &c.dout, &c.lse, &*c.bias};
    Buf* outputs[] = {&c.dq, &c.dk, &c.dv, &*c.dbias};
    for (int mode = 0; mode < 3; ++mode)
      for (int which = 0; which <= 11; ++which) {  // 11: every operand at once
        std::vector<Embedded> keep;
        const auto pick = [&](int i, Buf& b) {
          if (which != i && which != 11) return b.view();
          keep.push_back(relayout(b, mode));
          return keep.back().view;
        };
        keep.reserve(11);
        Tensor in[7], out[4];
        for (int i = 0; i < 7; ++i) in[i] = pick(i, *inputs[i]);
        for (int i = 0; i < 4; ++i) out[i] = pick(7 + i, *outputs[i]);
        memattn::Options o = c.options;
        o.bias = &in[6];
        memattn::backward(in[0], in[1], in[2], in[3], in[4], in[5], out[0], out[1], out[2], o, &out[3]);
        for (int i = 0; i < 4; ++i) {
          Buf got(want[i].dtype, want[i].shape);
          copy_from_view(out[i], got);
          EXPECT_EQ(bitwise_difference(got, want[i]), "")
              << memattn::dtype_name(dt) << " mode " << mode << " operand " << which << " output " << i;
        }
      }
  }
}

// fwd + bwd bitwise equal across 1, 2, 3 and 7 threads, 20 repeats and inside an enclosing
// OpenMP parallel region, with causal, GQA and dbias reduced over broadcast dims (TESTPLAN 37).
TEST(BackwardDeterminism, det_bitwise_repeat_and_threads) {
  int variant = 0;
  for (DType dt : {DType::f32, DType::bf16})
    for (Algorithm alg : {Algorithm::flash, Algorithm::naive}) {
      BackwardCase c(Shape{2, 150, 230, 4, 2, 32, 32}, dt, 570 + variant);
      c.options.algorithm = alg;
      c.options.causal = true;
      c.options.align = Align::bottom_right;
      const std::vector<int64_t> bias_shape = variant++ % 2 ? std::vector<int64_t>{1, 4, 150, 230}
                                                            : std::vector<int64_t>{1, 1, 1, 230};
      c.set_bias(bias_shape, DType::f32, randn_values(size_t(bias_shape[1] * bias_shape[2] * 230), 5));
      c.request_dbias();
      c.options.num_threads = 1;
      c.run_both();
      const Buf want[] = {c.out, c.dq, c.dk, c.dv, *c.dbias};
      const auto check = [&](const std::string& what) {
        const Buf* got[] = {&c.out, &c.dq, &c.dk, &c.dv, &*c.dbias};
        for (int i = 0; i < 5; ++i) EXPECT_EQ(bitwise_difference(*got[i], want[i]), "") << what << " output " << i;
      };
      const int repeats = alg == Algorithm::flash ? 20 : 2;
      for (int threads : {2, 3, 7}) {
        c.options.num_threads = threads;
        c.run_both();
        check(std::string(memattn::algorithm_name(alg)) + " threads " + std::to_string(threads));
      }
      c.options.num_threads = 2;
      for (int r = 0; r < repeats; ++r) {
        c.run_both();
        check("repeat " + std::to_string(r));
      }
      c.options.num_threads = 0;
#pragma omp parallel num_threads(2)
      {
#pragma omp single
        c.run_both();
      }
      check("inside a parallel region");
    }
}

// The f32 flash backward sums each gradient element over its queries (dK, dV) or keys (dQ) in
// index order, one GEMM accumulation carried across tiles: the chunk sizes, and pass 2's tiles
// transposed from pass 1's (dq_pass_params), change no bit of it. Rows with coarse lse (whose
// correction sweeps the keys chunk by chunk) are left out: |lse| stays far below 16 here.
TEST(BackwardDeterminism, det_f32_gradients_do_not_depend_on_chunk_sizes) {
  BackwardCase c(Shape{2, 70, 90, 4, 2, 24, 20}, DType::f32, 590);
  c.options.algorithm = Algorithm::flash;
  c.options.causal = true;
  c.options.align = Align::bottom_right;
  c.run_both();
  const Buf want[] = {c.dq, c.dk, c.dv};
  for (const auto [cq, ck] : {std::pair{8, 16}, std::pair{16, 8}, std::pair{5, 7}, std::pair{64, 3}, std::pair{70, 90}}) {
    c.options.query_chunk = cq;
    c.options.key_chunk = ck;
    c.run_backward();
    const Buf* got[] = {&c.dq, &c.dk, &c.dv};
    for (int i = 0; i < 3; ++i)
      EXPECT_EQ(bitwise_difference(*got[i], want[i]), "") << "chunks " << cq << " x " << ck << " gradient " << i;
  }
}

// The fused pass (one sweep per (batch, kv head), dq summed in place) and the two passes give the
// same gradients bit for bit wherever both run: masks, windows, GQA, softcap, ALiBi, a bias
// without dbias, sinks with dsinks, a scale above 1 (dS carries it) and below (dq's store does),
// 1 and 3 threads. MEMATTN_BACKWARD forces either way.
TEST(BackwardDeterminism, det_fused_pass_equals_the_two_passes) {
  struct Variant {
    const char* name;
    std::function<void(BackwardCase&)> set;
  };
  const Variant variants[] = {
      {"causal gqa", [](BackwardCase& c) { c.options.causal = true; }},
      {"window", [](BackwardCase& c) { c.options.window_left = 9, c.options.window_right = 4; }},
      {"mask softcap", [](BackwardCase& c) {
         c.set_mask({1, 6, 40, 55}, random_mask(6 * 40 * 55, 601, 0.7));
         c.options.softcap = 2.0;
       }},
      {"alibi bias", [](BackwardCase& c) {
         c.set_alibi({6}, {0.5, 0.25, 0.125, 0.1, 0.05, 0.01});
         c.set_bias({2, 1, 40, 55}, DType::f32, randn_values(2 * 40 * 55, 602));
       }},
      {"sinks", [](BackwardCase& c) {
         c.set_sinks({0.5, -1.0, 2.0, 0.0, 1.0, -0.5});
         c.request_dsinks();
       }},
      {"scale 3", [](BackwardCase& c) { c.options.scale = 3.0f, c.options.causal = true; }},
  };
  int seed = 610;
  for (const Variant& v : variants)
    for (int threads : {1, 3}) {
      BackwardCase c(Shape{2, 40, 55, 6, 3, 24, 20}, DType::f32, seed++);
      c.options.algorithm = Algorithm::flash;
      c.options.num_threads = threads;
      c.options.query_chunk = 16;  // several tiles and chunks per item
      c.options.key_chunk = 24;
      v.set(c);
      c.run();
      std::vector<Buf> want;
      {
        mt::ScopedEnv passes("MEMATTN_BACKWARD", "passes");
        c.run_backward();
        want = {c.dq, c.dk, c.dv};
        if (c.dsinks) want.push_back(*c.dsinks);
      }
      mt::ScopedEnv fused("MEMATTN_BACKWARD", "fused");
      c.run_backward();
      std::vector<const Buf*> got = {&c.dq, &c.dk, &c.dv};
      if (c.dsinks) got.push_back(&*c.dsinks);
      for (size_t i = 0; i < want.size(); ++i)
        EXPECT_EQ(bitwise_difference(*got[i], want[i]), "") << v.name << ", " << threads << " threads, gradient " << i;
    }
}

// MEMATTN_BACKWARD names a way of the flash backward; another value fails before any write.
TEST(BackwardErrors, err_unknown_backward_way) {
  BackwardCase c = small_case();
  mt::ScopedEnv way("MEMATTN_BACKWARD", "both");
  expect_bwd_error(c, BwdCall(c), ErrorCode::invalid_argument, {"MEMATTN_BACKWARD", "fused or passes", "both"});
}
