// `memattn run` on varlen batches, KV caches (dense and paged) and f32 queries on f16 caches writes
// bitwise what memattn::forward, backward and attention_with_kvcache give when called directly.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "cli_support.hpp"
#include "memattn/memattn.hpp"

namespace memattn::cli_test {
namespace {

// dense: forward on [batch, longest, ...]; varlen: cu_seqlens over packed [1, total, ...];
// cache: attention_with_kvcache on [batch, rows, ...] caches; paged: the same through a block table.
enum class Kind { dense, varlen, cache, paged };

struct Case {
  std::string name;
  Kind kind = Kind::varlen;
  DType q_dtype = DType::f32, kv_dtype = DType::f32, index_dtype = DType::i32;
  int64_t heads_q = 4, heads_kv = 2, dim = 8, dim_v = 6;
  // Per sequence: query and key lengths (varlen; dense pads them to the longest); the cache kinds
  // give every sequence `new_queries` queries and lens_k keys.
  std::vector<int64_t> lens_q{3, 0, 5}, lens_k{4, 2, 6};
  int64_t new_queries = 2, page_size = 4;
  bool causal = false;
  Align align = Align::top_left;
  int64_t window_left = -1, window_right = -1;
  double softcap = 0;
  bool alibi_per_batch = false, alibi = false, sinks = false;
  bool max_seqlen = false;  // varlen: pass --max-seqlen-q/-k (the actual longest lengths)
  bool lse = true, backward = false, force_progress = false;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

int64_t longest(const std::vector<int64_t>& v) { return v.empty() ? 0 : *std::max_element(v.begin(), v.end()); }

std::vector<int64_t> offsets(const std::vector<int64_t>& lens) {
  std::vector<int64_t> o{0};
  for (int64_t n : lens) o.push_back(o.back() + n);
  return o;
}

std::string number(double x) {
  char text[32];
  std::snprintf(text, sizeof text, "%.17g", x);
  return text;
}

// The inputs of a case and the arguments that name them.
struct Inputs {
  Array q, k, v, dout;
  std::optional<Array> cu_q, cu_k, seqlens_k, block_table, slopes, sinks;
  std::vector<std::string> args;
};

Inputs make_inputs(const Case& c, const ScratchDir& dir) {
  const int64_t batch = int64_t(c.lens_k.size());
  std::vector<int64_t> q_shape, kv_rows;  // q's [batch, seq] and the caches' [batch or pages, rows]
  std::optional<Array> table;
  switch (c.kind) {
    case Kind::dense: q_shape = {batch, longest(c.lens_q)}, kv_rows = {batch, longest(c.lens_k)}; break;
    case Kind::varlen:
      q_shape = {1, offsets(c.lens_q).back()}, kv_rows = {1, offsets(c.lens_k).back()};
      break;
    case Kind::cache: q_shape = {batch, c.new_queries}, kv_rows = {batch, longest(c.lens_k) + 1}; break;
    case Kind::paged: {
      // Each sequence's pages, handed out backwards; one spare page and one unused -1 column.
      int64_t width = 0, used = 0;
      for (int64_t n : c.lens_k) {
        const int64_t pages = (n + c.page_size - 1) / c.page_size;
        width = std::max(width, pages), used += pages;
      }
      std::vector<int64_t> entries(size_t(batch * (width + 1)), -1);
      int64_t next = used;
      for (int64_t b = 0; b < batch; ++b)
        for (int64_t p = 0; p * c.page_size < c.lens_k[size_t(b)]; ++p) entries[size_t(b * (width + 1) + p)] = next--;
      table = Array::integers(c.index_dtype, {batch, width + 1}, entries);
      q_shape = {batch, c.new_queries}, kv_rows = {used + 1, c.page_size};
      break;
    }
  }
  const int64_t out_batch = q_shape[0], out_seq = q_shape[1];
  Inputs in{Array::random(c.q_dtype, {out_batch, out_seq, c.heads_q, c.dim}, 1),
            Array::random(c.kv_dtype, {kv_rows[0], kv_rows[1], c.heads_kv, c.dim}, 2),
            Array::random(c.kv_dtype, {kv_rows[0], kv_rows[1], c.heads_kv, c.dim_v}, 3),
            Array::random(c.q_dtype, {out_batch, out_seq, c.heads_q, c.dim_v}, 4),
            {}, {}, {}, {}, {}, {},
            {"run", "--q", "q.npy", "--k", "k.npy", "--v", "v.npy", "-o", "out.npy"}};
  write_npy(dir.path("q.npy"), in.q);
  write_npy(dir.path("k.npy"), in.k);
  write_npy(dir.path("v.npy"), in.v);
  const auto add = [&](std::optional<Array>& slot, Array a, const char* option, const char* file) {
    write_npy(dir.path(file), a);
    slot = std::move(a);
    in.args.insert(in.args.end(), {option, file});
  };
  if (c.kind == Kind::varlen) {
    add(in.cu_q, Array::integers(c.index_dtype, {batch + 1}, offsets(c.lens_q)), "--cu-seqlens-q", "cu_q.npy");
    add(in.cu_k, Array::integers(c.index_dtype, {batch + 1}, offsets(c.lens_k)), "--cu-seqlens-k", "cu_k.npy");
    if (c.max_seqlen)
      in.args.insert(in.args.end(), {"--max-seqlen-q", std::to_string(longest(c.lens_q)), "--max-seqlen-k",
                                     std::to_string(longest(c.lens_k))});
  }
  if (c.kind == Kind::cache || c.kind == Kind::paged)
    add(in.seqlens_k, Array::integers(c.index_dtype, {batch}, c.lens_k), "--seqlens-k", "seqlens.npy");
  if (table) add(in.block_table, *table, "--block-table", "table.npy");
  if (c.alibi || c.alibi_per_batch) {
    const std::vector<int64_t> shape = c.alibi_per_batch ? std::vector<int64_t>{out_batch, c.heads_q}
                                                         : std::vector<int64_t>{c.heads_q};
    add(in.slopes, Array::random(DType::f32, shape, 7), "--alibi-slopes", "slopes.npy");
  }
  if (c.sinks) add(in.sinks, Array::random(DType::f32, {c.heads_q}, 8), "--sinks", "sinks.npy");
  if (c.lse) in.args.insert(in.args.end(), {"--lse", "lse.npy"});
  if (c.causal) in.args.push_back("--causal");
  if (c.align == Align::bottom_right) in.args.insert(in.args.end(), {"--align", "bottom_right"});
  if (c.window_left != -1 || c.window_right != -1)
    in.args.insert(in.args.end(), {"--window", std::to_string(c.window_left) + "," + std::to_string(c.window_right)});
  if (c.softcap > 0) in.args.insert(in.args.end(), {"--softcap", number(c.softcap)});
  if (c.backward) {
    write_npy(dir.path("dout.npy"), in.dout);
    in.args.insert(in.args.end(), {"--backward", "--dout", "dout.npy", "--dq", "dq.npy", "--dk", "dk.npy", "--dv", "dv.npy"});
  }
  return in;
}

class CliRunSequences : public testing::TestWithParam<Case> {};

TEST_P(CliRunSequences, BitwiseEqualToDirectCalls) {
  const Case& c = GetParam();
  ScratchDir dir;
  Inputs in = make_inputs(c, dir);
  const ToolResult r = run_tool(in.args, dir.dir(), c.force_progress ? std::vector<std::string>{"MEMATTN_FORCE_PROGRESS=1"}
                                                                     : std::vector<std::string>{});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const int64_t pieces = in.q.shape[0] * c.heads_kv * (c.backward ? 2 : 1);
  if (c.force_progress)
    EXPECT_NE(r.err.find(std::to_string(pieces) + "/" + std::to_string(pieces)), std::string::npos) << r.err;
  else
    EXPECT_EQ(r.err, "");

  // The same call in this process, on views of the same bytes, with options set here.
  Options o;
  o.causal = c.causal, o.align = c.align, o.window_left = c.window_left, o.window_right = c.window_right;
  o.softcap = c.softcap;
  const auto view = [](std::optional<Array>& a) { return a ? std::optional(a->tensor()) : std::nullopt; };
  std::optional<Tensor> cu_q = view(in.cu_q), cu_k = view(in.cu_k), seqlens = view(in.seqlens_k),
                        table = view(in.block_table), slopes = view(in.slopes), sinks = view(in.sinks);
  o.cu_seqlens_q = cu_q ? &*cu_q : nullptr, o.cu_seqlens_k = cu_k ? &*cu_k : nullptr;
  o.alibi_slopes = slopes ? &*slopes : nullptr, o.sinks = sinks ? &*sinks : nullptr;
  if (c.max_seqlen) o.max_seqlen_q = longest(c.lens_q), o.max_seqlen_k = longest(c.lens_k);
  const int64_t batch = in.q.shape[0], seq_q = in.q.shape[1];
  Array out = Array::zeros(c.q_dtype, in.dout.shape), lse = Array::zeros(DType::f32, {batch, c.heads_q, seq_q});
  Tensor lse_view = lse.tensor();
  if (seqlens)
    attention_with_kvcache(in.q.tensor(), in.k.tensor(), in.v.tensor(), *seqlens, table ? &*table : nullptr,
                           out.tensor(), &lse_view, o);
  else
    forward(in.q.tensor(), in.k.tensor(), in.v.tensor(), out.tensor(), &lse_view, o);
  expect_output(dir.path("out.npy"), out);
  if (c.lse) expect_output(dir.path("lse.npy"), lse);
  if (c.backward) {
    Array dq = Array::zeros(c.q_dtype, in.q.shape), dk = Array::zeros(c.q_dtype, in.k.shape),
          dv = Array::zeros(c.q_dtype, in.v.shape);
    backward(in.q.tensor(), in.k.tensor(), in.v.tensor(), out.tensor(), in.dout.tensor(), lse_view, dq.tensor(),
             dk.tensor(), dv.tensor(), o);
    expect_output(dir.path("dq.npy"), dq);
    expect_output(dir.path("dk.npy"), dk);
    expect_output(dir.path("dv.npy"), dv);
  }
  for (const std::string& name : dir.names()) EXPECT_EQ(name.find(".tmp-"), std::string::npos) << name;
}

std::vector<Case> cases() {
  const auto with = [](Case c, auto&& edit) { edit(c); return c; };
  const Case varlen, cache = with(Case{}, [](Case& c) { c.kind = Kind::cache, c.lens_k = {9, 0, 5}; }),
                     paged = with(cache, [](Case& c) { c.kind = Kind::paged; });
  const std::vector<Case> forward_cases = {
      with(varlen, [](Case& c) { c.name = "varlen_i32"; }),
      with(varlen, [](Case& c) { c.name = "varlen_i64_max_seqlen", c.index_dtype = DType::i64, c.max_seqlen = true; }),
      with(varlen, [](Case& c) { c.name = "varlen_causal_bottom_right", c.causal = true, c.align = Align::bottom_right; }),
      with(varlen, [](Case& c) {
        c.name = "varlen_window_modifiers", c.window_left = 2, c.window_right = 0, c.softcap = 1.5, c.alibi = true,
        c.sinks = true;
      }),
      with(varlen, [](Case& c) { c.name = "varlen_f16", c.q_dtype = c.kv_dtype = DType::f16, c.causal = true; }),
      with(varlen, [](Case& c) { c.name = "varlen_f32_q_f16_kv", c.kv_dtype = DType::f16; }),
      with(varlen, [](Case& c) {
        c.name = "dense_f32_q_f16_kv", c.kind = Kind::dense, c.kv_dtype = DType::f16, c.causal = true;
        c.alibi_per_batch = true;
      }),
      with(cache, [](Case& c) { c.name = "cache_i32", c.causal = true, c.align = Align::bottom_right; }),
      with(cache, [](Case& c) {
        c.name = "cache_i64_modifiers", c.index_dtype = DType::i64, c.softcap = 0.75, c.alibi_per_batch = true,
        c.sinks = true, c.window_left = 3, c.window_right = 0, c.causal = true, c.align = Align::bottom_right;
      }),
      with(cache, [](Case& c) { c.name = "cache_f32_q_f16_kv", c.kv_dtype = DType::f16, c.lse = false; }),
      with(cache, [](Case& c) { c.name = "cache_f16", c.q_dtype = c.kv_dtype = DType::f16; }),
      // Past 2048 keys the decode path splits the keys and merges the partials.
      with(cache, [](Case& c) { c.name = "cache_split_keys", c.lens_k = {2100, 700}, c.new_queries = 1, c.heads_kv = 1; }),
      with(paged, [](Case& c) { c.name = "paged_i32", c.causal = true, c.align = Align::bottom_right; }),
      with(paged, [](Case& c) {
        c.name = "paged_i64_pages_of_1_modifiers", c.index_dtype = DType::i64, c.page_size = 1, c.alibi = true,
        c.sinks = true, c.softcap = 2;
      }),
      with(paged, [](Case& c) { c.name = "paged_f32_q_f16_kv", c.kv_dtype = DType::f16, c.causal = true; }),
  };
  const std::vector<Case> backward_cases = {
      with(varlen, [](Case& c) { c.name = "backward_varlen", c.causal = true; }),
      with(varlen, [](Case& c) {
        c.name = "backward_varlen_i64_modifiers", c.index_dtype = DType::i64, c.alibi = true, c.sinks = true,
        c.softcap = 1.25, c.lse = false;
      }),
  };
  return with_progress_variants(forward_cases, backward_cases);
}

INSTANTIATE_TEST_SUITE_P(Cases, CliRunSequences, testing::ValuesIn(cases()),
                         [](const testing::TestParamInfo<Case>& info) { return info.param.name; });

}  // namespace
}  // namespace memattn::cli_test
