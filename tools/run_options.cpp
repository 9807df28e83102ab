// `memattn run`'s options on CLI11: the .npy files, the attention options and the gradients.
#include <cfloat>
#include <charconv>

#include "cli_values.hpp"
#include "run.hpp"

namespace memattn::tool {
namespace {

// "L,R": two integers >= -1 (-1: unbounded on that side).
std::optional<std::pair<int64_t, int64_t>> parse_window(const std::string& s) {
  int64_t w[2];
  const char* p = s.data();
  const char* const end = s.data() + s.size();
  for (int i = 0; i < 2; ++i) {
    const auto [next, ec] = std::from_chars(p, end, w[i]);
    if (ec != std::errc() || next == p || w[i] < -1) return std::nullopt;
    p = next;
    if (i == 0 && (p == end || *p++ != ',')) return std::nullopt;
  }
  if (p != end) return std::nullopt;
  return std::pair{w[0], w[1]};
}

}  // namespace

CLI::App* add_run_command(CLI::App& app, RunConfig& c) {
  CLI::App* sub = app.add_subcommand("run", "Attention on .npy files: out = softmax(scale q k^T + bias, masked) v");
  sub->footer(
      "Arrays are [batch, seq, heads, dim] like the C++ API, in f32 (<f4), f16 (<f2) or f64 (<f8, with\n"
      "the naive, sequential or chunked algorithm), C or Fortran order; mask and bias broadcast over\n"
      "[batch|1, heads_q|1, seq_q|1, seq_k|1]; f32 q may read f16 k and v (forward only).\n"
      "Varlen (--cu-seqlens-q/-k): q, k, v packed as [1, total, heads, dim], forward and backward.\n"
      "KV cache (--seqlens-k [--block-table]): k, v are caches [batch, max_seq, heads_kv, dim] or pages\n"
      "[num_pages, page_size, heads_kv, dim]; forward only, no mask or bias (use --causal --align\n"
      "bottom_right for new tokens at the end). Outputs appear only when everything succeeded.\n"
      "Exit codes: 0 done, 1 an unusable file or a call memattn refused, 2 a bad command line.\n"
      "Example: memattn run --q q.npy --k k.npy --v v.npy --causal -o out.npy --lse lse.npy");
  sub->add_option("--q", c.q, "queries [batch, seq_q, heads_q, dim]")->required()->type_name("FILE.npy");
  sub->add_option("--k", c.k, "keys [batch, seq_k, heads_kv, dim] (with --seqlens-k: the key cache)")
      ->required()->type_name("FILE.npy");
  sub->add_option("--v", c.v, "values [batch, seq_k, heads_kv, dim_v] (with --seqlens-k: the value cache)")
      ->required()->type_name("FILE.npy");
  sub->add_option("--mask", c.mask, "boolean mask, bool (|b1) or uint8 (|u1), nonzero = attend")
      ->type_name("FILE.npy");
  sub->add_option("--bias", c.bias, "additive bias, f32 or f16 (f64 with f64 inputs)")->type_name("FILE.npy");
  sub->add_option("--alibi-slopes", c.alibi_slopes, "ALiBi slopes, f32 [heads_q] or [batch, heads_q]")
      ->type_name("FILE.npy");
  sub->add_option("--sinks", c.sinks, "attention sink logits, f32 [heads_q]")->type_name("FILE.npy");
  // Varlen: both offsets or neither; each max length only with its offsets.
  CLI::Option* cu_q = sub->add_option("--cu-seqlens-q", c.cu_seqlens_q,
                                      "varlen: query offsets, int32 or int64 [batch + 1]; q, out [1, total_q, ...]")
                          ->type_name("FILE.npy");
  CLI::Option* cu_k = sub->add_option("--cu-seqlens-k", c.cu_seqlens_k,
                                      "varlen: key offsets, int32 or int64 [batch + 1]; k, v [1, total_k, ...]")
                          ->type_name("FILE.npy");
  cu_q->needs(cu_k), cu_k->needs(cu_q);
  sub->add_option("--max-seqlen-q", c.max_seqlen_q, "varlen: the longest query sequence (default: computed)")
      ->check(positive_integer())->needs(cu_q)->type_name("N");
  sub->add_option("--max-seqlen-k", c.max_seqlen_k, "varlen: the longest key sequence (default: computed)")
      ->check(positive_integer())->needs(cu_k)->type_name("N");
  // A cache call: --k and --v are the caches.
  CLI::Option* seqlens_k = sub->add_option("--seqlens-k", c.seqlens_k,
                                           "KV cache: keys per sequence, int32 or int64 [batch]; --k, --v are the "
                                           "caches (attention_with_kvcache)")
                               ->type_name("FILE.npy")->excludes(cu_q)->excludes(cu_k);
  sub->add_option("--block-table", c.block_table,
                  "KV cache: pages of each sequence, int32 or int64 [batch, max_pages]; --k, --v are pages")
      ->type_name("FILE.npy")->needs(seqlens_k);
  sub->add_flag("--causal", c.causal, "query i sees keys up to its diagonal only");
  sub->add_option("--align", c.align, "diagonal of --causal and --window when seq_q != seq_k")
      ->transform(one_of({enum_name("top_left", Align::top_left), enum_name("bottom_right", Align::bottom_right)},
                         "top_left or bottom_right"))
      ->type_name("top_left|bottom_right")->default_str("top_left");
  sub->add_option_function<std::string>(
         "--window", [&c](const std::string& s) { std::tie(c.window_left, c.window_right) = *parse_window(s); },
         "sliding window: keys diag-L .. diag+R visible (-1: unbounded)")
      ->check(CLI::Validator(
          [](std::string& s) -> std::string {
            return parse_window(s) ? "" : "'" + s + "' is not L,R: two integers >= -1 (-1 = unbounded), e.g. 128,0";
          },
          "", "window"))
      ->type_name("L,R");
  sub->add_option("--diagonal-offset", c.diagonal_offset,
                  "move the diagonal of --causal, --window and ALiBi by N keys (query i's: i + diag + N)")
      ->type_name("N");
  sub->add_option_function<double>("--scale", [&c](const double& s) { c.scale = s; }, "score scale (default 1/sqrt(dim))")
      ->check(number_in(-DBL_MAX, DBL_MAX, "a finite number"))->type_name("S");
  sub->add_option("--softcap", c.softcap, "cap the scaled scores: softcap * tanh(s / softcap); 0: off")
      ->check(number_in(0, DBL_MAX, "a finite number >= 0"))->type_name("X");
  sub->add_option("--algorithm", c.algorithm, "memattn algorithm (auto: flash, or chunked for f64)")
      ->transform(algorithm_names())->type_name("auto|naive|sequential|chunked|flash")->default_str("auto");
  sub->add_option("--threads", c.threads, "threads (default: all that OpenMP offers)")
      ->check(positive_integer())->type_name("N");
  sub->add_option("-o,--out", c.out, "output [batch, seq_q, heads_q, dim_v], dtype of q")->required()
      ->type_name("FILE.npy");
  sub->add_option("--lse", c.lse, "log-sum-exp of each row, f32 [batch, heads_q, seq_q]")->type_name("FILE.npy");
  CLI::Option* backward = sub->add_flag("--backward", c.backward, "also compute dq, dk, dv from --dout")
                              ->excludes(seqlens_k);  // the library has no backward of a cache call
  const auto grad = [&](const char* name, std::string& path, const char* help) {
    CLI::Option* o = sub->add_option(name, path, help)->type_name("FILE.npy")->needs(backward);
    backward->needs(o);
  };
  grad("--dout", c.dout, "with --backward: dLoss/dout, the shape and dtype of out");
  grad("--dq", c.dq, "with --backward: output dLoss/dq, the shape and dtype of q");
  grad("--dk", c.dk, "with --backward: output dLoss/dk, the shape and dtype of k");
  grad("--dv", c.dv, "with --backward: output dLoss/dv, the shape and dtype of v");
  CLI::Option* mpi = sub->add_flag("--mpi", c.mpi, "ring attention across the ranks of mpirun (docs/distributed.md)")
                         ->excludes(cu_q)->excludes(cu_k)->excludes(seqlens_k);  // ring attention is dense
  sub->add_option("--placement", c.placement, "with --mpi: how the sequence is cut among the ranks")
      ->check(CLI::IsMember({"contiguous", "zigzag"}))->needs(mpi)->type_name("contiguous|zigzag")
      ->default_str("contiguous");
  return sub;
}

}  // namespace memattn::tool
