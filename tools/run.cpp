// `memattn run`: reads the .npy inputs, calls memattn, writes the outputs all together or not at all.
#include "run.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "attention_call.hpp"
#include "memattn/memattn.hpp"
#include "npy.hpp"
#include "output_files.hpp"

namespace memattn::tool {
namespace {

// A path option and its value, for messages and the overlap check.
struct NamedPath {
  const char* option;
  const std::string& path;
};

}  // namespace

std::string coinciding_paths(const RunConfig& c) {
  const NamedPath inputs[] = {{"--q", c.q},
                              {"--k", c.k},
                              {"--v", c.v},
                              {"--mask", c.mask},
                              {"--bias", c.bias},
                              {"--alibi-slopes", c.alibi_slopes},
                              {"--sinks", c.sinks},
                              {"--cu-seqlens-q", c.cu_seqlens_q},
                              {"--cu-seqlens-k", c.cu_seqlens_k},
                              {"--seqlens-k", c.seqlens_k},
                              {"--block-table", c.block_table},
                              {"--dout", c.dout}};
  const NamedPath outputs[] = {{"-o", c.out}, {"--lse", c.lse}, {"--dq", c.dq}, {"--dk", c.dk}, {"--dv", c.dv}};
  for (size_t i = 0; i < std::size(outputs); ++i) {
    const NamedPath& o = outputs[i];
    if (o.path.empty()) continue;
    for (const NamedPath& in : inputs)
      if (!in.path.empty() && same_file(o.path, in.path))
        return std::string(o.option) + " " + o.path + " is the input " + in.option + " " + in.path +
               ": refusing to overwrite an input";
    for (size_t j = 0; j < i; ++j)
      if (!outputs[j].path.empty() && same_file(o.path, outputs[j].path))
        return std::string(o.option) + " " + o.path + " and " + outputs[j].option + " " + outputs[j].path +
               " name the same file";
  }
  return "";
}

Options attention_options(const RunConfig& c) {
  Options o;
  o.causal = c.causal, o.align = c.align, o.window_left = c.window_left, o.window_right = c.window_right;
  o.diagonal_offset = c.diagonal_offset;
  o.scale = c.scale, o.softcap = c.softcap, o.algorithm = c.algorithm, o.num_threads = c.threads;
  o.max_seqlen_q = c.max_seqlen_q, o.max_seqlen_k = c.max_seqlen_k;
  return o;
}

namespace {

std::string dims_text(const std::vector<int64_t>& d) {
  std::string s = "(";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + ")";
}

}  // namespace

// backward() would refuse a dout unlike out too, but the pieces slice dout by out's shape first.
void check_dout(const NpyArray& dout, const NpyArray& q, const std::vector<int64_t>& out_shape) {
  if (dout.dtype() != q.dtype())
    throw NpyError(dout.path() + ": dtype '" + dout.descr() + "' does not match q's '" + q.descr() +
                   "' (dout has the dtype of out, which is q's)");
  if (dout.shape() != out_shape)
    throw NpyError(dout.path() + ": shape " + dims_text(dout.shape()) + " does not match out's shape " +
                   dims_text(out_shape) + " [batch, seq_q, heads_q, dim_v]");
}

namespace {

constexpr auto kFloats = {DType::f32, DType::f16, DType::f64};
constexpr auto kIntegers = {DType::i32, DType::i64};
constexpr const char* kMaskDims = "[batch|1, heads_q|1, seq_q|1, seq_k|1]";

// The layouts of q, k and v in each kind of call, for the reader's messages.
struct Layouts {
  const char *q, *k, *v;
};
Layouts layouts(const RunConfig& c) {
  if (!c.cu_seqlens_q.empty())
    return {"[1, total_q, heads_q, dim] (varlen: sequences packed)", "[1, total_k, heads_kv, dim] (varlen: sequences packed)",
            "[1, total_k, heads_kv, dim_v] (varlen: sequences packed)"};
  if (!c.block_table.empty())
    return {"[batch, seq_q, heads_q, dim]", "[num_pages, page_size, heads_kv, dim] (pages of the cache)",
            "[num_pages, page_size, heads_kv, dim_v] (pages of the cache)"};
  if (!c.seqlens_k.empty())
    return {"[batch, seq_q, heads_q, dim]", "[batch, max_seq, heads_kv, dim] (the cache)",
            "[batch, max_seq, heads_kv, dim_v] (the cache)"};
  return {"[batch, seq_q, heads_q, dim]", "[batch, seq_k, heads_kv, dim]", "[batch, seq_k, heads_kv, dim_v]"};
}

// The optional input `path` ("" when not given), read as `expect` says.
std::optional<NpyArray> read_optional(const std::string& path, const NpyExpect& expect) {
  if (path.empty()) return std::nullopt;
  return read_npy(path, expect);
}

// Computes and commits; throws NpyError, memattn::Error or std::runtime_error.
void run_files(const RunConfig& c) {
  const Layouts dims = layouts(c);
  const NpyArray q = read_npy(c.q, {kFloats, 4, dims.q});
  // k and v may be f16 under f32 queries (an f16 KV cache): the library checks the mix.
  const NpyArray k = read_npy(c.k, {kFloats, 4, dims.k});
  const NpyArray v = read_npy(c.v, {kFloats, 4, dims.v});
  const std::optional<NpyArray> mask = read_optional(c.mask, {{DType::u8}, 4, kMaskDims});
  const std::optional<NpyArray> bias = read_optional(c.bias, {kFloats, 4, kMaskDims});
  // Their rank ([heads_q] or [batch, heads_q]) is the library's to check, with its message.
  const std::optional<NpyArray> slopes =
      read_optional(c.alibi_slopes, {{DType::f32}, -1, "[heads_q] or [batch, heads_q]"});
  const std::optional<NpyArray> sinks = read_optional(c.sinks, {{DType::f32}, -1, "[heads_q]"});
  const std::optional<NpyArray> cu_q = read_optional(c.cu_seqlens_q, {kIntegers, 1, "[batch + 1] (offsets)"});
  const std::optional<NpyArray> cu_k = read_optional(c.cu_seqlens_k, {kIntegers, 1, "[batch + 1] (offsets)"});
  const std::optional<NpyArray> seqlens_k = read_optional(c.seqlens_k, {kIntegers, 1, "[batch]"});
  const std::optional<NpyArray> block_table = read_optional(c.block_table, {kIntegers, 2, "[batch, max_pages]"});
  const std::optional<NpyArray> dout =
      c.backward ? std::optional(read_npy(c.dout, {kFloats, 4, "[batch, seq_q, heads_q, dim_v]"})) : std::nullopt;

  AttentionCall call;
  call.q = q.tensor(), call.k = k.tensor(), call.v = v.tensor();
  const auto view = [](const std::optional<NpyArray>& a) { return a ? std::optional(a->tensor()) : std::nullopt; };
  call.mask = view(mask), call.bias = view(bias), call.alibi_slopes = view(slopes), call.sinks = view(sinks);
  call.cu_seqlens_q = view(cu_q), call.cu_seqlens_k = view(cu_k);
  call.seqlens_k = view(seqlens_k), call.block_table = view(block_table);
  call.options = attention_options(c);
  call.validate(c.backward);

  const auto& qs = q.shape();
  const int64_t batch = qs[0], seq_q = qs[1], heads_q = qs[2];
  const std::vector<int64_t> out_shape{batch, seq_q, heads_q, v.shape()[3]};
  if (dout) check_dout(*dout, q, out_shape);

  OutputFiles files;
  call.out = files.add(c.out, q.dtype(), out_shape);
  std::vector<float> lse_memory;  // backward needs lse even when it is not saved
  if (!c.lse.empty()) call.lse = files.add(c.lse, DType::f32, {batch, heads_q, seq_q});
  else if (c.backward) {
    lse_memory.resize(size_t(batch * heads_q * seq_q));
    call.lse = Tensor::contiguous(lse_memory.data(), DType::f32, {batch, heads_q, seq_q});
  }
  if (c.backward)
    call.grads = Gradients{dout->tensor(), files.add(c.dq, q.dtype(), q.shape()), files.add(c.dk, q.dtype(), k.shape()),
                           files.add(c.dv, q.dtype(), v.shape())};

  // The test hook (docs/cli.md): MEMATTN_FORCE_PROGRESS=1 splits and draws as on a terminal, at once.
  const char* force = std::getenv("MEMATTN_FORCE_PROGRESS");
  if (force && std::strcmp(force, "1") == 0)
    run_with_progress(pieces_by_kv_head(call), "memattn run:", BarWhen::always, stderr);
  else if (::isatty(STDERR_FILENO))
    run_with_progress(pieces_by_kv_head(call), "memattn run:", BarWhen::after_one_second, stderr);
  else {
    call.forward();
    if (call.grads) call.backward();
  }
  files.commit();
}

}  // namespace

int run_main(const RunConfig& c) {
  if (c.mpi) return run_mpi_main(c);
  return run_file_command("memattn run", coinciding_paths(c), [&] { run_files(c); });
}

}  // namespace memattn::tool
