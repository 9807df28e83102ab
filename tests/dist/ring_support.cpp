// Test support of the MPI ring tests: slicing a global problem per rank and gathering results.
#include "ring_support.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <sstream>

namespace mt {

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

int world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

namespace {

int ranks_of(MPI_Comm comm) {
  int n = 1;
  MPI_Comm_size(comm, &n);
  return n;
}

// Extents before, at and after the sequence dimension `dim` of `shape`.
struct Rows {
  int64_t outer = 1, seq = 0, inner = 1;
  Rows(const std::vector<int64_t>& shape, int dim) : seq(shape[size_t(dim)]) {
    for (int d = 0; d < dim; ++d) outer *= shape[size_t(d)];
    for (size_t d = size_t(dim) + 1; d < shape.size(); ++d) inner *= shape[d];
  }
};

const std::array<memattn::dist::Range, 2>& ranges_of(const memattn::dist::LocalSlices& s,
                                                     bool keys) {
  return keys ? s.k : s.q;
}

}  // namespace

Buf take_rows(const Buf& global, int dim, const memattn::dist::LocalSlices& slices, bool keys) {
  std::vector<int64_t> shape = global.shape;
  shape[size_t(dim)] = keys ? slices.seq_k : slices.seq_q;
  Buf local(global.dtype, shape);
  const Rows g(global.shape, dim), l(shape, dim);
  const size_t es = memattn::dtype_size(global.dtype);
  int64_t at = 0;
  for (int c = 0; c < slices.count; ++c) {
    const memattn::dist::Range r = ranges_of(slices, keys)[size_t(c)];
    for (int64_t o = 0; o < g.outer; ++o)
      std::memcpy(local.bytes.data() + ((o * l.seq + at) * l.inner) * es,
                  global.bytes.data() + ((o * g.seq + r.start) * g.inner) * es,
                  size_t(r.length * g.inner) * es);
    at += r.length;
  }
  return local;
}

std::vector<double> gather_rows(const Buf& local, const std::vector<int64_t>& global_shape, int dim,
                                const memattn::dist::LocalSlices& slices, bool keys,
                                MPI_Comm comm) {
  const Rows g(global_shape, dim), l(local.shape, dim);
  std::vector<double> all(size_t(g.outer * g.seq * g.inner), 0.0);
  int64_t at = 0;
  for (int c = 0; c < slices.count; ++c) {
    const memattn::dist::Range r = ranges_of(slices, keys)[size_t(c)];
    for (int64_t o = 0; o < g.outer; ++o)
      for (int64_t i = 0; i < r.length * g.inner; ++i)
        all[size_t((o * g.seq + r.start) * g.inner + i)] =
            local.get((o * l.seq + at) * l.inner + i);
    at += r.length;
  }
  // Each element is nonzero on its one owner only: the sum is that value (NaN stays NaN).
  MPI_Allreduce(MPI_IN_PLACE, all.data(), int(all.size()), MPI_DOUBLE, MPI_SUM, comm);
  return all;
}

RingCase::RingCase(Shape s, DType dt, bool causal, memattn::dist::Placement placement,
                   memattn::Align align, uint64_t seed, MPI_Comm comm_,
                   const std::function<void(BackwardCase&)>& setup)
    : whole(s, dt, seed), comm(comm_) {
  whole.options.causal = causal;
  whole.options.align = align;
  if (setup) setup(whole);
  options.attention = whole.options;
  options.placement = placement;
  options.seq_q = s.Sq;
  options.seq_k = s.Sk;
  int rank = 0, ranks = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &ranks);
  mine = memattn::dist::local_slices(options, ranks, rank);
  q = take_rows(whole.q, 1, mine, false);
  k = take_rows(whole.k, 1, mine, true);
  v = take_rows(whole.v, 1, mine, true);
  dout = take_rows(whole.dout, 1, mine, false);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  out = Buf(dt, {s.B, mine.seq_q, s.Hq, s.Dv});
  lse = Buf(DType::f32, {s.B, s.Hq, mine.seq_q});
  dq = Buf(dt, {s.B, mine.seq_q, s.Hq, s.D});
  dk = Buf(dt, {s.B, mine.seq_k, s.Hkv, s.D});
  dv = Buf(dt, {s.B, mine.seq_k, s.Hkv, s.Dv});
  for (Buf* b : {&out, &lse, &dq, &dk, &dv}) b->fill(nan);
  // A mask or bias slice: this rank's query rows (dim 2 unless broadcast), every key.
  const auto rows_of = [&](const Buf& global) {
    return global.shape[2] == 1 ? global : take_rows(global, 2, mine, false);
  };
  if (whole.mask) {
    mask = rows_of(*whole.mask);
    mask_view = mask->view();
    options.attention.mask = &mask_view;
  }
  if (whole.bias) {
    bias = rows_of(*whole.bias);
    bias_view = bias->view();
    options.attention.bias = &bias_view;
    dbias = Buf(bias->dtype, bias->shape);
    dbias->fill(nan);
  }
}

void RingCase::forward() {
  Tensor lse_view = lse.view();
  memattn::dist::ring_forward(q.view(), k.view(), v.view(), out.view(), &lse_view, options, comm);
}

void RingCase::backward() {
  const Tensor dbias_view = dbias ? dbias->view() : Tensor{};
  memattn::dist::ring_backward(q.view(), k.view(), v.view(), out.view(), dout.view(), lse.view(),
                               dq.view(), dk.view(), dv.view(), options, comm,
                               dbias ? &dbias_view : nullptr);
}

std::string RingCase::describe() const {
  std::ostringstream s;
  s << mt::describe(whole) << " placement=" << memattn::dist::placement_name(options.placement)
    << " ranks=" << ranks_of(comm);
  return s.str();
}

void expect_ring_accurate(RingCase& c, bool with_backward) {
  const Shape& s = c.whole.s;
  const RefProblem p = c.whole.problem();
  const RefResult ref = reference64(p), base = baseline(p, c.whole.dtype);
  const std::vector<double> out =
      gather_rows(c.out, {s.B, s.Sq, s.Hq, s.Dv}, 1, c.mine, false, c.comm);
  const std::vector<double> lse = gather_rows(c.lse, {s.B, s.Hq, s.Sq}, 2, c.mine, false, c.comm);
  EXPECT_EQ(accuracy_failure(out, ref.out, base.out, c.whole.dtype), "") << "out: " << c.describe();
  EXPECT_EQ(accuracy_failure(lse, ref.lse, base.lse, DType::f32), "") << "lse: " << c.describe();
  EXPECT_FALSE(mostly_zero(out)) << "mistrusted inputs: " << c.describe();
  if (!with_backward) return;
  const std::vector<double> dout = c.whole.dout.values();
  const RefGrads gref = reference_backward64(p, dout);
  const DType bias_dtype = c.bias ? c.bias->dtype : c.whole.dtype;
  const RefGrads gbase = baseline_backward(p, dout, c.whole.dtype, bias_dtype);
  const std::vector<double> dq =
      gather_rows(c.dq, {s.B, s.Sq, s.Hq, s.D}, 1, c.mine, false, c.comm);
  const std::vector<double> dk =
      gather_rows(c.dk, {s.B, s.Sk, s.Hkv, s.D}, 1, c.mine, true, c.comm);
  const std::vector<double> dv =
      gather_rows(c.dv, {s.B, s.Sk, s.Hkv, s.Dv}, 1, c.mine, true, c.comm);
  EXPECT_EQ(accuracy_failure(dq, gref.dq, gbase.dq, c.whole.dtype, 3.0), "")
      << "dq: " << c.describe();
  EXPECT_EQ(accuracy_failure(dk, gref.dk, gbase.dk, c.whole.dtype, 3.0), "")
      << "dk: " << c.describe();
  EXPECT_EQ(accuracy_failure(dv, gref.dv, gbase.dv, c.whole.dtype, 3.0), "")
      << "dv: " << c.describe();
  if (!c.dbias) return;
  // Rows broadcast: each rank holds its rows' partial sum, the gradient is the sum over ranks.
  std::vector<double> dbias = c.dbias->values();
  if (c.dbias->shape[2] == 1)
    MPI_Allreduce(MPI_IN_PLACE, dbias.data(), int(dbias.size()), MPI_DOUBLE, MPI_SUM, c.comm);
  else
    dbias = gather_rows(*c.dbias, c.whole.bias->shape, 2, c.mine, false, c.comm);
  EXPECT_EQ(accuracy_failure(dbias, gref.dbias, gbase.dbias, bias_dtype, 3.0), "")
      << "dbias: " << c.describe();
}

}  // namespace mt
