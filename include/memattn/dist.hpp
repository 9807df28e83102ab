// memattn::dist: exact sequence-parallel (ring) attention over MPI, forward and backward.
// Library memattn_dist (links memattn and MPI); the core library has no MPI dependency.
#pragma once

#include <mpi.h>

#include <array>
#include <cstdint>

#include "memattn/memattn.hpp"

namespace memattn::dist {

// How the global sequence is cut into chunks and which chunks a rank holds.
// contiguous: R chunks, rank r holds chunk r.
// zigzag: 2R chunks, rank r holds chunks r and 2R-1-r (in that order), so that under a causal mask
// every rank has the same number of visible key blocks (no rank idles).
enum class Placement : uint8_t { contiguous, zigzag };
const char* placement_name(Placement);

struct RingOptions {
  // causal (either alignment), window_left/right, diagonal_offset, scale, GQA (through the head
  // counts of q and k), softcap, alibi_slopes, algorithm, num_threads and target act as in
  // memattn::forward on the gathered sequence: diagonals are the global ones. Block pairs that
  // the causal mask and the window hide entirely are not computed (their K/V block still travels
  // on). mask and bias are slices: each rank passes the rows of ITS queries against ALL global
  // keys, [batch|1, heads_q|1, local seq_q|1, global seq_k|1], rows in the order of its local q
  // (zigzag: chunk 0's rows, then chunk 1's), columns in global key order; any strides. sinks
  // and cu_seqlens are not supported.
  Options attention;
  Placement placement = Placement::contiguous;
  int64_t seq_q = 0;   // global query length (sum over ranks)
  int64_t seq_k = -1;  // global key length; -1: seq_q (self-attention)
};

// A run of global sequence positions.
struct Range {
  int64_t start = 0, length = 0;
};

// The global positions a rank holds, in the order its local tensors store them: chunks[0] then
// chunks[1] (zigzag only). Query chunks split seq_q as evenly as possible (lengths differ by at
// most 1); key chunks do the same for seq_k without a causal mask, and under one start where the
// causal diagonal of their query chunk falls (clamped to [0, seq_k]), so that a block pair is
// either entirely visible, entirely hidden, or cut by the diagonal only where chunk indices meet.
struct LocalSlices {
  int count = 1;                 // chunks held: 1 (contiguous) or 2 (zigzag)
  std::array<Range, 2> q, k;     // global query and key positions of each chunk
  int64_t seq_q = 0, seq_k = 0;  // local lengths: q/out/dout/dq rows, k/v/dk/dv rows
};

// The slices of `rank` among `ranks`. Throws invalid_argument for a bad placement, seq_q < 0,
// seq_k < -1, ranks < 1 or rank outside [0, ranks).
LocalSlices local_slices(const RingOptions& options, int ranks, int rank);

// Every rank calls this collectively with its slices: q [batch, seq_q_local, heads_q, dim],
// k [batch, seq_k_local, heads_kv, dim], v [batch, seq_k_local, heads_kv, dim_v] (f32, bf16 or
// f16; any strides) as local_slices() gives them; writes out [batch, seq_q_local, heads_q, dim_v]
// (dtype of q) and, when given, lse (f32 [batch, heads_q, seq_q_local]): exactly
// memattn::forward on the gathered sequence, up to rounding. K/V blocks travel around the ring of
// `comm` (MPI_Isend/MPI_Irecv, double-buffered, overlapped with the compute on the block in hand);
// each rank merges its per-block (out, lse) partials in f32 in ring order, so results are
// bitwise identical run to run for a fixed rank count and options (any thread count).
//
// Errors: if any rank's arguments are invalid (its own memattn::Error), or the ranks disagree on
// the options or the shapes that must match, every rank throws the same memattn::Error, whose
// message starts with "rank N: " naming the lowest failing rank, before any data is exchanged and
// before any output is written. MPI failures follow comm's error handler.
void ring_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                  const Tensor* lse, const RingOptions& options, MPI_Comm comm);

// Gradients of ring_forward, collectively: out and lse are ring_forward's (global) results for
// this rank's queries, dout has out's shape and dtype; writes dq, dk, dv (shapes and dtypes of q,
// k, v, any non-overlapping strides). Each block pair runs memattn::backward with the global lse;
// dq accumulates locally in f32, dK/dV accumulate in f32 while travelling around the ring with
// their K/V block back to the owner, in a fixed order per rank count (bitwise identical run to
// run). dbias (optional; options.attention.bias must be set) has this rank's bias slice's shape
// and dtype and receives the gradient of that slice (its rows against all keys), summed over its
// broadcast dims in f32 in ring order and rounded once. Errors as for ring_forward.
void ring_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                   const Tensor& dout, const Tensor& lse, const Tensor& dq, const Tensor& dk,
                   const Tensor& dv, const RingOptions& options, MPI_Comm comm,
                   const Tensor* dbias = nullptr);

}  // namespace memattn::dist
