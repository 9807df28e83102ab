// ring_backward: K/V blocks and their f32 dK/dV accumulators circle the ring back to their owners.
#include <algorithm>
#include <memory>
#include <vector>

#include "api/validate.hpp"
#include "dist/agree.hpp"
#include "dist/blocks.hpp"
#include "dist/ring.hpp"

namespace memattn::dist {
namespace {

using detail::BlockBuffer;
using memattn::detail::Buffer;

constexpr int kTagKV = 20, kTagGrads = 30;

// Scratch of one rank's backward, allocated before the ring starts.
struct BackwardState {
  std::unique_ptr<BlockBuffer> blocks[2], grads[2];  // K/V (input dtype) and dK/dV (f32)
  std::unique_ptr<BlockBuffer> part_kv;              // one pair's dk, dv (input dtype)
  std::unique_ptr<Buffer> part_dq, dq_acc, workspace;
  std::unique_ptr<Buffer> part_dbias, dbias_acc;  // one pair's dbias (bias dtype), the sum (f32)
  size_t workspace_bytes = 0;
};

}  // namespace

void ring_backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                   const Tensor& dout, const Tensor& lse, const Tensor& dq, const Tensor& dk,
                   const Tensor& dv, const RingOptions& options, MPI_Comm comm, const Tensor* dbias) {
  detail::PrivateComm ring(comm);
  const int rank = ring.rank();
  detail::RingLayout layout;
  detail::Dims dims;
  LocalSlices mine;
  BackwardState st;
  detail::agree(ring.get(), [&] {
    layout = detail::make_layout(options, ring.size());
    dims = detail::check_inputs(q, k, v, options, layout, rank);
    mine = layout.slices(rank);
    const int64_t B = dims.batch, Hq = dims.heads_q, Hkv = dims.heads_kv;
    detail::check_shaped(out, "out", dims.dtype, {B, mine.seq_q, Hq, dims.dim_v}, 4,
                         "[batch, local seq_q, heads_q, head_dim_v] of ring_forward", false);
    detail::check_shaped(dout, "dout", dims.dtype, {B, mine.seq_q, Hq, dims.dim_v}, 4, "out's",
                         false);
    detail::check_shaped(lse, "lse", DType::f32, {B, Hq, mine.seq_q, 0}, 3,
                         "[batch, heads_q, local seq_q] of ring_forward", false);
    detail::check_shaped(dq, "dq", dims.dtype, {B, mine.seq_q, Hq, dims.dim}, 4, "q's", true);
    detail::check_shaped(dk, "dk", dims.dtype, {B, mine.seq_k, Hkv, dims.dim}, 4, "k's", true);
    detail::check_shaped(dv, "dv", dims.dtype, {B, mine.seq_k, Hkv, dims.dim_v}, 4, "v's", true);
    const Tensor* bias = options.attention.bias;
    if (dbias && !bias)
      memattn::detail::fail(ErrorCode::invalid_argument,
                            "dbias: given, but options.attention.bias is null (no bias to differentiate)");
    if (dbias)
      detail::check_shaped(*dbias, "dbias", bias->dtype, bias->shape, 4, "this rank's bias slice's", true);
    std::vector<std::pair<const Tensor*, const char*>> outputs{{&dq, "dq"}, {&dk, "dk"}, {&dv, "dv"}};
    if (dbias) outputs.emplace_back(dbias, "dbias");
    std::vector<std::pair<const Tensor*, const char*>> inputs = detail::ring_inputs(q, k, v, options.attention);
    inputs.insert(inputs.end(), {{&out, "out"}, {&dout, "dout"}, {&lse, "lse"}});
    detail::check_disjoint(outputs, inputs);
    const int64_t max_k = layout.max_local_k();
    int64_t max_q_chunk = 0, max_k_chunk = 0;
    for (int i = 0; i < mine.count; ++i) max_q_chunk = std::max(max_q_chunk, mine.q[i].length);
    for (int c = 0; c < layout.ranks * layout.per_rank; ++c)
      max_k_chunk = std::max(max_k_chunk, layout.k_chunk(c).length);
    for (int b = 0; b < 2; ++b) {
      st.blocks[b] = std::make_unique<BlockBuffer>(dims, dims.dtype, max_k);
      st.grads[b] = std::make_unique<BlockBuffer>(dims, DType::f32, max_k);
    }
    st.part_kv = std::make_unique<BlockBuffer>(dims, dims.dtype, max_k_chunk);
    detail::check_message_bytes(st.grads[0]->k_bytes(max_k), "a dK block");
    detail::check_message_bytes(st.grads[0]->v_bytes(max_k), "a dV block");
    size_t part_dbias_bytes = 0;
    for (int owner = 0; owner < layout.ranks; ++owner)
      layout.for_each_visible_pair(rank, owner, [&](const detail::BlockPair& p) {
        const detail::PairOptions pair(options.attention, p);
        st.workspace_bytes = std::max(
            st.workspace_bytes,
            backward_workspace_bytes(detail::slice(q, 1, p.q_offset, p.rows), st.blocks[0]->k(p.keys),
                                     st.blocks[0]->v(p.keys), pair.get(), BackwardRequest{dbias != nullptr}));
        if (dbias)
          part_dbias_bytes = std::max(part_dbias_bytes, memattn::detail::checked_mul(
                                                            size_t(detail::PairOptions::cut(*bias, p).numel()),
                                                            dtype_size(bias->dtype)));
      });
    if (dbias) {
      st.part_dbias = std::make_unique<Buffer>(part_dbias_bytes, "a ring dbias partial");
      st.dbias_acc = std::make_unique<Buffer>(detail::f32_bytes({bias->shape[0], bias->shape[1], bias->shape[2],
                                                                 bias->shape[3]}),
                                              "ring dbias");
    }
    // One pair's dq in the input dtype (f32 bytes: enough for any of them).
    st.part_dq = std::make_unique<Buffer>(detail::f32_bytes({B, max_q_chunk, Hq, dims.dim}),
                                          "a ring dq partial");
    st.dq_acc =
        std::make_unique<Buffer>(detail::f32_bytes({B, mine.seq_q, Hq, dims.dim}), "ring dq");
    st.workspace = std::make_unique<Buffer>(st.workspace_bytes, "a ring workspace");
  });
  detail::expect_same_problem(ring.get(), options, dims);  // collective: the same error everywhere

  const Tensor dq_acc = detail::dense(st.dq_acc->data(), DType::f32,
                                      {dims.batch, mine.seq_q, dims.heads_q, dims.dim});
  std::fill_n(static_cast<float*>(dq_acc.data), dq_acc.numel(), 0.0f);
  Tensor dbias_acc;  // dbias summed over the pairs in ring order (hidden pairs add nothing)
  if (dbias) {
    dbias_acc = detail::dense(st.dbias_acc->data(), DType::f32, dbias->shape);
    std::fill_n(static_cast<float*>(dbias_acc.data), dbias_acc.numel(), 0.0f);
  }
  detail::copy(k, st.blocks[0]->k(mine.seq_k));
  detail::copy(v, st.blocks[0]->v(mine.seq_k));
  const Tensor own_dk = st.grads[0]->k(mine.seq_k), own_dv = st.grads[0]->v(mine.seq_k);
  std::fill_n(static_cast<float*>(own_dk.data), own_dk.numel(), 0.0f);
  std::fill_n(static_cast<float*>(own_dv.data), own_dv.numel(), 0.0f);

  detail::Transfers transfers(ring.get());
  for (int step = 0; step < layout.ranks; ++step) {
    const int owner = ring.owner_at(step);
    const BlockBuffer& held = *st.blocks[step % 2];
    BlockBuffer& grads = *st.grads[step % 2];
    const int64_t held_rows = layout.slices(owner).seq_k;
    // The next block's gradients (after the last step: this rank's own, home from the ring).
    const int64_t next_rows = layout.slices(ring.owner_at(step + 1)).seq_k;
    st.grads[(step + 1) % 2]->receive(transfers, next_rows, ring.left(), kTagGrads);
    if (step + 1 < layout.ranks) {
      st.blocks[(step + 1) % 2]->receive(transfers, next_rows, ring.left(), kTagKV);
      held.send(transfers, held_rows, ring.right(), kTagKV);
    }
    layout.for_each_visible_pair(rank, owner, [&](const detail::BlockPair& p) {
      const Tensor part_dq = detail::dense(st.part_dq->data(), dims.dtype,
                                           {dims.batch, p.rows, dims.heads_q, dims.dim});
      const auto rows = [&](const Tensor& t, int dim) {
        return detail::slice(t, dim, p.q_offset, p.rows);
      };
      const auto keys = [&](const Tensor& t) { return detail::slice(t, 1, p.k_offset, p.keys); };
      Tensor part_dbias;
      if (dbias) {
        const Tensor cut = detail::PairOptions::cut(*dbias, p);
        part_dbias = detail::dense(st.part_dbias->data(), dbias->dtype, cut.shape);
      }
      backward(rows(q, 1), keys(held.k(held_rows)), keys(held.v(held_rows)), rows(out, 1),
               rows(dout, 1), rows(lse, 2), part_dq, st.part_kv->k(p.keys), st.part_kv->v(p.keys),
               detail::PairOptions(options.attention, p).get(), dbias ? &part_dbias : nullptr,
               {st.workspace->data(), st.workspace_bytes});
      if (dbias) detail::accumulate(part_dbias, detail::PairOptions::cut(dbias_acc, p));
      detail::accumulate(part_dq, rows(dq_acc, 1));
      detail::accumulate(st.part_kv->k(p.keys), keys(grads.k(held_rows)));
      detail::accumulate(st.part_kv->v(p.keys), keys(grads.v(held_rows)));
    });
    grads.send(transfers, held_rows, ring.right(), kTagGrads);  // on to the next rank, or home
    transfers.wait();
  }
  const BlockBuffer& home = *st.grads[layout.ranks % 2];
  detail::copy(dq_acc, dq);
  detail::copy(home.k(mine.seq_k), dk);
  detail::copy(home.v(mine.seq_k), dv);
  if (dbias) detail::copy(dbias_acc, *dbias);
}

}  // namespace memattn::dist
