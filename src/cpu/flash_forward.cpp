// flash forward driver: per (batch, head, query chunk) of every part (the dense call, or each
// varlen sequence), walks the key chunks that the causal and
// window masks leave visible; each chunk's scores S^T = K Q^T come from the tile family the planner
// chose (cpu/tile_family.hpp) with queries in the lanes, so the online softmax runs down the
// columns. Chunks every row fully sees run the steady state (no mask work; the family may read K
// and V in place); boundary chunks are masked here, keys no row sees are never read.
#include "cpu/flash_forward.hpp"

#include <algorithm>
#include <cmath>
#include <new>
#include <type_traits>
#include <vector>

#include "common/half.hpp"
#include "common/parallel.hpp"
#include "common/rowops.hpp"
#include "api/merge_params.hpp"
#include "cpu/family_amx.hpp"
#include "cpu/family_bf16_dot.hpp"
#include "cpu/family_f32.hpp"
#include "cpu/kernels.hpp"
#include "cpu/score_modifiers.hpp"
#include "cpu/tile_family.hpp"
#include "plan/item_list.hpp"

namespace memattn::detail {
namespace {

template <typename T, typename Family>
class FlashItem {
 public:
  FlashItem(const Params& p, char* slice)
      : p_(p), kern_(*p.kernels), w_(carve(p, slice)), fam_(p, w_, carve_family(p, slice)), dv_(size_t(p.dim_v)), cqp_(pad_floats(size_t(p.query_chunk))), dvp_(pad_floats(dv_)) {}

  // The worker's slice: the driver's slices, then the family's.
  static size_t slice_bytes(const Params& p) {
    Carver c;
    FlashSlices::carve(p, c);
    Family::Slices::carve(p, c);
    return c.used();
  }

  // Starts item `it` (kv head it.g alone): its queries loaded, its row statistics and
  // accumulators reset. Key bounds are monotone in the query, so the rows see at most
  // [first, last) of the item's keys, which chunk() then walks; they do not depend on the head, so
  // the kv heads of a multi-head item walk the same chunks.
  void begin(const FlashWorkItem& it) {
    const int64_t rows = it.heads * it.queries;
    c_ = Chunk{it.b, it.h0, it.g, it.i0, it.queries, rows, 0, 0, false, false, w_.live, false};
    fam_.load_queries(c_);
    std::fill_n(w_.row_max, cqp_, kNegInf);
    std::fill_n(w_.row_sum, cqp_, 0.0f);
    std::fill_n(w_.acc, size_t(rows) * dvp_, 0.0f);
    i_last_ = it.i0 + it.queries - 1;
    first_ = std::max(p_.key_begin(it.i0), it.k_lo), last_ = std::min(p_.key_end(i_last_), it.k_hi);
    // Without a boolean mask each row sees one interval of keys and the intervals move right
    // together, so the rows see [first, last) without gaps once query i0 sees anything.
    contiguous_ = !p_.has_mask && p_.key_end(it.i0) > p_.key_begin(it.i0);
  }
  // Chunks start at multiples of key_chunk (splits are multiples of it) so every row sums its
  // keys in the same order whatever its item.
  int64_t first_chunk() const { return first_ / p_.key_chunk * p_.key_chunk; }
  int64_t last() const { return last_; }

  // Sets up the chunk of keys from j0 (a multiple of key_chunk below last()); false when no row
  // sees any of its keys (nothing to do).
  bool prepare(int64_t j0) {
    Chunk& c = c_;
    c.j0 = j0;
    c.keys = std::min(p_.key_chunk, last_ - c.j0);  // no row sees keys past `last`
    c.full = !p_.has_mask && p_.key_begin(i_last_) <= c.j0 && p_.key_end(c.i0) >= c.j0 + c.keys;
    c.all_read = c.full || (contiguous_ && first_ <= c.j0);
    c.one_pitch = p_.one_pitch(c.j0, c.keys);
    c.t0 = 0, c.t1 = c.keys;
    return c.all_read || mark_live_keys(c);
  }
  // Can the prepared chunk be computed in key blocks (scores(), softmax(), values() below)?
  bool key_blocks() const { return c_.full && fam_.key_blocks(c_); }
  int64_t keys() const { return c_.keys; }
  int64_t rows() const { return c_.rows; }
  int64_t chunk_start() const { return c_.j0; }

  // The prepared chunk whole: scores, the online softmax step, P V.
  void process() {
    scores(0, c_.keys);
    softmax();
    values(0, c_.keys);
  }
  // The scores of keys [t0, t1), the blocks in order, then the softmax step of the chunk, then P V
  // of keys [t0, t1), the blocks in order.
  void scores(int64_t t0, int64_t t1) {
    c_.t0 = t0, c_.t1 = t1;
    fam_.scores(c_);
  }
  void softmax() {
    const Chunk& c = c_;
    modify_scores(c);
    kern_.softmax_step(w_.st, size_t(c.keys), cqp_, scale_in_softmax(c) ? p_.scale : 1.0f, w_.row_max,
                       w_.row_sum, w_.alpha);
    kern_.scale_rows(w_.acc, dvp_, size_t(c.rows), dvp_, w_.alpha);
  }
  // Can the prepared chunk be walked with the item's other heads (walk_chunk below)? Where the
  // family can walk it (key_walk) and no row needs mask work.
  static constexpr bool kWalks = requires(const Family& f, const Chunk& c) { f.key_walk(c); };
  bool key_walk() const {
    if constexpr (kWalks) return c_.full && fam_.key_walk(c_);
    return false;
  }
  WalkHead walk_head() const requires kWalks { return fam_.walk_head(c_); }
  const void* key_row(int64_t j) const { return p_.key_row<typename Family::Kv>(c_.b, j, c_.g); }
  const void* value_row(int64_t j) const { return p_.value_row<typename Family::Kv>(c_.b, j, c_.g); }
  void values(int64_t t0, int64_t t1) {
    c_.t0 = t0, c_.t1 = t1;
    if (!fam_.accumulate_values(c_)) accumulate_visible_pairs(c_);
  }

  // The rows go to the call's out and lse, or, when the keys are split, to the split's (out,
  // lse) partial (f32 views in the workspace, for the merge).
  void finish(const View& partial_out, const View& partial_lse) {
    for (int64_t r = 0; r < c_.rows; ++r) {
      const float* acc = w_.acc + size_t(r) * dvp_;
      if (p_.splits > 1)
        store_partial(partial_out, partial_lse, c_.b, c_.head(r), c_.query(r), acc, w_.row_max[r], w_.row_sum[r]);
      else
        store_row<T>(p_, c_.b, c_.head(r), c_.query(r), acc, 1, w_.row_max[r], w_.row_sum[r]);
    }
  }

 private:
  static FlashSlices carve(const Params& p, char* slice) {
    Carver c(slice);
    return FlashSlices::carve(p, c);
  }
  static typename Family::Slices carve_family(const Params& p, char* slice) {
    Carver c(slice);
    FlashSlices::carve(p, c);
    return Family::Slices::carve(p, c);
  }

  bool visible(const Chunk& c, int64_t r, int64_t t) const {
    const int64_t i = c.query(r), j = c.j0 + t;
    return j >= p_.key_begin(i) && j < p_.key_end(i) && p_.mask_allows(c.b, c.head(r), i, j);
  }

  // A split's normalised row, as forward() would store it for the split's keys alone.
  void store_partial(const View& out, const View& lse, int64_t b, int64_t h, int64_t i, const float* acc,
                     float max, float sum) const {
    float* o = const_cast<float*>(out.at<float>(b, i, h));
    for (size_t k = 0; k < dv_; ++k) o[k] = sum == 0.0f ? 0.0f : acc[k] / sum;
    *const_cast<float*>(lse.at<float>(b, h, i)) = sum == 0.0f ? kNegInf : max + std::log(sum);
  }
  float& st(int64_t t, int64_t r) const { return w_.st[size_t(t) * cqp_ + size_t(r)]; }
  // Scores multiplied by scale after the dot products: by the softmax step where nothing is added
  // to them first, before bias and masking otherwise. A positive scale keeps -inf -inf, so masked
  // chunks leave it to the softmax too, and every chunk of a call then rounds its scores the same
  // way (the softmax applies a positive scale as it reads the scores, see SoftmaxStep).
  // Softcap and ALiBi, like the bias, need the scaled scores before the softmax reads them.
  bool scale_in_softmax(const Chunk& c) const {
    return fam_.scale_after_dot() && !p_.has_bias && !p_.has_softcap() && !p_.has_alibi &&
           (c.full || p_.scale > 0.0f);
  }

  // live[t]: some row sees key t. Returns false when no row sees any key of the chunk.
  bool mark_live_keys(const Chunk& c) {
    std::fill_n(w_.live, c.keys, uint8_t(0));
    bool any = false;
    for (int64_t r = 0; r < c.rows; ++r) {
      const int64_t i = c.query(r), h = c.head(r);
      const int64_t lo = std::max<int64_t>(p_.key_begin(i) - c.j0, 0);
      const int64_t hi = std::min<int64_t>(p_.key_end(i) - c.j0, c.keys);
      for (int64_t t = lo; t < hi; ++t)
        if (p_.mask_allows(c.b, h, i, c.j0 + t)) w_.live[t] = 1, any = true;
    }
    return any;
  }

  // In the order the scores are defined: the scale (when the family left it and the softmax does
  // not fuse it), the softcap, ALiBi, the bias, and -inf where a row does not see a key. Each
  // modifier present is one pass over the chunk (masked pairs are overwritten by the last).
  void modify_scores(const Chunk& c) {
    const size_t n = size_t(c.keys) * cqp_;
    if (fam_.scale_after_dot() && !scale_in_softmax(c))
      for (size_t i = 0; i < n; ++i) w_.st[i] *= p_.scale;
    if (p_.has_softcap()) softcap_in_place(w_.st, n, p_.softcap);
    if (p_.has_alibi)
      for (int64_t r = 0; r < c.rows; ++r) {
        // Distances to the chunk's keys are i + diag - j0 - t: one float per key, exact below 2^24.
        const float slope = p_.slope(c.b, c.head(r));
        for (int64_t t = 0; t < c.keys; ++t) st(t, r) -= slope * float(p_.alibi_distance(c.query(r), c.j0 + t));
      }
    if (p_.has_bias)
      for (int64_t t = 0; t < c.keys; ++t)
        for (int64_t r = 0; r < c.rows; ++r) st(t, r) += bias_at<float>(p_, c.b, c.head(r), c.query(r), c.j0 + t);
    if (!c.full) mask_scores(c);
  }

  // st = -inf where a row does not see a key: per row its interval's complement, plus the
  // boolean mask's zeros.
  void mask_scores(const Chunk& c) {
    for (int64_t r = 0; r < c.rows; ++r) {
      const int64_t i = c.query(r), h = c.head(r);
      const int64_t lo = std::clamp<int64_t>(p_.key_begin(i) - c.j0, 0, c.keys);
      const int64_t hi = std::clamp<int64_t>(p_.key_end(i) - c.j0, lo, c.keys);
      for (int64_t t = 0; t < lo; ++t) st(t, r) = kNegInf;
      for (int64_t t = hi; t < c.keys; ++t) st(t, r) = kNegInf;
      if (p_.has_mask)
        for (int64_t t = lo; t < hi; ++t)
          if (!p_.mask_allows(c.b, h, i, c.j0 + t)) st(t, r) = kNegInf;
    }
  }

  // A NaN/Inf value with a zero weight must poison a row that sees its key (IEEE, as the
  // reference) and no row that does not: multiply visible pairs only.
  void accumulate_visible_pairs(const Chunk& c) {
    for (int64_t r = 0; r < c.rows; ++r) {
      float* acc = w_.acc + size_t(r) * dvp_;
      for (int64_t t = 0; t < c.keys; ++t) {
        if (!visible(c, r, t)) continue;
        using Kv = typename Family::Kv;
        const Kv* v = p_.value_row<Kv>(c.b, c.j0 + t, c.g);
        for (size_t k = 0; k < dv_; ++k) acc[k] += st(t, r) * float(Elem<Kv>::load(v[int64_t(k) * p_.v.stride[3]]));
      }
    }
  }

  const Params& p_;
  const Kernels& kern_;
  const FlashSlices w_;
  Family fam_;
  const size_t dv_, cqp_, dvp_;
  Chunk c_{};  // the item's rows and the chunk in hand
  int64_t i_last_ = 0, first_ = 0, last_ = 0;
  bool contiguous_ = false;
};

// Keys per block when a multi-head item's heads take turns within a chunk. A head's rows of a BSHD
// cache lie a whole key's row apart (4 KiB for 8 heads of f32 at d = 128), and the hardware
// prefetchers follow such a walk poorly: Zen 4, 1 thread, a standalone read of 8 heads' rows read
// 9-13 GB/s head by head over a chunk, 15-18 in blocks of 4-8 keys of all heads, 20-24 key by key
// (23-28 sequential); `bench --decode` measures the blocks' order in every run (head_walk_gbps,
// docs/performance.md). Blocks of 16 keys, alternating runs (f32, seq_q 1, 32768 keys, 1 / 2 threads):
// 25-31 / 15.5-18 ms per call against 37-42 / 19.7-20.7 whole chunks per head; blocks of 12 and
// 24 measured between the two. Each score and each output element is summed as for the whole
// chunk, so the bits do not change.
constexpr int64_t kKeyBlock = 16;

// How far ahead of the key it reads a walk asks for the rows to be brought into L2: 32 KiB of
// the cache (8 keys of 8 heads of f32 at d = 128). Zen 4, 1 and 2 threads, 16-128 KiB measured
// alike; without the requests the walk ran at the hardware prefetchers' pace, 1.5x slower than
// key blocks (see walk_chunk).
constexpr int64_t kWalkAheadBytes = 32 << 10;

// The prepared chunk of every kv head of an item, walked in steps of a few keys (Kernels::
// walk_scores, walk_values): the scores of every head at the step's keys before the next step,
// each head's softmax step, then P V the same way. A BSHD cache holds a key's heads side by side,
// so the walk reads it almost in address order, and each head's rows of the keys kWalkAheadBytes
// ahead are asked into L2 on its turn, at the pace of the compute. Zen 4, seq_q 1, 32 : 8 heads,
// d = 128, 32768 keys, 1 thread, alternating runs: f32 17.8-19.3 ms per call against 25.0-31.4 in
// key blocks (below), bf16 14.6-14.9 against 22.1-23.9 (docs/performance.md). Every score and
// output element is summed as in key blocks, so the bits do not change.
template <typename T, typename F>
void walk_chunk(const Params& p, FlashItem<T, F>* const* heads, int64_t n) {
  if constexpr (FlashItem<T, F>::kWalks) {
    using Kv = typename F::Kv;
    // The rows ahead at the walk's pitch: the item's keys of a contiguous cache; in a paged one
    // the page's, then the next page's.
    const int64_t j0 = heads[0]->chunk_start(), left = heads[0]->last() - j0;
    const int64_t pitch_keys = p.page_size == 0 ? left : std::min(left, p.page_size - j0 % p.page_size);
    const int64_t next_keys = p.page_size == 0 ? 0 : std::min(left - pitch_keys, p.page_size);
    WalkHead wh[kMaxKvHeadsPerItem];
    for (int64_t k = 0; k < n; ++k) {
      wh[k] = heads[k]->walk_head();
      if (next_keys > 0) wh[k].k_next = heads[k]->key_row(j0 + pitch_keys), wh[k].v_next = heads[k]->value_row(j0 + pitch_keys);
    }
    const int64_t ahead = std::max<int64_t>(1, kWalkAheadBytes / std::max<int64_t>(1, p.k.stride[1] * int64_t(sizeof(Kv))));
    const WalkArgs a{wh, size_t(n), size_t(p.k.stride[1]), size_t(p.v.stride[1]), std::is_same_v<Kv, bf16>,
                     size_t(heads[0]->keys()), size_t(heads[0]->rows()), size_t(p.dim), size_t(p.dim_v),
                     pad_floats(size_t(p.query_chunk)), pad_floats(size_t(p.dim_v)), size_t(ahead), size_t(pitch_keys),
                     size_t(next_keys)};
    p.kernels->walk_scores(a);
    for (int64_t k = 0; k < n; ++k) heads[k]->softmax();
    p.kernels->walk_values(a);
  }
}

// Runs work item `it`: one FlashItem per kv head of the item, each in its own part of the
// worker's slice, stepping through the same key chunks in lockstep so that the rows of every head
// at a key are read together (see decode_kv_heads_per_item in plan.cpp).
template <typename T, typename F>
void run_item(const Params& p, const FlashWorkItem& it, char* slice, size_t head_slice, const View& partial_out,
              const View& partial_lse) {
  alignas(FlashItem<T, F>) unsigned char storage[kMaxKvHeadsPerItem][sizeof(FlashItem<T, F>)];
  FlashItem<T, F>* heads[kMaxKvHeadsPerItem] = {};
  const int64_t n = std::clamp<int64_t>(it.kv_heads, 1, kMaxKvHeadsPerItem);
  for (int64_t k = 0; k < n; ++k) {
    heads[k] = new (storage[k]) FlashItem<T, F>(p, slice + size_t(k) * head_slice);
    FlashWorkItem one = it;
    one.g = it.g + k, one.h0 = it.h0 + k * it.heads, one.kv_heads = 1;
    heads[k]->begin(one);
  }
  bool live[kMaxKvHeadsPerItem];
  for (int64_t j0 = heads[0]->first_chunk(); j0 < heads[0]->last(); j0 += p.key_chunk) {
    for (int64_t k = 0; k < n; ++k) live[k] = heads[k]->prepare(j0);
    // Every row sees the whole chunk (which does not depend on the head): the heads take turns
    // by blocks of kKeyBlock keys, scores first, then P V, so the cache is read a few keys' rows of
    // all heads at a time rather than one head's rows of the whole chunk (see kKeyBlock).
    if (heads[0]->key_walk()) {
      walk_chunk(p, heads, n);
    } else if (n > 1 && heads[0]->key_blocks()) {
      const int64_t keys = heads[0]->keys();
      for (int64_t t0 = 0; t0 < keys; t0 += kKeyBlock)
        for (int64_t k = 0; k < n; ++k) heads[k]->scores(t0, std::min(keys, t0 + kKeyBlock));
      for (int64_t k = 0; k < n; ++k) heads[k]->softmax();
      for (int64_t t0 = 0; t0 < keys; t0 += kKeyBlock)
        for (int64_t k = 0; k < n; ++k) heads[k]->values(t0, std::min(keys, t0 + kKeyBlock));
    } else {
      for (int64_t k = 0; k < n; ++k)
        if (live[k]) heads[k]->process();
    }
  }
  for (int64_t k = 0; k < n; ++k) {
    heads[k]->finish(partial_out, partial_lse);
    heads[k]->~FlashItem<T, F>();
  }
}

// The call's (out, lse) partials of split s, laid out [split][batch][seq_q][heads_q][dim_v] and
// [split][batch][heads_q][seq_q] after the workers' slices.
struct Partials {
  float* out;
  float* lse;
  // A part without work items (no keys, or no rows) may get no workspace at all: base is null.
  Partials(const Params& p, char* base)
      : out(reinterpret_cast<float*>(base)), lse(base ? out + p.splits * rows(p) * p.dim_v : nullptr) {}
  static int64_t rows(const Params& p) { return p.batch * p.heads_q * p.seq_q; }
  Tensor out_part(const Params& p, int64_t s) const {
    const int64_t dv = p.dim_v;
    return {out + s * rows(p) * dv, DType::f32, 4, {p.batch, p.seq_q, p.heads_q, dv},
            {p.seq_q * p.heads_q * dv, p.heads_q * dv, dv, 1}};
  }
  Tensor lse_part(const Params& p, int64_t s) const {
    return {lse + s * rows(p), DType::f32, 3, {p.batch, p.heads_q, p.seq_q, 0}, {p.heads_q * p.seq_q, p.seq_q, 1, 0}};
  }
};

View view_of(const Tensor& t) {
  View v{t.data, t.dtype, {}};
  std::copy_n(t.strides.begin(), 4, v.stride);
  return v;
}

Tensor tensor_of(const View& v, DType dtype, int ndim, std::initializer_list<int64_t> shape) {
  Tensor t{const_cast<void*>(v.data), dtype, ndim, {}, {}};
  std::copy(shape.begin(), shape.end(), t.shape.begin());
  std::copy_n(v.stride, 4, t.strides.begin());
  return t;
}

// The split partials of every row merged, in split order, into the call's out and lse: the same
// exact merge as memattn::merge. Sinks join as one more part, after the splits: a part whose lse
// is the head's sink and whose out is zero (a key set with no values), read through zero strides.
void merge_partials(const Params& p, const Partials& parts) {
  std::vector<Tensor> outs, lses;
  for (int64_t s = 0; s < p.splits; ++s) outs.push_back(parts.out_part(p, s)), lses.push_back(parts.lse_part(p, s));
  static const float zero = 0.0f;
  if (p.has_sinks) {
    outs.push_back({const_cast<float*>(&zero), DType::f32, 4, {p.batch, p.seq_q, p.heads_q, p.dim_v}, {0, 0, 0, 0}});
    lses.push_back(tensor_of(p.sinks, DType::f32, 3, {p.batch, p.heads_q, p.seq_q}));
  }
  MergeParams m;
  m.batch = p.batch, m.seq_q = p.seq_q, m.heads = p.heads_q, m.dim_v = p.dim_v;
  m.outs = outs, m.lses = lses;
  m.out = tensor_of(p.out, p.dtype, 4, {p.batch, p.seq_q, p.heads_q, p.dim_v});
  if (p.has_lse) m.lse = tensor_of(p.lse, DType::f32, 3, {p.batch, p.heads_q, p.seq_q}), m.has_lse = true;
  m.threads = workers(p);
  merge_rows(m);
}

// Runs every work item of the parts `selected` picks on family F in one parallel loop, then merges
// the key splits' partials of each; part i's partials follow part i - 1's after the workers'
// slices (the layout of every part, whichever run picks it).
template <typename T, typename F, typename Selected>
void run_items(const Parts& parts, void* workspace, Selected selected) {
  const size_t slice = flash_slice_bytes(parts);
  const int nw = workers(parts);
  std::vector<Partials> partials;
  partials.reserve(parts.size());
  char* next = static_cast<char*>(workspace) + slice * size_t(nw);
  for (const Params& p : parts) {
    partials.emplace_back(p, next);
    if (flash_items(p) > 0) next += align_up(flash_partial_bytes(p));
  }
  const ItemList items(parts, [&](const Params& p) { return selected(p) ? flash_items(p) : 0; });
  parallel_for_items(items.size(), nw, workspace, slice, [&](int64_t index, char* worker_slice) {
    const auto [part, local] = items.locate(index);
    const Params& p = parts[part];
    const FlashWorkItem it = flash_item(p, local);
    run_item<T, F>(p, it, worker_slice, FlashItem<T, F>::slice_bytes(p),
                   view_of(partials[part].out_part(p, it.split)), view_of(partials[part].lse_part(p, it.split)));
  });
  for (size_t i = 0; i < parts.size(); ++i)
    if (selected(parts[i]) && parts[i].splits > 1 && flash_items(parts[i]) > 0) merge_partials(parts[i], partials[i]);
}

}  // namespace

// Parts whose scores are dot products (decode groups of few rows, Params::scores_by_dot) run on
// the f32 family whatever the call's family: the bf16 dot and AMX tiles would leave most of their
// lanes idle and pack P and V per key, where the f32 family reads a bf16 cache in place, widened
// exactly (Zen 4, 32768 keys, seq_q 1, 32 : 8 heads, d = 128, ms per call, alternating runs:
// 1 thread 25.9-31.2 -> 19.3-25.3, 2 threads 12.7-15.3 -> 9.4-11.2). A varlen call may hold both
// kinds of parts: each kind runs in its own parallel loop.
template <typename T>
void flash_forward(const Parts& parts, void* workspace) {
  const auto all = [](const Params&) { return true; };
  if constexpr (std::is_same_v<T, bf16>) {
    const auto tiles = [](const Params& p) { return !p.scores_by_dot; };
    const auto dots = [](const Params& p) { return p.scores_by_dot; };
    switch (parts.front().family) {
      case TileFamily::bf16_dot: run_items<T, Bf16DotFamily>(parts, workspace, tiles); break;
      case TileFamily::amx_bf16: run_items<T, AmxFamily<AmxHardware>>(parts, workspace, tiles); break;
      case TileFamily::amx_bf16_emulated: run_items<T, AmxFamily<AmxEmulated>>(parts, workspace, tiles); break;
      default: return run_items<T, F32Family<T>>(parts, workspace, all);
    }
    return run_items<T, F32Family<T>>(parts, workspace, dots);
  }
  if constexpr (std::is_same_v<T, float>) {
    switch (parts.front().kv_dtype) {
      case DType::bf16: return run_items<T, F32Family<T, bf16>>(parts, workspace, all);
      case DType::f16: return run_items<T, F32Family<T, f16>>(parts, workspace, all);
      default: break;
    }
  }
  run_items<T, F32Family<T>>(parts, workspace, all);
}

size_t flash_forward_slice_bytes(const Params& p) {
  const size_t heads = size_t(p.kv_heads_per_item);
  if (p.scores_by_dot) return heads * FlashItem<float, F32Family<float>>::slice_bytes(p);  // any family
  switch (p.family) {
    case TileFamily::bf16_dot: return heads * FlashItem<bf16, Bf16DotFamily>::slice_bytes(p);
    case TileFamily::amx_bf16: return heads * FlashItem<bf16, AmxFamily<AmxHardware>>::slice_bytes(p);
    case TileFamily::amx_bf16_emulated: return heads * FlashItem<bf16, AmxFamily<AmxEmulated>>::slice_bytes(p);
    default: return heads * FlashItem<float, F32Family<float>>::slice_bytes(p);
  }
}

template void flash_forward<float>(const Parts&, void*);
template void flash_forward<bf16>(const Parts&, void*);
template void flash_forward<f16>(const Parts&, void*);

}  // namespace memattn::detail
