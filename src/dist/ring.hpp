// What ring_forward and ring_backward share: the call's communicator, layout, checks and transfers.
#pragma once

#include <mpi.h>

#include <functional>
#include <vector>

#include "common/memory.hpp"
#include "dist/layout.hpp"
#include "memattn/dist.hpp"

namespace memattn::dist::detail {

// A private duplicate of the caller's communicator (so the ring's messages never match the
// caller's), freed at scope exit.
class PrivateComm {
 public:
  explicit PrivateComm(MPI_Comm comm);
  ~PrivateComm();
  PrivateComm(const PrivateComm&) = delete;
  PrivateComm& operator=(const PrivateComm&) = delete;
  MPI_Comm get() const { return comm_; }
  int rank() const { return rank_; }
  int size() const { return size_; }
  int left() const { return (rank_ + size_ - 1) % size_; }
  int right() const { return (rank_ + 1) % size_; }
  // The rank whose K/V block this rank holds at ring step s.
  int owner_at(int step) const { return (rank_ - step % size_ + size_) % size_; }

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
};

// Fails every rank of comm with `error` (this rank's) or a lower failing rank's, by taking part in
// the first collective steps of ring_forward/ring_backward (the communicator's duplication and the
// error agreement) that the other ranks run: for errors found before a ring call can start.
[[noreturn]] void fail_collectively(MPI_Comm comm, const Error& error);

// The problem's dimensions, read from the local q, k, v once they are checked.
struct Dims {
  int64_t batch = 0, heads_q = 0, heads_kv = 0, dim = 0, dim_v = 0;
  DType dtype = DType::f32;
};

// Local checks of q, k, v, and of the mask and bias slices, against this rank's slices and of the
// options the ring serves; returns the dims. Throws memattn::Error naming the argument (run it
// inside agree()).
Dims check_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const RingOptions& options,
                  const RingLayout& layout, int rank);
// An operand whose shape and dtype are dictated (`what` explains the shape); outputs must also
// be writable (no element reached twice).
void check_shaped(const Tensor& t, const char* name, DType dtype,
                  const std::array<int64_t, 4>& shape, int ndim, const char* what, bool output);
// q, k, v and the options' mask and bias (when given), named, for check_disjoint.
std::vector<std::pair<const Tensor*, const char*>> ring_inputs(const Tensor& q, const Tensor& k, const Tensor& v,
                                                               const Options& options);
// Throws aliasing if an output may share an element with any of the other tensors.
void check_disjoint(const std::vector<std::pair<const Tensor*, const char*>>& outputs,
                    const std::vector<std::pair<const Tensor*, const char*>>& inputs);
// Collectively: every rank holds the same options and dims (else every rank throws the same
// invalid_argument naming the first that differs).
void expect_same_problem(MPI_Comm comm, const RingOptions& options, const Dims& dims);
// The attention options of one visible block pair: top_left with the pair's diagonal offset;
// causal and window kept on partial pairs, dropped on full ones; the mask and bias cut to the
// pair's rows (of the rank's local queries) and columns (its global keys), broadcast dims kept.
class PairOptions {
 public:
  PairOptions(const Options& base, const BlockPair& pair);
  PairOptions(const PairOptions&) = delete;  // options points into this object
  PairOptions& operator=(const PairOptions&) = delete;
  const Options& get() const { return options_; }
  // The view of `whole` (a [B|1, H|1, local seq_q|1, global seq_k|1] mask, bias or dbias) that
  // belongs to the pair.
  static Tensor cut(const Tensor& whole, const BlockPair& pair);

 private:
  Tensor mask_, bias_;
  Options options_;
};

// Throws unsupported when a message of `bytes` does not fit MPI's int count.
void check_message_bytes(size_t bytes, const char* what);

// The nonblocking messages of one ring step; wait() completes them all.
class Transfers {
 public:
  explicit Transfers(MPI_Comm comm) : comm_(comm) {}
  void send(const void* data, size_t bytes, int to, int tag);
  void receive(void* data, size_t bytes, int from, int tag);
  void wait();

 private:
  MPI_Comm comm_;
  // Handles are copied out of the vector by MPI_Waitall; reallocation does not disturb them.
  std::vector<MPI_Request> requests_;
};

// One travelling block: K then V (or their f32 gradients) as dense [batch, rows, heads_kv, dim]
// and [.., dim_v] arrays in one buffer from memattn's allocator, sized for `max_rows` rows.
class BlockBuffer {
 public:
  BlockBuffer(const Dims& dims, DType dtype, int64_t max_rows);
  size_t k_bytes(int64_t rows) const;
  size_t v_bytes(int64_t rows) const;
  Tensor k(int64_t rows) const;
  Tensor v(int64_t rows) const;
  // Both arrays of a block of `rows` rows as two messages, tags `tag` and `tag + 1`.
  void send(Transfers& t, int64_t rows, int to, int tag) const;
  void receive(Transfers& t, int64_t rows, int from, int tag);

 private:
  Dims dims_;
  DType dtype_;
  size_t k_capacity_;
  memattn::detail::Buffer storage_;
};

}  // namespace memattn::dist::detail
