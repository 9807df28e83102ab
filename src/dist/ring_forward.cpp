// ring_forward: K/V blocks circle the ring while each rank merges its per-block (out, lse)
// partials.
#include <algorithm>
#include <cmath>
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
using memattn::detail::checked_mul;

constexpr int kTagKV = 10;

// Scratch of one rank's forward, allocated before the ring starts.
struct ForwardState {
  std::unique_ptr<BlockBuffer> blocks[2];
  std::unique_ptr<Buffer> part, part_lse, part32, acc, acc_lse, workspace;
  size_t workspace_bytes = 0;
};

}  // namespace

void ring_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                  const Tensor* lse, const RingOptions& options, MPI_Comm comm) {
  detail::PrivateComm ring(comm);
  const int rank = ring.rank();
  detail::RingLayout layout;
  detail::Dims dims;
  LocalSlices mine;
  ForwardState st;
  detail::agree(ring.get(), [&] {
    layout = detail::make_layout(options, ring.size());
    dims = detail::check_inputs(q, k, v, options, layout, rank);
    mine = layout.slices(rank);
    detail::check_shaped(out, "out", dims.dtype, {dims.batch, mine.seq_q, dims.heads_q, dims.dim_v},
                         4, "[batch, local seq_q, heads_q, head_dim_v]", true);
    if (lse)
      detail::check_shaped(*lse, "lse", DType::f32, {dims.batch, dims.heads_q, mine.seq_q, 0}, 3,
                           "[batch, heads_q, local seq_q]", true);
    std::vector<std::pair<const Tensor*, const char*>> outputs{{&out, "out"}};
    if (lse) outputs.emplace_back(lse, "lse");
    detail::check_disjoint(outputs, detail::ring_inputs(q, k, v, options.attention));
    const int64_t max_k = layout.max_local_k();
    int64_t max_q_chunk = 0;
    for (int i = 0; i < mine.count; ++i) max_q_chunk = std::max(max_q_chunk, mine.q[i].length);
    for (auto& b : st.blocks) b = std::make_unique<BlockBuffer>(dims, dims.dtype, max_k);
    detail::check_message_bytes(st.blocks[0]->k_bytes(max_k), "a K block");
    detail::check_message_bytes(st.blocks[0]->v_bytes(max_k), "a V block");
    // Every pair this rank will compute, validated (and its workspace sized) by memattn itself.
    for (int owner = 0; owner < layout.ranks; ++owner)
      layout.for_each_visible_pair(rank, owner, [&](const detail::BlockPair& p) {
        const detail::PairOptions pair(options.attention, p);
        st.workspace_bytes = std::max(
            st.workspace_bytes, workspace_bytes(detail::slice(q, 1, p.q_offset, p.rows),
                                                st.blocks[0]->k(p.keys), st.blocks[0]->v(p.keys), pair.get()));
      });
    const size_t part_elems =
        checked_mul(size_t(dims.batch * max_q_chunk), size_t(dims.heads_q * dims.dim_v));
    st.part =
        std::make_unique<Buffer>(checked_mul(part_elems, dtype_size(dims.dtype)), "a ring partial");
    st.part32 = std::make_unique<Buffer>(checked_mul(part_elems, sizeof(float)), "a ring partial");
    st.part_lse = std::make_unique<Buffer>(
        detail::f32_bytes({dims.batch, dims.heads_q, max_q_chunk}), "a ring lse");
    st.acc = std::make_unique<Buffer>(
        detail::f32_bytes({dims.batch, mine.seq_q, dims.heads_q, dims.dim_v}), "ring out");
    st.acc_lse = std::make_unique<Buffer>(detail::f32_bytes({dims.batch, dims.heads_q, mine.seq_q}),
                                          "ring lse");
    st.workspace = std::make_unique<Buffer>(st.workspace_bytes, "a ring workspace");
  });
  detail::expect_same_problem(ring.get(), options, dims);  // collective: the same error everywhere

  // The running result: out = 0, lse = -inf merges as "no keys yet".
  const Tensor acc =
      detail::dense(st.acc->data(), DType::f32, {dims.batch, mine.seq_q, dims.heads_q, dims.dim_v});
  const Tensor acc_lse =
      Tensor::contiguous(st.acc_lse->data(), DType::f32, {dims.batch, dims.heads_q, mine.seq_q});
  std::fill_n(static_cast<float*>(acc.data), acc.numel(), 0.0f);
  std::fill_n(static_cast<float*>(acc_lse.data), acc_lse.numel(), -INFINITY);
  const MergeOptions merge_options{options.attention.num_threads};

  detail::copy(k, st.blocks[0]->k(mine.seq_k));
  detail::copy(v, st.blocks[0]->v(mine.seq_k));
  detail::Transfers transfers(ring.get());
  for (int step = 0; step < layout.ranks; ++step) {
    const int owner = ring.owner_at(step);
    const BlockBuffer& held = *st.blocks[step % 2];
    const int64_t held_rows = layout.slices(owner).seq_k;
    if (step + 1 < layout.ranks) {  // the next block arrives while this one is computed
      st.blocks[(step + 1) % 2]->receive(transfers, layout.slices(ring.owner_at(step + 1)).seq_k,
                                         ring.left(), kTagKV);
      held.send(transfers, held_rows, ring.right(), kTagKV);
    }
    layout.for_each_visible_pair(rank, owner, [&](const detail::BlockPair& p) {
      const int64_t nq = p.rows;
      const Tensor part =
          detail::dense(st.part->data(), dims.dtype, {dims.batch, nq, dims.heads_q, dims.dim_v});
      const Tensor part_lse =
          Tensor::contiguous(st.part_lse->data(), DType::f32, {dims.batch, dims.heads_q, nq});
      forward(detail::slice(q, 1, p.q_offset, nq),
              detail::slice(held.k(held_rows), 1, p.k_offset, p.keys),
              detail::slice(held.v(held_rows), 1, p.k_offset, p.keys), part, &part_lse,
              detail::PairOptions(options.attention, p).get(), {st.workspace->data(), st.workspace_bytes});
      // merge() takes parts of one dtype: a bf16/f16 partial is widened to f32 first.
      Tensor part32 = part;
      if (dims.dtype != DType::f32) {
        part32 = detail::dense(st.part32->data(), DType::f32,
                               {dims.batch, nq, dims.heads_q, dims.dim_v});
        detail::copy(part, part32);
      }
      const Tensor acc_rows = detail::slice(acc, 1, p.q_offset, nq);
      const Tensor acc_lse_rows = detail::slice(acc_lse, 2, p.q_offset, nq);
      const Tensor outs[2] = {acc_rows, part32}, lses[2] = {acc_lse_rows, part_lse};
      merge(outs, lses, acc_rows, &acc_lse_rows, merge_options);
    });
    transfers.wait();
  }
  // One part merged alone is itself, rounded once to out's dtype.
  merge({&acc, 1}, {&acc_lse, 1}, out, lse, merge_options);
}

}  // namespace memattn::dist
