// `memattn bench --dist`: ring attention (memattn_dist) under mpirun, per point the busiest rank's
// ring time beside the same block pairs computed alone and the ring's messages alone, the share of
// communication hidden behind compute and the causal balance (docs/distributed.md).
#include "bench_dist.hpp"
#include "without_mpi.hpp"

#include <cstdio>

#ifdef MEMATTN_WITH_MPI
#include <mpi.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/half.hpp"
#include "memattn/dist.hpp"

namespace memattn::tool {
namespace {

namespace md = memattn::dist;

// A seeded, contiguous [1 | batch, rows, heads, dim] operand of `dt`.
struct Operand {
  DType dt;
  std::vector<unsigned char> bytes;
  Tensor view;
  Operand(DType dtype, int64_t batch, int64_t rows, int64_t heads, int64_t dim, unsigned seed)
      : dt(dtype), bytes(size_t(batch * rows * heads * dim) * dtype_size(dtype)) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (size_t i = 0; i < bytes.size() / dtype_size(dt); ++i) {
      const float x = normal(gen);
      const bf16 b = to_bf16(x);
      const f16 h = to_f16(x);
      if (dt == DType::f32)
        std::memcpy(&bytes[4 * i], &x, 4);
      else
        std::memcpy(&bytes[2 * i], dt == DType::bf16 ? &b.bits : &h.bits, 2);
    }
    view = Tensor::contiguous(bytes.data(), dt, {batch, rows, heads, dim});
  }
  // Rows [start, start + length) of the sequence.
  Tensor rows(int64_t start, int64_t length) {
    Tensor t = view;
    t.data = bytes.data() + start * t.strides[1] * int64_t(dtype_size(dt));
    t.shape[1] = length;
    return t;
  }
};

// The smallest of `reps` timings of fn, every rank starting together.
template <typename Fn>
double best_of(int64_t reps, Fn&& fn) {
  double best = 1e30;
  for (int64_t r = 0; r < reps; ++r) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double t0 = MPI_Wtime();
    fn();
    best = std::min(best, MPI_Wtime() - t0);
  }
  return best;
}

struct Point {
  DType dt;
  int64_t d, heads, batch, n;
  bool causal, backward;
  int threads;
};

// One point on every rank; returns {ring, compute, comm, multiply-adds} of this rank.
std::array<double, 4> run_point(const Point& p, md::Placement placement, int64_t reps, int rank,
                                int ranks) {
  md::RingOptions o;
  o.attention.causal = p.causal;
  o.attention.num_threads = p.threads;
  o.placement = placement;
  o.seq_q = p.n;
  const md::LocalSlices mine = md::local_slices(o, ranks, rank);
  const int64_t B = p.batch, H = p.heads, D = p.d, n = mine.seq_q;
  Operand q(p.dt, B, n, H, D, 1 + rank), k(p.dt, B, n, H, D, 11 + rank),
      v(p.dt, B, n, H, D, 21 + rank), out(p.dt, B, n, H, D, 0), dout(p.dt, B, n, H, D, 31 + rank),
      dq(p.dt, B, n, H, D, 0), dk(p.dt, B, n, H, D, 0), dv(p.dt, B, n, H, D, 0);
  std::vector<float> lse(size_t(B * H * n));
  const Tensor tlse = Tensor::contiguous(lse.data(), DType::f32, {B, H, n});
  md::ring_forward(q.view, k.view, v.view, out.view, &tlse, o, MPI_COMM_WORLD);  // warm-up, lse
  const double ring = best_of(reps, [&] {
    if (!p.backward)
      md::ring_forward(q.view, k.view, v.view, out.view, &tlse, o, MPI_COMM_WORLD);
    else
      md::ring_backward(q.view, k.view, v.view, out.view, dout.view, tlse, dq.view, dk.view,
                        dv.view, o, MPI_COMM_WORLD);
  });

  // The ring's block pairs computed alone, against local stand-ins of each owner's block, and
  // their multiply-adds (a causal diagonal pair counts half).
  struct Pair {
    int64_t q_offset, rows, keys;
    bool diagonal;
  };
  std::vector<Pair> pairs;
  double work = 0;
  for (int owner = 0; owner < ranks; ++owner) {
    const md::LocalSlices theirs = md::local_slices(o, ranks, owner);
    int64_t q_offset = 0;
    for (int i = 0; i < mine.count; ++i) {
      const int qc = i == 0 ? rank : 2 * ranks - 1 - rank;
      for (int j = 0; j < theirs.count; ++j) {
        const int kc = j == 0 ? owner : 2 * ranks - 1 - owner;
        const int64_t rows = mine.q[i].length, keys = theirs.k[j].length;
        if (rows == 0 || keys == 0 || (p.causal && kc > qc)) continue;
        pairs.push_back({q_offset, rows, keys, p.causal && kc == qc});
        work += double(B * H) * double(rows) * double(keys) * double(2 * D) *
                (pairs.back().diagonal ? 0.5 : 1);
      }
      q_offset += mine.q[i].length;
    }
  }
  const int64_t block = p.n / (ranks * mine.count) + 1;
  Operand kb(p.dt, B, block, H, D, 41), vb(p.dt, B, block, H, D, 51), dkb(p.dt, B, block, H, D, 0),
      dvb(p.dt, B, block, H, D, 0);
  std::vector<float> part_lse(size_t(B * H * block));
  const double compute = best_of(reps, [&] {
    for (const Pair& pair : pairs) {
      Options po = o.attention;
      po.causal = pair.diagonal;
      // The forward writes a partial lse; the backward reads the ring's global one, as the ring
      // does.
      const Tensor ls = p.backward
                            ? Tensor::strided(lse.data() + pair.q_offset, DType::f32,
                                              {B, H, pair.rows}, {H * n, n, 1})
                            : Tensor::contiguous(part_lse.data(), DType::f32, {B, H, pair.rows});
      if (!p.backward) {
        forward(q.rows(pair.q_offset, pair.rows), kb.rows(0, pair.keys), vb.rows(0, pair.keys),
                out.rows(pair.q_offset, pair.rows), &ls, po);
      } else {
        backward(q.rows(pair.q_offset, pair.rows), kb.rows(0, pair.keys), vb.rows(0, pair.keys),
                 out.rows(pair.q_offset, pair.rows), dout.rows(pair.q_offset, pair.rows), ls,
                 dq.rows(pair.q_offset, pair.rows), dkb.rows(0, pair.keys), dvb.rows(0, pair.keys),
                 po);
      }
    }
  });

  // The messages alone: R-1 K/V blocks; the backward's R dK/dV blocks (f32) on top.
  const size_t kv = 2 * size_t(B * block * H * D) * dtype_size(p.dt),
               grads = 2 * size_t(B * block * H * D) * 4;
  std::vector<char> send(std::max(kv, grads)), recv(send.size());
  const double comm = best_of(reps, [&] {
    const int kv_steps = ranks - 1, grad_steps = p.backward ? ranks : 0;
    for (int s = 0; s < kv_steps + grad_steps && ranks > 1; ++s) {
      MPI_Request r[2];
      const int bytes = int(s < kv_steps ? kv : grads);
      MPI_Irecv(recv.data(), bytes, MPI_BYTE, (rank + ranks - 1) % ranks, 0, MPI_COMM_WORLD, &r[0]);
      MPI_Isend(send.data(), bytes, MPI_BYTE, (rank + 1) % ranks, 0, MPI_COMM_WORLD, &r[1]);
      MPI_Waitall(2, r, MPI_STATUSES_IGNORE);
    }
  });
  return {ring, compute, comm, work};
}

}  // namespace

int bench_dist_main(const Config& c) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) MPI_Init(nullptr, nullptr);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  const md::Placement placement =
      c.placement == "contiguous" ? md::Placement::contiguous : md::Placement::zigzag;
  const int64_t reps = c.reps > 0 ? c.reps : 3;
  int failed = 0;
  if (rank == 0 && c.json) std::printf("[");
  bool first = true;
  for (DType dt : c.dtypes)
    for (int64_t d : c.d)
      for (int64_t heads : c.heads)
        for (int64_t batch : c.batch)
          for (int64_t n : c.n)
            for (int64_t causal : c.causal)
              for (int64_t threads : c.threads)
                for (Direction dir : c.directions) {
                  const Point p{
                      dt,          d, heads, batch, n, causal != 0, dir == Direction::backward,
                      int(threads)};
                  std::array<double, 4> mine{}, lo{}, hi{};
                  try {
                    mine = run_point(p, placement, reps, rank, ranks);
                  } catch (const Error& e) {  // collective: every rank caught the same error
                    if (rank == 0) std::fprintf(stderr, "memattn bench --dist: %s\n", e.what());
                    failed = 1;
                    continue;
                  }
                  MPI_Reduce(mine.data(), lo.data(), 4, MPI_DOUBLE, MPI_MIN, 0, MPI_COMM_WORLD);
                  MPI_Reduce(mine.data(), hi.data(), 4, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
                  if (rank != 0) continue;
                  // Hidden: the part of the messages' own time the ring did not add on top of
                  // the busiest rank's compute. Flops: 2 per multiply-add, backward 2.5x forward.
                  const double hidden =
                      hi[2] > 0 ? std::clamp((hi[1] + hi[2] - hi[0]) / hi[2], 0.0, 1.0) : 1.0;
                  const double gflops = 2 * hi[3] * (p.backward ? 2.5 : 1.0) / hi[1] * 1e-9;
                  const double balance = hi[3] > 0 ? lo[3] / hi[3] : 1.0;
                  const char* fmt =
                      c.json ? "%s{\"ranks\": %d, \"placement\": \"%s\", \"direction\": \"%s\", "
                               "\"dtype\": \"%s\", "
                               "\"n\": %lld, \"d\": %lld, \"heads\": %lld, \"batch\": %lld, "
                               "\"causal\": %d, "
                               "\"threads\": %d, \"ring_s\": %.6f, \"compute_s\": %.6f, "
                               "\"comm_s\": %.6f, "
                               "\"hidden\": %.3f, \"balance\": %.3f, \"gflops_per_rank\": %.2f}"
                             : "%sranks=%d placement=%s direction=%s dtype=%s n=%lld d=%lld "
                               "heads=%lld "
                               "batch=%lld causal=%d threads=%d ring_s=%.4f compute_s=%.4f "
                               "comm_s=%.4f "
                               "hidden=%.2f balance=%.3f gflops_per_rank=%.2f\n";
                  std::printf(fmt, c.json && !first ? ", " : "", ranks,
                              md::placement_name(placement), direction_name(dir), dtype_name(dt),
                              (long long)n, (long long)d, (long long)heads, (long long)batch,
                              int(causal), int(threads), hi[0], hi[1], hi[2], hidden, balance,
                              gflops);
                  first = false;
                }
  if (rank == 0 && c.json) std::printf("]\n");
  std::fflush(stdout);
  MPI_Finalize();
  return failed;
}

}  // namespace memattn::tool

#else

namespace memattn::tool {

int bench_dist_main(const Config&) { return without_mpi("memattn bench --dist"); }

}  // namespace memattn::tool

#endif
