// The backward pass under TESTPLAN cases 36 (every operand flush against PROT_NONE pages, odd
// shapes and chunk remainders) and 38 (many concurrent callers sharing read-only inputs).
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "support_backward.hpp"

using namespace mt;
using memattn::Algorithm;

namespace {

// backward() with every operand and gradient copied into its own guarded span; the gradients are
// copied back into c.
void run_backward_guarded(BackwardCase& c, Guard flush) {
  GuardedSpans spans;
  const auto guarded = [&](const Buf& b) { return guarded_copy(spans, b, flush); };
  const Tensor q = guarded(c.q), k = guarded(c.k), v = guarded(c.v), out = guarded(c.out);
  const Tensor dout = guarded(c.dout), lse = guarded(c.lse);
  const Tensor dq = guarded(c.dq), dk = guarded(c.dk), dv = guarded(c.dv);
  memattn::Options o = c.options;
  Tensor bias;
  if (o.bias) bias = guarded(*c.bias), o.bias = &bias;
  memattn::backward(q, k, v, out, dout, lse, dq, dk, dv, o);
  for (auto [buf, t] : {std::pair{&c.dq, dq}, std::pair{&c.dk, dk}, std::pair{&c.dv, dv}})
    std::memcpy(buf->data(), t.data, buf->bytes.size());
}

}  // namespace

TEST(BackwardRobust, rob_guard_pages) {
  for (Algorithm alg : {Algorithm::naive, Algorithm::flash})
    for (DType dt : {DType::f32, DType::bf16, DType::f16})
      for (Guard flush : {Guard::before, Guard::after}) {
        BackwardCase c(Shape{1, 37, 29, 3, 1, 7, 9}, dt, 21);
        c.options.algorithm = alg;
        c.options.causal = true;
        c.options.align = memattn::Align::bottom_right;
        c.options.query_chunk = 16;
        c.options.key_chunk = 8;
        SCOPED_TRACE(std::string(memattn::algorithm_name(alg)) + " " + memattn::dtype_name(dt));
        c.run_both();
        const RefGrads plain = c.grads();
        for (Buf* g : {&c.dq, &c.dk, &c.dv}) g->fill(0.0);
        run_backward_guarded(c, flush);
        const RefGrads guarded = c.grads();
        EXPECT_EQ(guarded.dq, plain.dq);
        EXPECT_EQ(guarded.dk, plain.dk);
        EXPECT_EQ(guarded.dv, plain.dv);
      }
}

TEST(BackwardRobust, conc_many_callers) {
  const Shape s{2, 70, 90, 4, 2, 32, 32};
  BackwardCase serial(s, DType::f32, 31);
  serial.options.causal = true;
  serial.run_both();
  const RefGrads want = serial.grads();
  const int callers = 2 * int(std::max(2u, std::thread::hardware_concurrency()));
  // Each caller owns its gradients and workspace-free call; q, k, v, out, dout and lse are shared.
  std::vector<std::unique_ptr<BackwardCase>> mine;
  for (int t = 0; t < callers; ++t) {
    mine.push_back(std::make_unique<BackwardCase>(s, DType::f32, 31));
    mine.back()->options = serial.options;
  }
  std::vector<std::thread> threads;
  for (int t = 0; t < callers; ++t)
    threads.emplace_back([&, t] {
      BackwardCase& c = *mine[size_t(t)];
      memattn::backward(serial.q.view(), serial.k.view(), serial.v.view(), serial.out.view(),
                        serial.dout.view(), serial.lse.view(), c.dq.view(), c.dk.view(), c.dv.view(),
                        c.options);
    });
  for (auto& t : threads) t.join();
  for (int t = 0; t < callers; ++t) {
    const RefGrads got = mine[size_t(t)]->grads();
    EXPECT_EQ(got.dq, want.dq) << "caller " << t;
    EXPECT_EQ(got.dk, want.dk) << "caller " << t;
    EXPECT_EQ(got.dv, want.dv) << "caller " << t;
  }
}
