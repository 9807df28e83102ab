// Test support of the MPI ring tests: a global problem cut into this rank's slices and the
// rank-local results gathered back into global order on every rank.
#pragma once

#include <mpi.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "memattn/dist.hpp"
#include "support.hpp"
#include "support_backward.hpp"

namespace mt {

int world_rank();
int world_size();

// The rows of `global` (sequence dimension `dim`: 1 for [B, S, H, D], 2 for lse [B, H, S]) that
// `ranges` name, in order: the local operand of a rank.
Buf take_rows(const Buf& global, int dim, const memattn::dist::LocalSlices& slices, bool keys);
// The inverse on all ranks of `comm` together: every rank's local rows placed at their global
// positions (collective), as doubles in `global_shape`'s row-major order.
std::vector<double> gather_rows(const Buf& local, const std::vector<int64_t>& global_shape, int dim,
                                const memattn::dist::LocalSlices& slices, bool keys, MPI_Comm comm);

// One global problem (identical on every rank: same seeds) and this rank's part of it.
struct RingCase {
  BackwardCase whole;  // the gathered problem: its q, k, v, dout and options
  memattn::dist::RingOptions options;
  memattn::dist::LocalSlices mine;
  MPI_Comm comm;                            // the ranks that share the problem
  Buf q, k, v, dout, out, lse, dq, dk, dv;  // this rank's slices (outputs NaN-filled)
  // With a mask or bias on `whole`: this rank's rows of them (all global keys), viewed by
  // options.attention, and the bias slice's gradient (NaN-filled).
  std::optional<Buf> mask, bias, dbias;
  Tensor mask_view, bias_view;

  // `setup` may add options (window, diagonal offset, ALiBi) and a mask or bias to `whole` before
  // it is cut into this rank's slices.
  RingCase(Shape s, DType dt, bool causal, memattn::dist::Placement placement,
           memattn::Align align = memattn::Align::top_left, uint64_t seed = 1,
           MPI_Comm comm = MPI_COMM_WORLD, const std::function<void(BackwardCase&)>& setup = {});
  void forward();
  void backward();  // from this rank's out and lse
  std::string describe() const;
};

// Gathers the ring's out and lse (then dq, dk, dv and dbias when `with_backward`) and checks them
// on every rank against Ref64 and Base_dt of the whole problem with TESTPLAN's primary rule.
void expect_ring_accurate(RingCase& c, bool with_backward);

}  // namespace mt
