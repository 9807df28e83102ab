// The checks and transfers ring_forward and ring_backward share.
#include "dist/ring.hpp"

#include <climits>
#include <cstring>
#include <utility>

#include "api/validate.hpp"
#include "dist/agree.hpp"
#include "dist/blocks.hpp"

namespace memattn::dist::detail {

using memattn::detail::cat;
using memattn::detail::fail;
using memattn::detail::shape_str;

PrivateComm::PrivateComm(MPI_Comm comm) {
  MPI_Comm_dup(comm, &comm_);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

PrivateComm::~PrivateComm() { MPI_Comm_free(&comm_); }

void fail_collectively(MPI_Comm comm, const Error& error) {
  PrivateComm ring(comm);
  agree(ring.get(), [&] { throw error; });
  throw error;  // not reached: agree() throws when any rank failed
}

namespace {

// The shape of a mask or bias slice: this rank's query rows against every global key, [B|1, H|1,
// local seq_q|1, global seq_k|1].
void check_slice_shape(const Tensor& t, const char* name, const Dims& dims, int64_t local_seq_q,
                 int64_t global_seq_k, int rank) {
  memattn::detail::check_tensor(t, name, 4);
  const int64_t want[4] = {dims.batch, dims.heads_q, local_seq_q, global_seq_k};
  for (int d = 0; d < 4; ++d)
    if (t.shape[d] != want[d] && t.shape[d] != 1)
      fail(ErrorCode::invalid_argument,
           cat(name, ": shape ", shape_str(t), " is not rank ", rank, "'s slice [B=", want[0], "|1, H=",
               want[1], "|1, local seq_q=", want[2], "|1, global seq_k=", want[3],
               "|1] (its query rows against every global key); dim ", d, " is ", t.shape[d]));
}

}  // namespace

Tensor PairOptions::cut(const Tensor& whole, const BlockPair& pair) {
  Tensor t = whole;
  if (t.shape[2] != 1) t = slice(t, 2, pair.q_offset, pair.rows);
  if (t.shape[3] != 1) t = slice(t, 3, pair.k_start, pair.keys);
  return t;
}

PairOptions::PairOptions(const Options& base, const BlockPair& pair) : options_(base) {
  const bool partial = pair.visibility.coverage == Coverage::partial;
  options_.align = Align::top_left;
  options_.diagonal_offset = pair.visibility.diagonal_offset;
  options_.causal = partial && base.causal;
  if (!partial) options_.window_left = options_.window_right = -1;
  if (base.mask) mask_ = cut(*base.mask, pair), options_.mask = &mask_;
  if (base.bias) bias_ = cut(*base.bias, pair), options_.bias = &bias_;
}

Dims check_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const RingOptions& options,
                  const RingLayout& layout, int rank) {
  memattn::detail::check_tensor(q, "q", 4);
  memattn::detail::check_tensor(k, "k", 4);
  memattn::detail::check_tensor(v, "v", 4);
  if (q.dtype != DType::f32 && q.dtype != DType::bf16 && q.dtype != DType::f16)
    fail(ErrorCode::wrong_dtype,
         cat("q: dtype must be f32, bf16 or f16 for ring attention, got ", dtype_name(q.dtype)));
  const Options& a = options.attention;
  if (a.num_threads < 0)
    fail(ErrorCode::invalid_argument,
         cat("options.attention.num_threads must be 0 (all) or > 0, got ", a.num_threads));
  // A sink joins each row's softmax once; every block pair would add it again.
  if (a.sinks)
    fail(ErrorCode::unsupported, "options.attention.sinks: not supported by ring attention (each "
                                 "block pair would count the sink once more)");
  // q, k, v as one attention problem (dtypes, batch, heads, head dims, strides, threads, target),
  // even on a rank whose block pairs are all hidden: other ranks will compute with its K/V. The
  // masks are the layout's, the mask and bias slices are checked below.
  Options whole = a;
  whole.causal = false;
  whole.window_left = whole.window_right = -1;
  whole.diagonal_offset = 0;
  whole.mask = whole.bias = nullptr;
  workspace_bytes(q, k, v, whole);
  const LocalSlices mine = layout.slices(rank);
  const Dims dims{q.shape[0], q.shape[2], k.shape[2], q.shape[3], v.shape[3], q.dtype};
  const int64_t global_seq_k = layout.k_bounds.back();
  if (a.mask) {
    check_slice_shape(*a.mask, "mask", dims, mine.seq_q, global_seq_k, rank);
    if (a.mask->dtype != DType::u8)
      fail(ErrorCode::wrong_dtype, cat("mask: dtype must be u8 (nonzero = attend), got ", dtype_name(a.mask->dtype)));
  }
  if (a.bias) {
    check_slice_shape(*a.bias, "bias", dims, mine.seq_q, global_seq_k, rank);
    const DType bd = a.bias->dtype;
    if (bd != DType::f32 && bd != DType::bf16 && bd != DType::f16)
      fail(ErrorCode::wrong_dtype, cat("bias: dtype must be f32, bf16 or f16, got ", dtype_name(bd)));
  }
  const auto expect_rows = [&](const Tensor& t, const char* name, int64_t want, const char* of) {
    if (t.shape[1] != want)
      fail(ErrorCode::invalid_argument,
           cat(name, ": shape ", shape_str(t), " has ", t.shape[1], " rows, expected ", want,
               " (rank ", rank, "'s slices of global ", of, " under ",
               placement_name(options.placement), " placement; see local_slices())"));
  };
  expect_rows(q, "q", mine.seq_q, "seq_q");
  expect_rows(k, "k", mine.seq_k, "seq_k");
  expect_rows(v, "v", mine.seq_k, "seq_k");
  return dims;
}

void check_shaped(const Tensor& t, const char* name, DType dtype,
                  const std::array<int64_t, 4>& shape, int ndim, const char* what, bool output) {
  memattn::detail::check_tensor(t, name, ndim);
  if (t.dtype != dtype)
    fail(ErrorCode::wrong_dtype,
         cat(name, ": dtype must be ", dtype_name(dtype), ", got ", dtype_name(t.dtype)));
  for (int d = 0; d < ndim; ++d)
    if (t.shape[d] != shape[d]) {
      std::string want = "[";
      for (int e = 0; e < ndim; ++e) want += cat(e ? "," : "", shape[e]);
      fail(ErrorCode::invalid_argument,
           cat(name, ": shape ", shape_str(t), " expected ", want, "] (", what, ")"));
    }
  if (output) memattn::detail::check_writable(t, name);
}

std::vector<std::pair<const Tensor*, const char*>> ring_inputs(const Tensor& q, const Tensor& k, const Tensor& v,
                                                               const Options& options) {
  std::vector<std::pair<const Tensor*, const char*>> inputs{{&q, "q"}, {&k, "k"}, {&v, "v"}};
  if (options.mask) inputs.emplace_back(options.mask, "mask");
  if (options.bias) inputs.emplace_back(options.bias, "bias");
  return inputs;
}

void check_disjoint(const std::vector<std::pair<const Tensor*, const char*>>& outputs,
                    const std::vector<std::pair<const Tensor*, const char*>>& inputs) {
  for (size_t i = 0; i < outputs.size(); ++i) {
    for (const auto& [t, name] : inputs)
      memattn::detail::check_no_alias(*outputs[i].first, outputs[i].second, *t, name);
    for (size_t j = i + 1; j < outputs.size(); ++j)
      memattn::detail::check_no_alias(*outputs[i].first, outputs[i].second, *outputs[j].first,
                                      outputs[j].second);
  }
}

void expect_same_problem(MPI_Comm comm, const RingOptions& options, const Dims& dims) {
  const Options& a = options.attention;
  int64_t scale_bits = -1;  // unset
  if (a.scale) std::memcpy(&scale_bits, &*a.scale, sizeof scale_bits);
  expect_same_everywhere(comm, {{"batch", dims.batch},
                                {"heads_q", dims.heads_q},
                                {"heads_kv", dims.heads_kv},
                                {"head_dim", dims.dim},
                                {"head_dim_v", dims.dim_v},
                                {"dtype", int64_t(dims.dtype)},
                                {"options.seq_q", options.seq_q},
                                {"options.seq_k", options.seq_k},
                                {"options.placement", int64_t(options.placement)},
                                {"options.attention.causal", a.causal},
                                {"options.attention.align", int64_t(a.align)},
                                {"options.attention.window_left", a.window_left},
                                {"options.attention.window_right", a.window_right},
                                {"options.attention.diagonal_offset", a.diagonal_offset},
                                {"options.attention.mask (given)", a.mask != nullptr},
                                {"options.attention.bias (given)", a.bias != nullptr},
                                {"options.attention.scale (bits; -1 unset)", scale_bits},
                                {"options.attention.algorithm", int64_t(a.algorithm)}});
}

void check_message_bytes(size_t bytes, const char* what) {
  if (bytes > size_t(INT_MAX))
    fail(ErrorCode::unsupported, cat(what, " of ", bytes, " bytes exceeds one MPI message (",
                                     INT_MAX, " bytes); use more ranks"));
}

BlockBuffer::BlockBuffer(const Dims& dims, DType dtype, int64_t max_rows)
    : dims_(dims),
      dtype_(dtype),
      k_capacity_(k_bytes(max_rows)),
      storage_(memattn::detail::checked_add(k_capacity_, v_bytes(max_rows)), "a ring block") {}

size_t BlockBuffer::k_bytes(int64_t rows) const {
  using memattn::detail::checked_mul;
  return checked_mul(checked_mul(size_t(dims_.batch * dims_.heads_kv), size_t(rows)),
                     checked_mul(size_t(dims_.dim), dtype_size(dtype_)));
}

size_t BlockBuffer::v_bytes(int64_t rows) const {
  using memattn::detail::checked_mul;
  return checked_mul(checked_mul(size_t(dims_.batch * dims_.heads_kv), size_t(rows)),
                     checked_mul(size_t(dims_.dim_v), dtype_size(dtype_)));
}

Tensor BlockBuffer::k(int64_t rows) const {
  return dense(storage_.data(), dtype_, {dims_.batch, rows, dims_.heads_kv, dims_.dim});
}

Tensor BlockBuffer::v(int64_t rows) const {
  return dense(static_cast<char*>(storage_.data()) + k_capacity_, dtype_,
               {dims_.batch, rows, dims_.heads_kv, dims_.dim_v});
}

void BlockBuffer::send(Transfers& t, int64_t rows, int to, int tag) const {
  t.send(k(rows).data, k_bytes(rows), to, tag);
  t.send(v(rows).data, v_bytes(rows), to, tag + 1);
}

void BlockBuffer::receive(Transfers& t, int64_t rows, int from, int tag) {
  t.receive(k(rows).data, k_bytes(rows), from, tag);
  t.receive(v(rows).data, v_bytes(rows), from, tag + 1);
}

void Transfers::send(const void* data, size_t bytes, int to, int tag) {
  requests_.emplace_back();
  MPI_Isend(data, int(bytes), MPI_BYTE, to, tag, comm_, &requests_.back());
}

void Transfers::receive(void* data, size_t bytes, int from, int tag) {
  requests_.emplace_back();
  MPI_Irecv(data, int(bytes), MPI_BYTE, from, tag, comm_, &requests_.back());
}

void Transfers::wait() {
  MPI_Waitall(int(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE);
  requests_.clear();
}

}  // namespace memattn::dist::detail
