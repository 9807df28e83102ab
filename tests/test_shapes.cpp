// Shape sweeps of issue 2 and TESTPLAN 22/23: sequence lengths around every chunk size used
// (explicit and the planner's own), head dims, GQA ratios, odd head dims in guard pages and the
// chunk-boundary sweep with causal masks. A covering subset, not the cartesian product.
#include <gtest/gtest.h>

#include <algorithm>

#include "api/validate.hpp"
#include "plan/plan.hpp"
#include "support.hpp"

using namespace mt;
using memattn::Algorithm;
using memattn::Align;

namespace {

const DType kDtypes[] = {DType::f32, DType::bf16, DType::f16, DType::f64};

// 1, c-1, c, c+1 and 3c+5: every tile boundary of chunk size c.
std::vector<int64_t> lengths_around(int64_t c) {
  std::vector<int64_t> n = {1, c - 1, c, c + 1, 3 * c + 5};
  n.erase(std::remove_if(n.begin(), n.end(), [](int64_t x) { return x < 1; }), n.end());
  std::sort(n.begin(), n.end());
  n.erase(std::unique(n.begin(), n.end()), n.end());
  return n;
}

// The chunk sizes the planner picks for `alg` when sequences are long enough not to clamp them.
std::pair<int64_t, int64_t> planned_chunks(Algorithm alg, int64_t d, int64_t dv, int64_t sk) {
  memattn::Options o;
  o.algorithm = alg;
  const Tensor q = Tensor::contiguous(nullptr, DType::f32, {1, 0, 1, d});
  Tensor k = Tensor::contiguous(nullptr, DType::f32, {1, 0, 1, d});
  Tensor v = Tensor::contiguous(nullptr, DType::f32, {1, 0, 1, dv});
  memattn::detail::Params p = memattn::detail::make_forward_params(q, k, v, nullptr, nullptr, o);
  p.seq_q = int64_t(1) << 20;  // only the sizes matter to the planner
  p.seq_k = sk;
  memattn::detail::plan_forward(p, o);
  return {p.query_chunk, p.key_chunk};
}

void expect_accurate_sweep(const Shape& s, int64_t query_chunk, int64_t key_chunk, uint64_t seed,
                           const std::vector<DType>& dtypes = {std::begin(kDtypes), std::end(kDtypes)}) {
  for (DType dt : dtypes) {
    Case c(s, dt, seed);
    c.options.query_chunk = query_chunk;
    c.options.key_chunk = key_chunk;
    SCOPED_TRACE(describe(c));
    expect_accurate_all(c);
  }
}

}  // namespace

TEST(ShapeSweep, seq_lengths_around_explicit_chunks) {
  // Chunk 16 in every dtype; chunk 64 (larger, the same code paths) in one dtype per pair.
  int rotation = 0;
  for (int64_t c : {16, 64})
    for (int64_t sq : lengths_around(c))
      for (int64_t sk : lengths_around(c)) {
        const std::vector<DType> all(std::begin(kDtypes), std::end(kDtypes));
        expect_accurate_sweep({1, sq, sk, 2, 1, 16, 16}, c, c, uint64_t(sq * 1000 + sk),
                              c == 16 ? all : std::vector<DType>{kDtypes[rotation++ % 4]});
      }
}

TEST(ShapeSweep, seq_lengths_around_automatic_chunks) {
  // flash: the planner's query chunk cq and its cache-derived key chunk ck; every query length
  // around cq against Sk = ck + 1, every key length around ck against Sq = cq + 1.
  {
    const auto [cq, ck] = planned_chunks(Algorithm::flash, 16, 16, int64_t(1) << 20);
    const std::vector<int64_t> qs = lengths_around(cq), ks = lengths_around(ck);
    for (int64_t sq : qs)
      expect_accurate_sweep({1, sq, ck + 1, 1, 1, 16, 16}, 0, 0, uint64_t(sq), {DType::f32, DType::bf16});
    for (int64_t sk : ks)
      expect_accurate_sweep({1, cq + 1, sk, 1, 1, 16, 16}, 0, 0, uint64_t(sk), {DType::f32, DType::f16});
  }
  // chunked: the paper's query chunk (1024) and key chunks of ceil(sqrt(Sk)), whose last chunk
  // is short for most Sk.
  const int64_t cq = planned_chunks(Algorithm::chunked, 8, 8, 100).first;
  for (int64_t sq : lengths_around(cq))
    for (int64_t sk : {1, 3, 99, 100, 101})
      if (sq <= cq + 1 || sk == 101)
        expect_accurate_sweep({1, sq, sk, 1, 1, 8, 8}, 0, 0, uint64_t(sq + sk), {DType::f32});
}

TEST(ShapeSweep, head_dims) {
  // d in {1, 7, 16, 64, 80, 128, 256} with dv = d, and dv != d both ways.
  const std::pair<int64_t, int64_t> dims[] = {{1, 1},     {7, 7},   {16, 16}, {64, 64}, {80, 80}, {128, 128},
                                              {256, 256}, {64, 32}, {16, 80}, {7, 128}, {256, 1}, {1, 256}};
  for (const auto& [d, dv] : dims)
    expect_accurate_sweep({2, 33, 33, 2, 1, d, dv}, 16, 16, uint64_t(d * 7 + dv));
}

TEST(ShapeSweep, gqa_ratios) {
  // Hq / Hkv = 1, 2, 3, 8 and MQA, causal bottom-right with Sq < Sk.
  for (const auto& [hq, hkv] :
       {std::pair{3, 3}, std::pair{4, 2}, std::pair{6, 2}, std::pair{16, 2}, std::pair{5, 1}})
    for (DType dt : kDtypes) {
      Case c({2, 19, 37, hq, hkv, 16, 8}, dt, uint64_t(hq * 10 + hkv));
      c.options.query_chunk = 8;
      c.options.key_chunk = 16;
      c.options.causal = true;
      c.options.align = Align::bottom_right;
      SCOPED_TRACE(describe(c));
      expect_accurate_all(c);
    }
}

TEST(ShapeSweep, num_odd_head_dim) {
  // Every operand flush against guard pages, so a SIMD tail that reads past D faults. The scale
  // is the default 1/sqrt(D) of the original D.
  for (int64_t d : {1, 2, 3, 7, 9, 15, 17, 31, 33, 59, 111, 257, 512})
    for (int64_t dv : {d, d % 5 + 1})
      for (DType dt : kDtypes) {
        Case c({1, 11, 21, 2, 1, d, dv}, dt, uint64_t(d * 3 + dv));
        c.options.query_chunk = 4;
        c.options.key_chunk = 8;
        SCOPED_TRACE(describe(c));
        expect_accurate_all(c, 2.0, 0.0, d % 2 ? Guard::after : Guard::before);
      }
}

TEST(ShapeSweep, num_chunk_boundaries) {
  struct Sweep {
    int64_t sq, sk, chunk;  // chunk 0: the planner's
  };
  std::vector<Sweep> sweeps;
  for (int64_t c : {16, 64})
    for (const auto& [sq, sk] :
         {std::pair{c - 1, 2 * c + 1}, std::pair{2 * c + 1, c - 1}, std::pair{c, c + 1}, std::pair{c + 1, c}})
      sweeps.push_back({sq, sk, c});
  // The primes of flash-attn's and xformers' "weird sizes", Sq < Sk and Sq > Sk.
  sweeps.insert(sweeps.end(), {{113, 1025, 64}, {1023, 211, 0}, {203, 211, 16}, {211, 203, 0}});
  for (const Sweep& w : sweeps)
    for (int causal = 0; causal < 3; ++causal)
      for (DType dt : kDtypes) {
        if (w.sq * w.sk > 50000 && dt != DType::f32) continue;  // the large primes in f32 only
        Case c({1, w.sq, w.sk, 1, 1, 8, 8}, dt, uint64_t(w.sq + w.sk));
        c.options.query_chunk = c.options.key_chunk = w.chunk;
        c.options.causal = causal > 0;
        c.options.align = causal == 2 ? Align::bottom_right : Align::top_left;
        SCOPED_TRACE(describe(c));
        expect_accurate_all(c);
      }
}
