// Decodes what follows the dense layout: score modifiers, a KV cache dtype, and the call's mode (dense, varlen, KV cache).
#pragma once

#include <algorithm>
#include <numeric>
#include <utility>

#include "fuzz_input.hpp"

// Every field here comes after fuzz_input.hpp's, and the minimum of each is "off" (no modifier,
// q's dtype, dense), so a seed written before these options existed, whose bytes run out before
// them, decodes to the very problem it always did.
namespace fuzz {

using Shape = std::array<int64_t, 4>;

// Copies the [heads, dim] row (b, r) of `from` into row (tb, tr) of `to`, over the heads and dims
// both have (each value rounded to to's dtype by store).
inline void copy_row(const Operand& from, int64_t b, int64_t r, const Operand& to, int64_t tb, int64_t tr) {
  for (int64_t h = 0; h < std::min(from.view.shape[2], to.view.shape[2]); ++h)
    for (int64_t d = 0; d < std::min(from.view.shape[3], to.view.shape[3]); ++d) to.set({tb, tr, h, d}, from.get({b, r, h, d}));
}

// The same values in a new layout (and dtype), chosen by the input.
inline Operand relaid(FuzzedDataProvider& in, const Operand& from, DType dtype) {
  Operand op = make_operand(in, dtype, from.view.ndim, from.view.shape);
  for_each_index(op.view, [&](const auto& i) { op.set(i, from.get(i)); });
  return op;
}

// An index tensor (i32, i64, or a dtype to refuse) in a layout chosen by the input, written in
// index order. Zero or overlapping strides may keep other values than those written, so callers
// take the tensor's meaning from read_indices, as the library does.
inline Operand index_operand(FuzzedDataProvider& in, DType dtype, int ndim, Shape shape, const std::vector<int64_t>& values) {
  Operand op = make_operand(in, dtype, ndim, shape);
  size_t n = 0;
  for_each_index(op.view, [&](const auto& i) { op.set(i, double(values[n++])); });
  return op;
}
inline std::vector<int64_t> read_indices(const Operand& op) {
  std::vector<int64_t> values;
  for_each_index(op.view, [&](const auto& i) { values.push_back(int64_t(op.get(i))); });
  return values;
}
inline bool index_dtype(DType dt) { return dt == DType::i32 || dt == DType::i64; }

// Per-head f32 values ([heads_q], or [batch, heads_q] where batched), each picked by one byte from
// `table`, whose last two entries are non-finite (refused); `shape_kind` 6 adds a head (refused),
// 7 takes `wrong` as the dtype (refused).
template <size_t N>
inline Operand per_head(FuzzedDataProvider& in, Problem& p, const char* name, const double (&table)[N], bool batched,
                        int shape_kind, DType wrong) {
  const int64_t heads = p.Hq + (shape_kind == 6);
  Operand op = make_operand(in, shape_kind == 7 ? wrong : DType::f32, batched ? 2 : 1,
                            batched ? Shape{p.B, heads, 0, 0} : Shape{heads, 0, 0, 0});
  for_each_index(op.view, [&](const auto& i) { op.set(i, table[in.ConsumeIntegral<uint8_t>() % N]); });
  bool finite = true;
  for_each_index(op.view, [&](const auto& i) { finite &= std::isfinite(op.get(i)); });
  if (shape_kind == 6) p.refusal = std::string(name) + " with heads_q + 1 entries";
  if (shape_kind == 7) p.refusal = std::string(name) + " that are not f32";
  if (!finite) p.refusal = std::string(name) + " with a non-finite value";
  return op;
}

// Softcap, ALiBi slopes, sinks (and the backward's dsinks), each behind one bit of a flag byte.
inline void decode_modifiers(FuzzedDataProvider& in, Problem& p) {
  const uint8_t which = in.ConsumeIntegral<uint8_t>();
  memattn::Options& o = p.options;
  if (which & 1) {
    static constexpr double kSoftcaps[] = {1.0, 0.5, 5.0, 30.0, 1e-3, 1e30, 0.0, 1e39, 1e-50, -1.0, NAN, INFINITY};
    o.softcap = kSoftcaps[in.ConsumeIntegralInRange<size_t>(0, std::size(kSoftcaps) - 1)];
    const float rounded = float(o.softcap);
    if (!std::isfinite(o.softcap) || o.softcap < 0) p.refusal = "a softcap that is not finite and >= 0";
    else if (p.dtype != DType::f64 && o.softcap > 0 && !(std::isfinite(rounded) && rounded > 0))
      p.refusal = "a softcap that does not round to a positive float";
  }
  if (which & 2) {
    static constexpr double kSlopes[] = {0.5, 0.25, 0.125, 1.0, 0.0625, 8.0, -0.5, 0.0, 3e4, 1e30, 0.03125, 2.0, 0.75, 0.375, NAN, INFINITY};
    const int kind = in.ConsumeIntegralInRange(0, 7);
    p.alibi = per_head(in, p, "alibi_slopes", kSlopes, kind == 4 || kind == 5, kind, DType::f16);
    o.alibi_slopes = &p.alibi.view;
  }
  if (which & 4) {
    static constexpr double kSinks[] = {0.0, 1.0, -1.0, 4.0, -4.0, 20.0, -20.0, 100.0, -100.0, 1e4, -1e4, 0.5, 2.5, -0.25, NAN, -INFINITY};
    p.sinks = per_head(in, p, "sinks", kSinks, false, in.ConsumeIntegralInRange(0, 7), DType::bf16);
    o.sinks = &p.sinks.view;
  }
  if ((which & 8) && p.backward) {
    p.dsinks = make_operand(in, DType::f32, 1, {p.Hq, 0, 0, 0});
    if (!p.sinks.present) p.backward_refusal = "dsinks without sinks";
  }
}

// k's and v's dtypes: q's, or a bf16/f16 cache under f32 queries (forward, flash only), or a mix
// the library must refuse. What the planner refuses goes to planner_refusal (see decode).
inline std::pair<DType, DType> decode_kv_dtypes(FuzzedDataProvider& in, Problem& p, std::string& planner_refusal) {
  static constexpr std::pair<DType, DType> kCaches[] = {{DType::bf16, DType::bf16}, {DType::f16, DType::f16},
                                                        {DType::bf16, DType::f16}, {DType::f32, DType::f32}};
  const int choice = in.ConsumeIntegralInRange(0, 7);
  if (choice < 4) return {p.dtype, p.dtype};
  const auto [k, v] = kCaches[choice - 4];
  if (k == p.dtype && v == p.dtype) return {k, v};
  const bool low_cache = p.dtype == DType::f32 && k == v;
  if (!low_cache) p.refusal = "k and v in dtypes other than q's and not a bf16/f16 cache under f32 queries";
  const memattn::Algorithm a = p.options.algorithm;
  if (low_cache && a != memattn::Algorithm::automatic && a != memattn::Algorithm::flash)
    planner_refusal = "a bf16/f16 KV cache on a reference algorithm";
  p.backward_refusal = "a backward with k and v in another dtype than q";
  return {k, v};
}

// Varlen and KV cache calls take no mask or bias: drop them, or rarely keep them to be refused.
inline void drop_mask_and_bias(FuzzedDataProvider& in, Problem& p, const char* call) {
  if (!p.mask.present && !p.bias.present) return;
  if (in.ConsumeIntegralInRange(0, 7) == 0) {
    p.refusal = std::string("a mask or bias with ") + call;
    return;
  }
  p.mask = {}, p.bias = {}, p.dbias = {};
  p.options.mask = p.options.bias = nullptr;
}

// Why offsets read back from a cu_seqlens tensor are not batch + 1 entries rising from 0 to `total`
// ("" when they are).
inline std::string offsets_problem(const Operand& op, const std::vector<int64_t>& x, int64_t total) {
  if (!index_dtype(op.view.dtype)) return "cu_seqlens of a dtype other than i32/i64";
  if (x.empty() || x.front() != 0) return "cu_seqlens not starting at 0";
  for (size_t b = 1; b < x.size(); ++b)
    if (x[b] < x[b - 1]) return "decreasing cu_seqlens";
  if (x.back() != total) return "cu_seqlens not ending at the token total";
  return "";
}

// The dense problem repacked as sequences of lengths up to (Sq, Sk) along one batch row, with
// cu_seqlens (and max_seqlen) describing them; rarely a descriptor the library must refuse.
inline void to_varlen(FuzzedDataProvider& in, Problem& p, DType k_dtype, DType v_dtype) {
  p.mode = Mode::varlen;
  std::vector<int64_t> cu_q{0}, cu_k{0};
  for (int64_t b = 0; b < p.B; ++b) {
    cu_q.push_back(cu_q.back() + in.ConsumeIntegralInRange<int64_t>(0, p.Sq));
    cu_k.push_back(cu_k.back() + in.ConsumeIntegralInRange<int64_t>(0, p.Sk));
  }
  const int64_t total_q = cu_q.back(), total_k = cu_k.back();
  const Operand q = p.q, k = p.k, v = p.v, dout = p.dout;  // the dense values, copied row by row
  const Shape qs = q.view.shape, ks = k.view.shape, vs = v.view.shape;
  const int64_t v_rows = total_k + (vs[0] != ks[0] || vs[1] != ks[1]);  // a dense v mismatch stays one
  const Shape q_shape{1, total_q, qs[2], qs[3]}, out_shape{1, total_q, qs[2], vs[3]};
  const Shape k_shape{1, total_k, ks[2], ks[3]}, v_shape{1, v_rows, vs[2], vs[3]};
  p.q = make_operand(in, p.dtype, 4, q_shape), p.k = make_operand(in, k_dtype, 4, k_shape);
  p.v = make_operand(in, v_dtype, 4, v_shape), p.out = make_operand(in, p.dtype, 4, out_shape);
  if (p.lse.present) p.lse = make_operand(in, DType::f32, 3, {1, qs[2], total_q, 0});
  if (p.backward) {
    p.dout = make_operand(in, p.dtype, 4, out_shape), p.dq = make_operand(in, p.dtype, 4, q_shape);
    p.dk = make_operand(in, p.dtype, 4, k_shape), p.dv = make_operand(in, p.dtype, 4, v_shape);
    if (p.dsinks.present) p.backward_refusal = "dsinks with cu_seqlens";
  }
  drop_mask_and_bias(in, p, "cu_seqlens");

  const int corrupt = in.ConsumeIntegralInRange(0, 15);
  if (corrupt == 10) cu_q[0] = 1;
  if (corrupt == 11) cu_k.back() += 1;
  if (corrupt == 12 && p.B >= 2) cu_q[1] = cu_q[2] + 1;
  if (corrupt == 13) cu_k.push_back(total_k);  // one entry more than cu_seqlens_q
  const auto dtype = [&](bool refused) { return refused ? DType::f32 : in.ConsumeBool() ? DType::i64 : DType::i32; };
  p.cu_seqlens_q = index_operand(in, dtype(false), 1, {int64_t(cu_q.size()), 0, 0, 0}, cu_q);
  p.options.cu_seqlens_q = &p.cu_seqlens_q.view;
  const std::vector<int64_t> rq = read_indices(p.cu_seqlens_q);
  std::vector<int64_t> rk;
  if (corrupt == 14) {
    p.refusal = "cu_seqlens_q without cu_seqlens_k";
  } else {
    p.cu_seqlens_k = index_operand(in, dtype(corrupt == 15), 1, {int64_t(cu_k.size()), 0, 0, 0}, cu_k);
    p.options.cu_seqlens_k = &p.cu_seqlens_k.view;
    rk = read_indices(p.cu_seqlens_k);
    const std::string why_q = offsets_problem(p.cu_seqlens_q, rq, total_q), why_k = offsets_problem(p.cu_seqlens_k, rk, total_k);
    if (rq.size() != rk.size()) p.refusal = "cu_seqlens_q and cu_seqlens_k of different lengths";
    if (!why_q.empty() || !why_k.empty()) p.refusal = why_q.empty() ? why_k : why_q;
  }
  int64_t longest_q = 0, longest_k = 0;
  if (p.refusal.empty()) {
    for (size_t b = 0; b + 1 < rq.size(); ++b) {
      Sequence s;
      s.q_row = rq[b], s.len_q = rq[b + 1] - rq[b];
      for (int64_t j = 0; j < rk[b + 1] - rk[b]; ++j) s.keys.push_back({0, rk[b] + j});
      longest_q = std::max(longest_q, s.len_q), longest_k = std::max(longest_k, s.len_k());
      // Rows past the dense problem's (only where strides kept other offsets) stay NaN: not compared.
      const int64_t bb = int64_t(b);
      if (bb < p.B) {
        for (int64_t i = 0; i < std::min(s.len_q, p.Sq); ++i) {
          copy_row(q, bb, i, p.q, 0, s.q_row + i);
          if (p.backward) copy_row(dout, bb, i, p.dout, 0, s.q_row + i);
        }
        for (int64_t j = 0; j < std::min(s.len_k(), p.Sk); ++j)
          copy_row(k, bb, j, p.k, 0, rk[b] + j), copy_row(v, bb, j, p.v, 0, rk[b] + j);
      }
      p.sequences.push_back(std::move(s));
    }
  }
  // max_seqlen: computed (0), exact, larger, or (refused) shorter than the longest sequence or negative.
  const auto max_seqlen = [&](int64_t longest, const char* name) -> int64_t {
    switch (in.ConsumeIntegralInRange(0, 7)) {
      case 4: return longest;
      case 5: return longest + 2;
      case 6:  // 0 (longest 1) means computed
        if (longest != 1) p.refusal = std::string(name) + (longest ? " below the longest sequence" : " negative");
        return longest - 1;
      case 7: p.refusal = std::string("a negative ") + name; return -1;
      default: return 0;
    }
  };
  const std::string before = p.refusal;
  p.options.max_seqlen_q = max_seqlen(longest_q, "max_seqlen_q");
  p.options.max_seqlen_k = max_seqlen(longest_k, "max_seqlen_k");
  if (!before.empty()) p.refusal = before;  // the first reason stays the one reported
}

// The dense problem's keys in a cache: dense [B, capacity, ...] or pages of page_size rows in
// shuffled order; sequence b holds seqlens_k[b] <= Sk of its keys, every other cache row is NaN
// (poison), which the library must never read. Rarely a seqlens or block table to refuse.
inline void to_kvcache(FuzzedDataProvider& in, Problem& p, DType k_dtype, DType v_dtype) {
  p.mode = Mode::kvcache;
  p.backward = false;  // attention_with_kvcache has no backward
  drop_mask_and_bias(in, p, "attention_with_kvcache");
  const memattn::Algorithm a = p.options.algorithm;
  if (a != memattn::Algorithm::automatic && a != memattn::Algorithm::flash)
    p.refusal = "attention_with_kvcache on a reference algorithm";
  const Operand k = p.k, v = p.v;
  const Shape ks = k.view.shape, vs = v.view.shape;
  const bool v_pairs = vs[0] == ks[0] && vs[1] == ks[1];
  const bool paged = in.ConsumeBool();
  static constexpr int64_t kPageSizes[] = {1, 2, 3, 4, 5, 8, 16};
  const int64_t page_size = paged ? kPageSizes[in.ConsumeIntegralInRange<size_t>(0, std::size(kPageSizes) - 1)] : 1;
  std::vector<int64_t> lens(size_t(p.B)), pages_of(size_t(p.B));
  for (auto& n : lens) n = in.ConsumeIntegralInRange<int64_t>(0, p.Sk);
  for (int64_t b = 0; b < p.B; ++b) pages_of[size_t(b)] = (lens[size_t(b)] + page_size - 1) / page_size;
  const int64_t max_pages = (p.B ? *std::max_element(pages_of.begin(), pages_of.end()) : 0) + in.ConsumeIntegralInRange(0, 1);
  const int64_t capacity = paged ? max_pages * page_size : p.Sk + in.ConsumeIntegralInRange(0, 2);
  const int corrupt = in.ConsumeIntegralInRange(0, 15);
  if (corrupt == 12 && p.B > 0) lens[0] = -1;
  if (corrupt == 13 && p.B > 0) lens[0] = capacity + 1;
  const DType lens_dtype = corrupt == 14 ? DType::f32 : in.ConsumeBool() ? DType::i64 : DType::i32;
  if (corrupt == 15 && !paged) lens.push_back(0);  // [B + 1]
  p.seqlens_k = index_operand(in, lens_dtype, 1, {int64_t(lens.size()), 0, 0, 0}, lens);
  std::vector<int64_t> read = read_indices(p.seqlens_k);
  if (!index_dtype(lens_dtype)) p.refusal = "seqlens_k of a dtype other than i32/i64";
  if (read.size() != size_t(p.B)) p.refusal = "seqlens_k of batch + 1 entries";
  for (int64_t n : read)
    if (n < 0 || n > capacity) p.refusal = "seqlens_k outside [0, cache capacity]";
  read.resize(size_t(p.B));

  // Sequence b's pages: a shuffled run of page ids; entries past its pages are never read.
  std::vector<std::vector<int64_t>> table(size_t(p.B));
  int64_t num_pages = in.ConsumeIntegralInRange(0, 2);
  if (paged) {
    for (int64_t b = 0; b < p.B; ++b) num_pages += (std::clamp<int64_t>(read[size_t(b)], 0, capacity) + page_size - 1) / page_size;
    std::vector<int64_t> ids(static_cast<size_t>(num_pages));
    std::iota(ids.begin(), ids.end(), 0);
    uint64_t state = in.ConsumeIntegral<uint32_t>() | 1;
    for (size_t i = ids.size(); i > 1; --i) {
      state ^= state << 13, state ^= state >> 7, state ^= state << 17;
      std::swap(ids[i - 1], ids[state % i]);
    }
    const int64_t unused = in.ConsumeBool() ? -1 : 1000;
    size_t next = 0;
    std::vector<int64_t> flat;
    for (int64_t b = 0; b < p.B; ++b) {
      const int64_t used = (std::clamp<int64_t>(read[size_t(b)], 0, capacity) + page_size - 1) / page_size;
      for (int64_t t = 0; t < max_pages; ++t) flat.push_back(t < used && next < ids.size() ? ids[next++] : unused);
    }
    if (corrupt == 15 && !flat.empty() && p.B > 0 && read[0] > 0) flat[0] = num_pages;  // not a page
    p.block_table = index_operand(in, in.ConsumeBool() ? DType::i64 : DType::i32, 2, {p.B, max_pages, 0, 0}, flat);
    const std::vector<int64_t> bt = read_indices(p.block_table);
    for (int64_t b = 0; b < p.B; ++b) {
      table[size_t(b)].assign(bt.begin() + b * max_pages, bt.begin() + (b + 1) * max_pages);
      for (int64_t t = 0; t * page_size < std::clamp<int64_t>(read[size_t(b)], 0, capacity); ++t)
        if (table[size_t(b)][size_t(t)] < 0 || table[size_t(b)][size_t(t)] >= num_pages)
          p.refusal = "a block_table entry that is not a page of the cache";
    }
  }
  const int64_t blocks = paged ? num_pages : p.B, rows = paged ? page_size : capacity;
  p.k = make_operand(in, k_dtype, 4, {blocks, rows, ks[2], ks[3]});
  p.v = make_operand(in, v_dtype, 4, {blocks, rows + !v_pairs, vs[2], vs[3]});
  if (!p.refusal.empty()) return;
  for (int64_t b = 0; b < p.B; ++b) {
    Sequence s;
    s.q_batch = b, s.len_q = p.Sq;
    for (int64_t j = 0; j < read[size_t(b)]; ++j) {
      const std::array<int64_t, 2> at = paged ? std::array<int64_t, 2>{table[size_t(b)][size_t(j / page_size)], j % page_size}
                                              : std::array<int64_t, 2>{b, j};
      s.keys.push_back(at);
      copy_row(k, b, j, p.k, at[0], at[1]), copy_row(v, b, j, p.v, at[0], at[1]);
    }
    p.sequences.push_back(std::move(s));
  }
}

// The whole problem: the dense layout, then the fields above.
inline void decode(FuzzedDataProvider& in, Problem& p, const std::vector<std::string>& targets) {
  decode_dense(in, p, targets);
  if (p.huge) return;  // sizing calls only
  decode_modifiers(in, p);
  std::string planner_refusal;
  const auto [k_dtype, v_dtype] = decode_kv_dtypes(in, p, planner_refusal);
  // What only the planner refuses (f64 on flash, a KV cache mix on a reference algorithm) is
  // refused by every call, one without sequences too (fuzz/README.md).
  const auto planned = [&] {
    if (p.refusal.empty()) p.refusal = planner_refusal;
  };
  switch (in.ConsumeIntegralInRange(0, 2)) {
    case 1: to_varlen(in, p, k_dtype, v_dtype); return planned();
    case 2:
      if (p.dtype == DType::f64) planner_refusal = "attention_with_kvcache with f64 (flash takes f32, bf16, f16)";
      to_kvcache(in, p, k_dtype, v_dtype);
      return planned();
    default: break;
  }
  if (k_dtype != p.k.view.dtype) p.k = relaid(in, p.k, k_dtype);
  if (v_dtype != p.v.view.dtype) p.v = relaid(in, p.v, v_dtype);
  if (in.ConsumeIntegralInRange(0, 15) == 15) {
    p.options.max_seqlen_k = p.Sk + 1;  // nonzero: 0 means unset
    p.refusal = "max_seqlen_k without cu_seqlens";
  }
  for (int64_t b = 0; b < p.B; ++b) {
    Sequence s;
    s.q_batch = b, s.len_q = p.Sq;
    for (int64_t j = 0; j < p.Sk; ++j) s.keys.push_back({b, j});
    p.sequences.push_back(std::move(s));
  }
  planned();
}

}  // namespace fuzz
