// A program built against an installed memattn_dist: ring attention with a sliding window over the
// ranks of MPI_COMM_WORLD; every output row is the mean of v's rows, which are all 1.
#include <cstdio>
#include <vector>

#include "memattn/dist.hpp"

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  memattn::dist::RingOptions o;
  o.seq_q = 16;
  o.attention.window_left = 2, o.attention.window_right = 0;
  const memattn::dist::LocalSlices s = memattn::dist::local_slices(o, ranks, rank);
  std::vector<float> q(size_t(s.seq_q) * 8, 0.5f), k(size_t(s.seq_k) * 8, 0.25f), v(size_t(s.seq_k) * 8, 1.0f),
      out(size_t(s.seq_q) * 8, 0.0f);
  using memattn::DType, memattn::Tensor;
  memattn::dist::ring_forward(Tensor::contiguous(q.data(), DType::f32, {1, s.seq_q, 1, 8}),
                              Tensor::contiguous(k.data(), DType::f32, {1, s.seq_k, 1, 8}),
                              Tensor::contiguous(v.data(), DType::f32, {1, s.seq_k, 1, 8}),
                              Tensor::contiguous(out.data(), DType::f32, {1, s.seq_q, 1, 8}), nullptr, o, MPI_COMM_WORLD);
  int wrong = 0;
  for (float x : out) wrong += x != 1.0f;
  MPI_Allreduce(MPI_IN_PLACE, &wrong, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0) std::printf("consumer_dist: %d ranks, %d wrong outputs\n", ranks, wrong);
  MPI_Finalize();
  return wrong != 0;
}
