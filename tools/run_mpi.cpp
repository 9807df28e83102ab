// `memattn run --mpi`: ring attention on MPI_COMM_WORLD; each rank reads its slices, rank 0 writes.
#include <cstdio>

#include "run.hpp"
#include "without_mpi.hpp"

#ifdef MEMATTN_WITH_MPI

#include <cstddef>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

#include "memattn/dist.hpp"
#include "npy.hpp"
#include "output_files.hpp"

namespace memattn::tool {
namespace {
namespace md = memattn::dist;

constexpr auto kFloats = {DType::f32, DType::f16, DType::f64};
constexpr const char* kMaskDims = "[batch|1, heads_q|1, seq_q|1, seq_k|1]";

// Collective: every rank's `problem` ("" for none) becomes, on every rank, the lowest failing
// rank's as "rank N: problem" (the form ring_forward's own errors take), or "" when none failed.
std::string agree(const std::string& problem, int rank, int ranks) {
  int mine = problem.empty() ? ranks : rank, lowest = ranks;
  MPI_Allreduce(&mine, &lowest, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (lowest == ranks) return "";
  int length = int(problem.size());
  MPI_Bcast(&length, 1, MPI_INT, lowest, MPI_COMM_WORLD);
  std::string message = problem;
  message.resize(size_t(length));
  MPI_Bcast(message.data(), length, MPI_CHAR, lowest, MPI_COMM_WORLD);
  return "rank " + std::to_string(lowest) + ": " + message;
}

// A rank's rows of a [batch, seq, heads, dim] array, C order: chunk 0's rows, then chunk 1's.
struct Local {
  std::vector<std::byte> bytes;
  Tensor view;
};

Local empty_local(DType dtype, int64_t batch, int64_t seq, int64_t heads, int64_t dim) {
  Local l;
  l.bytes.resize(size_t(batch * seq * heads * dim) * dtype_size(dtype));
  l.view = Tensor::contiguous(l.bytes.data(), dtype, {batch, seq, heads, dim});
  return l;
}

// Copies the global rows `ranges` (count of them) of the file's array: only their pages of the
// mapping are read. Any strides (C or Fortran order).
Local read_rows(const NpyArray& a, const md::Range* ranges, int count, int64_t local_seq) {
  const Tensor g = a.tensor();
  const size_t es = dtype_size(g.dtype);
  Local l = empty_local(g.dtype, g.shape[0], local_seq, g.shape[2], g.shape[3]);
  const auto* src = static_cast<const std::byte*>(g.data);
  std::byte* dst = l.bytes.data();
  // C order (numpy's default): a position's heads and dims are one run of bytes.
  const bool rows = g.strides[3] == 1 && g.strides[2] == g.shape[3];
  const size_t row_bytes = size_t(g.shape[2] * g.shape[3]) * es;
  for (int64_t b = 0; b < g.shape[0]; ++b)
    for (int c = 0; c < count; ++c)
      for (int64_t i = ranges[c].start; i < ranges[c].start + ranges[c].length; ++i) {
        const std::byte* at = src + (b * g.strides[0] + i * g.strides[1]) * es;
        if (rows) {
          std::memcpy(dst, at, row_bytes);
          dst += row_bytes;
          continue;
        }
        for (int64_t h = 0; h < g.shape[2]; ++h)
          for (int64_t d = 0; d < g.shape[3]; ++d, dst += es) std::memcpy(dst, at + (h * g.strides[2] + d * g.strides[3]) * es, es);
      }
  return l;
}

// A rank's slice of a [batch|1, heads|1, seq_q, seq_k|1] mask or bias as ring_forward takes it:
// the query rows `ranges` (count of them; dim 2) against every key, element by element (any
// strides).
Local read_query_rows(const NpyArray& a, const md::Range* ranges, int count, int64_t local_seq) {
  const Tensor g = a.tensor();
  const size_t es = dtype_size(g.dtype);
  Local l;
  l.bytes.resize(size_t(g.shape[0] * g.shape[1] * local_seq * g.shape[3]) * es);
  l.view = Tensor::contiguous(l.bytes.data(), g.dtype, {g.shape[0], g.shape[1], local_seq, g.shape[3]});
  const auto* src = static_cast<const std::byte*>(g.data);
  std::byte* dst = l.bytes.data();
  for (int64_t b = 0; b < g.shape[0]; ++b)
    for (int64_t h = 0; h < g.shape[1]; ++h)
      for (int c = 0; c < count; ++c)
        for (int64_t i = ranges[c].start; i < ranges[c].start + ranges[c].length; ++i)
          for (int64_t j = 0; j < g.shape[3]; ++j, dst += es)
            std::memcpy(dst, src + (b * g.strides[0] + h * g.strides[1] + i * g.strides[2] + j * g.strides[3]) * es, es);
  return l;
}

// Which rows an array holds: query positions ([batch][seq][heads * dim] rows: out, dq), key
// positions (dk, dv), or query positions of lse ([batch * heads][seq] single floats).
enum class Rows { queries, keys, lse };

// Puts a rank's local rows into the global C-order array: `outer` runs of `seq_local` rows (of
// `row_bytes`) become rows at the global positions of `ranges` within runs of `seq_global`.
void place_rows(const std::byte* local, std::byte* global, const md::Range* ranges, int count, int64_t outer,
                int64_t seq_local, int64_t seq_global, size_t row_bytes) {
  for (int64_t o = 0; o < outer; ++o) {
    int64_t at = 0;
    for (int c = 0; c < count; ++c) {
      std::memcpy(global + size_t(o * seq_global + ranges[c].start) * row_bytes,
                  local + size_t(o * seq_local + at) * row_bytes, size_t(ranges[c].length) * row_bytes);
      at += ranges[c].length;
    }
  }
}

// Rank 0 receives every rank's `mine` into `global`; the others send.
void gather_rows(const Local& mine, const Tensor& global, const md::RingOptions& o, int rank, int ranks, Rows rows) {
  const Tensor& v = mine.view;
  const bool lse = rows == Rows::lse, keys = rows == Rows::keys;
  const int64_t outer = lse ? v.shape[0] * v.shape[1] : v.shape[0];
  const size_t row_bytes = lse ? sizeof(float) : size_t(v.shape[2] * v.shape[3]) * dtype_size(v.dtype);
  const int64_t seq_global = keys ? o.seq_k : o.seq_q;
  const int tag = int(rows);
  if (rank != 0) {
    MPI_Send(mine.bytes.data(), int(mine.bytes.size()), MPI_BYTE, 0, tag, MPI_COMM_WORLD);
    return;
  }
  std::vector<std::byte> theirs;
  for (int r = 0; r < ranks; ++r) {
    const md::LocalSlices s = md::local_slices(o, ranks, r);
    const int64_t seq_local = keys ? s.seq_k : s.seq_q;
    const std::byte* local = mine.bytes.data();
    if (r != 0) {
      theirs.resize(size_t(outer * seq_local) * row_bytes);
      MPI_Recv(theirs.data(), int(theirs.size()), MPI_BYTE, r, tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      local = theirs.data();
    }
    place_rows(local, static_cast<std::byte*>(global.data), keys ? s.k.data() : s.q.data(), s.count, outer,
               seq_local, seq_global, row_bytes);
  }
}

int finish(int code) {
  MPI_Finalize();
  return code;
}

}  // namespace

int run_mpi_main(const RunConfig& c) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) MPI_Init(nullptr, nullptr);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  const auto fail = [&](int code, const std::string& message) {
    if (rank == 0) std::fprintf(stderr, "memattn run: %s\n", message.c_str());
    return finish(code);
  };
  // The same command line on every rank: these problems need no agreement.
  std::string usage = coinciding_paths(c);
  if (!usage.empty()) return fail(2, usage);

  std::optional<NpyArray> q, k, v, dout, mask, bias, slopes, sinks;
  md::RingOptions ro;
  md::LocalSlices mine;
  Local ql, kl, vl, outl, lsel, doutl, dql, dkl, dvl, maskl, biasl;
  OutputFiles files;  // rank 0's
  Tensor out, lse, dq, dk, dv;
  Tensor modifiers[4];  // mask, bias, slopes, sinks: ro.attention points at them
  std::string problem;
  try {
    q = read_npy(c.q, {kFloats, 4, "[batch, seq_q, heads_q, dim]"});
    k = read_npy(c.k, {kFloats, 4, "[batch, seq_k, heads_kv, dim]"});
    v = read_npy(c.v, {kFloats, 4, "[batch, seq_k, heads_kv, dim_v]"});
    // Cut to this rank's query rows below when they have a row per query; otherwise given to
    // ring_forward as they are, for its own word on them.
    if (!c.mask.empty()) mask = read_npy(c.mask, {{DType::u8}, 4, kMaskDims}), modifiers[0] = mask->tensor();
    if (!c.bias.empty()) bias = read_npy(c.bias, {kFloats, 4, kMaskDims}), modifiers[1] = bias->tensor();
    if (!c.alibi_slopes.empty())
      slopes = read_npy(c.alibi_slopes, {{DType::f32}, -1, "[heads_q] or [batch, heads_q]"}), modifiers[2] = slopes->tensor();
    if (!c.sinks.empty()) sinks = read_npy(c.sinks, {{DType::f32}, -1, "[heads_q]"}), modifiers[3] = sinks->tensor();
    ro.attention = attention_options(c);
    ro.attention.mask = mask ? &modifiers[0] : nullptr;
    ro.attention.bias = bias ? &modifiers[1] : nullptr;
    ro.attention.alibi_slopes = slopes ? &modifiers[2] : nullptr;
    ro.attention.sinks = sinks ? &modifiers[3] : nullptr;
    ro.placement = c.placement == "zigzag" ? md::Placement::zigzag : md::Placement::contiguous;
    ro.seq_q = q->shape()[1], ro.seq_k = k->shape()[1];
    mine = md::local_slices(ro, ranks, rank);
    for (auto [file, local, view] : {std::tuple{&mask, &maskl, &modifiers[0]}, std::tuple{&bias, &biasl, &modifiers[1]}})
      if (*file && (*file)->shape()[2] == ro.seq_q && ro.seq_q != 1) {
        *local = read_query_rows(**file, mine.q.data(), mine.count, mine.seq_q);
        *view = local->view;
      }
    ql = read_rows(*q, mine.q.data(), mine.count, mine.seq_q);
    kl = read_rows(*k, mine.k.data(), mine.count, mine.seq_k);
    vl = read_rows(*v, mine.k.data(), mine.count, mine.seq_k);
    const int64_t batch = q->shape()[0], heads_q = q->shape()[2], dim_v = v->shape()[3];
    outl = empty_local(q->dtype(), batch, mine.seq_q, heads_q, dim_v);
    if (c.backward) {
      dout = read_npy(c.dout, {kFloats, 4, "[batch, seq_q, heads_q, dim_v]"});
      check_dout(*dout, *q, {batch, ro.seq_q, heads_q, dim_v});
      doutl = read_rows(*dout, mine.q.data(), mine.count, mine.seq_q);
      const auto like = [](const Local& l) {
        return empty_local(l.view.dtype, l.view.shape[0], l.view.shape[1], l.view.shape[2], l.view.shape[3]);
      };
      dql = like(ql), dkl = like(kl), dvl = like(vl);
    }
    if (!c.lse.empty() || c.backward) {  // backward needs lse even when it is not saved
      lsel = empty_local(DType::f32, batch, heads_q, mine.seq_q, 1);
      lsel.view = Tensor::contiguous(lsel.bytes.data(), DType::f32, {batch, heads_q, mine.seq_q});
    }
    if (rank == 0) {  // an unwritable output fails before any computation
      out = files.add(c.out, q->dtype(), {batch, ro.seq_q, heads_q, dim_v});
      if (!c.lse.empty()) lse = files.add(c.lse, DType::f32, {batch, heads_q, ro.seq_q});
      if (c.backward) {
        dq = files.add(c.dq, q->dtype(), q->shape());
        dk = files.add(c.dk, q->dtype(), k->shape());
        dv = files.add(c.dv, q->dtype(), v->shape());
      }
    }
  } catch (const std::exception& e) {
    problem = e.what();
  }
  if (const std::string agreed = agree(problem, rank, ranks); !agreed.empty()) return fail(1, agreed);

  try {
    md::ring_forward(ql.view, kl.view, vl.view, outl.view, lsel.bytes.empty() ? nullptr : &lsel.view, ro,
                     MPI_COMM_WORLD);
    if (c.backward)
      md::ring_backward(ql.view, kl.view, vl.view, outl.view, doutl.view, lsel.view, dql.view, dkl.view, dvl.view,
                        ro, MPI_COMM_WORLD);
  } catch (const std::exception& e) {  // collective: every rank caught the same error
    return fail(1, e.what());
  }
  gather_rows(outl, out, ro, rank, ranks, Rows::queries);
  if (!c.lse.empty()) gather_rows(lsel, lse, ro, rank, ranks, Rows::lse);
  if (c.backward) {
    gather_rows(dql, dq, ro, rank, ranks, Rows::queries);
    gather_rows(dkl, dk, ro, rank, ranks, Rows::keys);
    gather_rows(dvl, dv, ro, rank, ranks, Rows::keys);
  }
  problem.clear();
  if (rank == 0) try {
      files.commit();
    } catch (const std::exception& e) {
      problem = e.what();
    }
  const std::string agreed = agree(problem, rank, ranks);
  return agreed.empty() ? finish(0) : fail(1, agreed);
}

}  // namespace memattn::tool

#else

namespace memattn::tool {

int run_mpi_main(const RunConfig&) { return without_mpi("memattn run --mpi"); }

}  // namespace memattn::tool

#endif
