// The C entry points of memattn_dist (memattn/memattn_dist.h), through the core C API's
// conversions.
#include "memattn/memattn_dist.h"

#include <optional>
#include <string>

#include "api/c_bridge.hpp"
#include "dist/ring.hpp"
#include "memattn/dist.hpp"

namespace {

using memattn::Tensor;
using memattn::detail::c_tensor;

// Converts the C ring options (NULL or a bad placement: invalid_argument) and calls `use`.
template <typename Use>
void with_ring_options(const memattn_ring_options* c, Use&& use) {
  if (c == nullptr)
    throw memattn::Error(memattn::ErrorCode::invalid_argument,
                         "options: null pointer, expected a valid pointer");
  if (c->placement != MEMATTN_PLACEMENT_CONTIGUOUS && c->placement != MEMATTN_PLACEMENT_ZIGZAG)
    throw memattn::Error(memattn::ErrorCode::invalid_argument,
                         "options.placement: expected one of MEMATTN_PLACEMENT_CONTIGUOUS (0), "
                         "MEMATTN_PLACEMENT_ZIGZAG (1), got " +
                             std::to_string(c->placement));
  memattn::detail::with_c_options(&c->attention, [&](const memattn::Options& attention) {
    memattn::dist::RingOptions o;
    o.attention = attention;
    o.placement = memattn::dist::Placement(c->placement);
    o.seq_q = c->seq_q;
    o.seq_k = c->seq_k;
    use(o);
  });
}

// Converts the C arguments (`convert`, then the options) and runs `call` with the ring options.
// An error only C can make (a NULL tensor, a bad enum value) on one rank must still fail every
// rank alike: that rank joins the collective agreement that the others' ring call opens.
template <typename Convert, typename Call>
void collective_call(MPI_Comm comm, const memattn_ring_options* options, Convert&& convert,
                     Call&& call) {
  bool entered = false;
  try {
    convert();
    with_ring_options(options, [&](const memattn::dist::RingOptions& o) {
      entered = true;
      call(o);
    });
  } catch (const memattn::Error& e) {
    if (entered) throw;
    memattn::dist::detail::fail_collectively(comm, e);
  }
}

}  // namespace

extern "C" {

memattn_ring_options memattn_ring_options_default(void) {
  memattn_ring_options o{};
  o.attention = memattn_options_default();
  o.placement = MEMATTN_PLACEMENT_CONTIGUOUS;
  o.seq_k = -1;
  return o;
}

memattn_status memattn_ring_local_slices(const memattn_ring_options* options, int ranks, int rank,
                                         memattn_ring_slices* slices) {
  return memattn::detail::c_guarded([&] {
    if (slices == nullptr)
      throw memattn::Error(memattn::ErrorCode::invalid_argument,
                           "slices: null pointer, expected a valid pointer");
    with_ring_options(options, [&](const memattn::dist::RingOptions& o) {
      const memattn::dist::LocalSlices s = memattn::dist::local_slices(o, ranks, rank);
      slices->count = s.count;
      for (int i = 0; i < 2; ++i) {
        slices->q[i] = {s.q[i].start, s.q[i].length};
        slices->k[i] = {s.k[i].start, s.k[i].length};
      }
      slices->seq_q = s.seq_q;
      slices->seq_k = s.seq_k;
    });
  });
}

memattn_status memattn_ring_forward(const memattn_tensor* q, const memattn_tensor* k,
                                    const memattn_tensor* v, const memattn_tensor* out,
                                    const memattn_tensor* lse, const memattn_ring_options* options,
                                    MPI_Comm comm) {
  return memattn::detail::c_guarded([&] {
    Tensor cq, ck, cv, cout, clse;
    collective_call(
        comm, options,
        [&] {
          cq = c_tensor(q, "q"), ck = c_tensor(k, "k"), cv = c_tensor(v, "v");
          cout = c_tensor(out, "out");
          if (lse) clse = c_tensor(lse, "lse");
        },
        [&](const memattn::dist::RingOptions& o) {
          memattn::dist::ring_forward(cq, ck, cv, cout, lse ? &clse : nullptr, o, comm);
        });
  });
}

memattn_status memattn_ring_backward(const memattn_tensor* q, const memattn_tensor* k,
                                     const memattn_tensor* v, const memattn_tensor* out,
                                     const memattn_tensor* dout, const memattn_tensor* lse,
                                     const memattn_tensor* dq, const memattn_tensor* dk,
                                     const memattn_tensor* dv, const memattn_ring_options* options,
                                     MPI_Comm comm) {
  return memattn_ring_backward_ex(q, k, v, out, dout, lse, dq, dk, dv, nullptr, options, comm);
}

memattn_status memattn_ring_backward_ex(const memattn_tensor* q, const memattn_tensor* k,
                                        const memattn_tensor* v, const memattn_tensor* out,
                                        const memattn_tensor* dout, const memattn_tensor* lse,
                                        const memattn_tensor* dq, const memattn_tensor* dk,
                                        const memattn_tensor* dv, const memattn_tensor* dbias,
                                        const memattn_ring_options* options, MPI_Comm comm) {
  return memattn::detail::c_guarded([&] {
    Tensor cq, ck, cv, cout, cdout, clse, cdq, cdk, cdv, cdbias;
    collective_call(
        comm, options,
        [&] {
          cq = c_tensor(q, "q"), ck = c_tensor(k, "k"), cv = c_tensor(v, "v");
          cout = c_tensor(out, "out"), cdout = c_tensor(dout, "dout"), clse = c_tensor(lse, "lse");
          cdq = c_tensor(dq, "dq"), cdk = c_tensor(dk, "dk"), cdv = c_tensor(dv, "dv");
          if (dbias) cdbias = c_tensor(dbias, "dbias");
        },
        [&](const memattn::dist::RingOptions& o) {
          memattn::dist::ring_backward(cq, ck, cv, cout, cdout, clse, cdq, cdk, cdv, o, comm,
                                       dbias ? &cdbias : nullptr);
        });
  });
}

}  // extern "C"
