// `memattn bench`'s options on CLI11: list options, ranges, names, SIMD targets.
#include "bench_options.hpp"

#include <algorithm>

#include "cli_values.hpp"
#include "memattn/memattn.hpp"

namespace memattn::tool {
namespace {

// A list option's values once each, in the order first given.
template <typename T>
void drop_repeats(std::vector<T>& list) {
  std::vector<T> unique;
  for (const T& x : list)
    if (std::find(unique.begin(), unique.end(), x) == unique.end()) unique.push_back(x);
  list = std::move(unique);
}

CLI::Validator target_names() {
  std::vector<std::pair<std::string, std::string>> names;
  std::string expected = "one of this CPU's targets:";
  for (const std::string& t : supported_targets()) names.emplace_back(t, t), expected += " " + t;
  return one_of(names, expected);
}

// --decode takes the sweep options that were given (n as seq_k, d, heads, threads, dtype as the
// cache dtype, reps, min-seconds, json) and keeps its own defaults for the others (seq-q,
// page-size and q-dtype are its own).
void fill_decode_sweep(Config& c, const CLI::App& sub) {
  DecodeConfig& dc = c.decode_sweep;
  if (sub.count("--n")) dc.seq_k = c.n;
  if (sub.count("--d")) dc.d = c.d.front();
  if (sub.count("--heads")) dc.heads = c.heads.front(), dc.kv_heads = dc.heads % 4 == 0 ? dc.heads / 4 : dc.heads;
  if (sub.count("--threads")) dc.threads = c.threads;
  if (sub.count("--dtype")) dc.cache_dtypes = c.dtypes;
  dc.reps = c.reps, dc.min_seconds = c.min_seconds, dc.json = c.json;
  drop_repeats(dc.seq_q);
  drop_repeats(dc.page_sizes);
  drop_repeats(dc.query_dtypes);
}

}  // namespace

CLI::App* add_bench_command(CLI::App& app, Config& c) {
  CLI::App* sub = app.add_subcommand(
      "bench", "Attention GFLOP/s over a sweep of shapes, against the machine's peak measured in the same run");
  sub->footer(
      "List options take comma-separated values and may repeat; the first use replaces the default.\n"
      "The full default sweep (96 runs) can take an hour or more on a slow kernel: the estimate and\n"
      "progress go to stderr. Example: memattn bench --quick --dtype f32 --threads 1 --json");
  const auto counts = [&](const char* name, std::vector<int64_t>& list, const char* help) {
    sub->add_option(name, list, help)->delimiter(',')->check(positive_integer())->type_name("N,...")
        ->capture_default_str();
  };
  counts("--n", c.n, "sequence lengths (seq_q = seq_k = n)");
  counts("--d", c.d, "head dims");
  counts("--batch", c.batch, "batch sizes");
  counts("--heads", c.heads, "heads");
  counts("--threads", c.threads, "thread counts");
  sub->add_option("--causal", c.causal, "causal masking off (0), on (1)")
      ->delimiter(',')->transform(one_of({{"0", "0"}, {"1", "1"}}, "0 or 1"))->type_name("0|1,...")
      ->default_str("0,1");
  sub->add_option("--dtype", c.dtypes, "element types")
      ->delimiter(',')
      ->transform(one_of({enum_name("f32", DType::f32), enum_name("bf16", DType::bf16),
                          enum_name("f16", DType::f16)},
                         "f32, bf16 or f16"))
      ->type_name("f32|bf16|f16,...")->default_str("f32,bf16");
  sub->add_option("--algorithm", c.algorithms, "algorithms")
      ->delimiter(',')->transform(algorithm_names())->type_name("flash|chunked|naive|sequential|auto,...")
      ->default_str("flash");
  sub->add_option("--direction", c.directions, "forward calls, backward calls (timed alone)")
      ->delimiter(',')
      ->transform(one_of({enum_name("forward", Direction::forward), enum_name("backward", Direction::backward)},
                         "forward or backward"))
      ->type_name("forward|backward,...")->default_str("forward");
  std::string targets_here;
  for (const std::string& t : supported_targets()) targets_here += (targets_here.empty() ? "" : ", ") + t;
  sub->add_option("--target", c.targets, "SIMD targets to compare; this CPU runs " + targets_here)
      ->delimiter(',')->transform(target_names())->type_name("NAME,...")
      ->default_str("MEMATTN_TARGET, else the best this CPU runs");
  sub->add_option("--reps", c.reps, "timed calls per point (default: enough for --min-seconds, at least 3)")
      ->check(positive_integer())->type_name("R");
  sub->add_option("--key-chunk", c.key_chunk, "keys per chunk of every call (default: the planner's choice)")
      ->check(positive_integer())->type_name("N");
  sub->add_option("--query-chunk", c.query_chunk,
                  "query rows per work item of every call (default: the planner's choice)")
      ->check(positive_integer())->type_name("N");
  sub->add_option("--min-seconds", c.min_seconds, "seconds of timed calls per point")
      ->check(number_in(0, 3600, "a number of seconds in [0, 3600)"))->type_name("S")->capture_default_str();
  CLI::Option* quick = sub->add_flag("--quick")->description("n = 1024,4096 only (unless --n is given)");
  CLI::Option* backward = sub->add_flag("--backward")->description("add backward to the directions");
  sub->add_flag("--json", c.json, "a JSON list, one object per run, on stdout");
  sub->add_flag("--peak", c.peak_only, "only measure and print the machine's peaks");
  CLI::Option* decode = sub->add_flag(
      "--decode", c.decode,
      "KV-cache decoding instead: seq_q = 1,4 new queries (--seq-q) against n = 4096,32768,131072 cached "
      "keys, d = 128, 32 query heads : 8 kv heads (--heads H: H/4 kv heads when 4 divides H, else H), causal bottom-right, in GB/s "
      "of K/V read against the read bandwidth measured in the same run");
  CLI::Option* dist = sub->add_flag(
      "--dist", c.dist,
      "ring attention (memattn_dist) across the ranks of mpirun instead: per point the busiest rank's "
      "ring time, the same block pairs computed alone, the messages alone, the share of communication "
      "hidden and the causal balance (docs/distributed.md); --n is the global length");
  sub->add_option("--placement", c.placement, "with --dist: contiguous or zigzag")
      ->check(CLI::IsMember({"contiguous", "zigzag"}))->needs(dist)->capture_default_str();
  sub->add_option("--seq-q", c.decode_sweep.seq_q, "with --decode: new queries per call")
      ->delimiter(',')->check(positive_integer())->type_name("N,...")->needs(decode);
  sub->add_option("--page-size", c.decode_sweep.page_sizes,
                  "with --decode: keys per page of a paged cache, 0 for a contiguous one (default 0,16,256)")
      ->delimiter(',')->check(CLI::NonNegativeNumber)->type_name("N,...")->needs(decode);
  sub->add_option("--q-dtype", c.decode_sweep.query_dtypes,
                  "with --decode: the queries' dtype, the cache's or f32 (default cache,f32: on a bf16 or f16 cache "
                  "also f32 queries, memattn's mixed call)")
      ->delimiter(',')
      ->transform(one_of({enum_name("cache", QueryDtype::cache), enum_name("f32", QueryDtype::f32)}, "cache or f32"))
      ->type_name("cache|f32,...")->needs(decode);
  sub->callback([&c, sub, quick, backward, decode] {
    if (*decode) fill_decode_sweep(c, *sub);
    if (*quick && !sub->count("--n")) c.n = {1024, 4096};
    if (*backward) c.directions.push_back(Direction::backward);
    drop_repeats(c.n), drop_repeats(c.d), drop_repeats(c.batch), drop_repeats(c.heads);
    drop_repeats(c.threads), drop_repeats(c.causal), drop_repeats(c.dtypes);
    drop_repeats(c.algorithms), drop_repeats(c.directions), drop_repeats(c.targets);
    // An unknown MEMATTN_TARGET or MEMATTN_FAMILY fails here, not after the peak loops; the
    // messages name the variable. A family that cannot run some dtype (unsupported) fails only
    // those points, as their calls do: the others still run.
    const auto check_family = [](Algorithm a, DType dt) {
      Options o;
      o.algorithm = a;
      try {
        tile_family(dt, o);
      } catch (const Error& e) {
        if (e.code() != ErrorCode::unsupported) throw;
      }
    };
    try {
      selected_target(Options{});
      for (Algorithm a : c.algorithms)
        for (DType dt : c.dtypes) check_family(a, dt);
    } catch (const Error& e) {
      throw CLI::ValidationError(e.what());
    }
  });
  return sub;
}

}  // namespace memattn::tool
