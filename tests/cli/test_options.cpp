// The tool's command line: help, version, commands, and bench and demo options parsed by CLI11.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cli_support.hpp"
#include "memattn/memattn.hpp"

namespace memattn::cli_test {
namespace {

void expect_contains(const std::string& text, const std::vector<std::string>& parts) {
  for (const std::string& p : parts) EXPECT_NE(text.find(p), std::string::npos) << "'" << p << "' not in:\n" << text;
}

TEST(CliOptions, Version) {
  const ToolResult r = run_tool({"--version"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.out, "memattn " MEMATTN_VERSION "\n");
}

TEST(CliOptions, HelpListsTheCommands) {
  for (const char* form : {"--help", "-h", "help"}) {
    const ToolResult r = run_tool({form});
    EXPECT_EQ(r.exit_code, 0) << form;
    expect_contains(r.out, {"Usage: memattn", "demo", "bench", "run", "--version"});
  }
}

TEST(CliOptions, RunHelpIsComplete) {
  const ToolResult r = run_tool({"run", "--help"});
  EXPECT_EQ(r.exit_code, 0);
  expect_contains(r.out, {"Usage: memattn run", "--q", "--k", "--v", "--mask", "--bias", "--alibi-slopes", "--sinks", "--causal",
                          "--align top_left|bottom_right", "--window L,R", "--diagonal-offset N", "--scale", "--softcap X", "--algorithm auto|naive|sequential|chunked|flash",
                          "--threads", "-o,--out", "--lse", "--backward", "--dout", "--dq", "--dk", "--dv", "Exit codes"});
  EXPECT_EQ(run_tool({"help", "run"}).out, r.out);
}

TEST(CliOptions, BenchHelpIsComplete) {
  const ToolResult r = run_tool({"bench", "--help"});
  EXPECT_EQ(r.exit_code, 0);
  expect_contains(r.out, {"Usage: memattn bench", "--n", "--d", "--batch", "--heads", "--threads", "--causal", "--dtype",
                          "--algorithm", "--direction", "--target", "--reps", "--min-seconds", "--quick", "--backward",
                          "--json", "--peak", "512,1024,2048,4096,8192,16384"});
}

TEST(CliOptions, DemoHelpIsComplete) {
  const ToolResult r = run_tool({"demo", "--help"});
  EXPECT_EQ(r.exit_code, 0);
  expect_contains(r.out, {"Usage: memattn demo", "--json", "--max-seconds S=30"});
}

TEST(CliOptions, UsageErrorsExitWith2) {
  struct Bad {
    std::vector<std::string> args;
    std::string message;
  };
  const Bad cases[] = {
      {{}, "memattn: A subcommand is required"},
      {{"frobnicate"}, "memattn: unknown command or option 'frobnicate' (expected demo, bench, run, merge or help)"},
      {{"--bogus"}, "memattn: unknown command or option '--bogus' (expected demo, bench, run, merge or help)"},
      {{"bench", "--n", "0"}, "memattn bench: --n: '0' is not a positive integer"},
      {{"bench", "--n", "512,x"}, "memattn bench: --n: 'x' is not a positive integer"},
      {{"bench", "--d"}, "--d"},
      {{"bench", "--dtype", "f64"}, "memattn bench: --dtype: 'f64' is not f32, bf16 or f16"},
      {{"bench", "--causal", "2"}, "memattn bench: --causal: '2' is not 0 or 1"},
      {{"bench", "--algorithm", "fast"}, "memattn bench: --algorithm: 'fast' is not flash, chunked, naive, sequential or auto"},
      {{"bench", "--direction", "sideways"}, "memattn bench: --direction: 'sideways' is not forward or backward"},
      {{"bench", "--target", "nope"}, "memattn bench: --target: 'nope' is not one of this CPU's targets:"},
      {{"bench", "--reps", "-1"}, "memattn bench: --reps: '-1' is not a positive integer"},
      {{"bench", "--min-seconds", "3600"}, "memattn bench: --min-seconds: '3600' is not a number of seconds in [0, 3600)"},
      {{"bench", "--frob"}, "memattn bench: The following argument was not expected: --frob"},
      {{"demo", "--max-seconds", "soon"}, "memattn demo: --max-seconds: 'soon' is not a number of seconds >= 0"},
      {{"run", "--q", "q.npy"}, "memattn run: --k is required"},
      {{"run", "--q", "q.npy", "--k", "k.npy", "--v", "v.npy", "-o", "o.npy", "--softcap", "-1"},
       "memattn run: --softcap: '-1' is not a finite number >= 0"},
  };
  for (const Bad& b : cases) {
    const ToolResult r = run_tool(b.args);
    EXPECT_EQ(r.exit_code, 2) << b.message;
    EXPECT_EQ(r.out, "");
    expect_contains(r.err, {b.message});
  }
}

TEST(CliOptions, UnknownSimdTargetInTheEnvironment) {
  const ToolResult r = run_tool({"bench", "--peak"}, ".", {"MEMATTN_TARGET=nonesuch"});
  EXPECT_EQ(r.exit_code, 2);
  expect_contains(r.err, {"memattn bench: MEMATTN_TARGET: ", "nonesuch"});
}

// One tiny end-to-end sweep: list options replace their defaults, commas and repeats add values,
// duplicates count once, and --backward adds the backward direction.
// How many times `s` occurs in `text`.
size_t occurrences(const std::string& text, const std::string& s) {
  size_t n = 0;
  for (size_t at = text.find(s); at != std::string::npos; at = text.find(s, at + 1)) ++n;
  return n;
}

TEST(CliOptions, BenchListOptions) {
  const ToolResult r = run_tool({"bench", "--n", "48,32", "--n", "48", "--d", "16", "--heads", "1", "--dtype", "f32",
                                 "--causal", "1", "--threads", "1", "--reps", "1", "--json", "--backward"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto count = [&](const std::string& s) { return occurrences(r.out, s); };
  EXPECT_EQ(count("{\"direction\""), 4u) << r.out;  // n = 48, 32 x forward, backward
  EXPECT_EQ(count("\"n\": 32,"), 2u);
  EXPECT_EQ(count("\"n\": 48,"), 2u);
  EXPECT_EQ(count("\"direction\": \"backward\""), 2u);
  EXPECT_EQ(count("\"causal\": true"), 4u);
  EXPECT_EQ(count("\"reps\": 1,"), 4u);
  EXPECT_EQ(count("\"family\": \"f32_fma\""), 4u);
}

TEST(CliOptions, BenchForcedChunks) {
  const ToolResult r = run_tool({"bench", "--n", "40", "--d", "16", "--heads", "1", "--dtype", "f32,bf16", "--causal",
                                 "0", "--threads", "1", "--reps", "1", "--json", "--key-chunk", "16", "--query-chunk",
                                 "24"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(occurrences(r.out, "\"key_chunk\": 16, \"query_chunk\": 24,"), 2u) << r.out;
  const ToolResult planner = run_tool({"bench", "--n", "40", "--d", "16", "--heads", "1", "--dtype", "f32", "--causal",
                                       "0", "--threads", "1", "--reps", "1", "--json"});
  ASSERT_EQ(planner.exit_code, 0) << planner.err;
  EXPECT_EQ(occurrences(planner.out, "\"key_chunk\": 0, \"query_chunk\": 0,"), 1u) << planner.out;
  const ToolResult zero = run_tool({"bench", "--n", "40", "--query-chunk", "0"});
  EXPECT_EQ(zero.exit_code, 2) << zero.err;
  EXPECT_NE(zero.err.find("--query-chunk"), std::string::npos) << zero.err;
}

// Backward rows name the family memattn::backward_tile_family reports for the point's operands:
// it depends on the head dim (AMX tiles take multiples of 32 only).
TEST(CliOptions, BenchBackwardRowsNameTheBackwardFamily) {
  for (int64_t d : {32, 48}) {
    const memattn::Tensor q = memattn::Tensor::contiguous(nullptr, memattn::DType::bf16, {0, 40, 1, d});
    const std::string want = memattn::backward_tile_family(q, q, q);
    const ToolResult r = run_tool({"bench", "--n", "40", "--d", std::to_string(d), "--heads", "1", "--dtype", "bf16",
                                   "--causal", "0", "--threads", "1", "--reps", "1", "--json", "--direction",
                                   "backward"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(occurrences(r.out, "\"family\": \"" + want + "\""), 1u) << d << " " << r.out;
  }
}

TEST(CliOptions, BenchRejectsUnknownFamily) {
  const ToolResult r = run_tool({"bench", "--peak", "--threads", "1"}, ".", {"MEMATTN_FAMILY=bogus"});
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("MEMATTN_FAMILY"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("bogus"), std::string::npos) << r.err;
}

// A misspelt MEMATTN_BACKWARD fails the backward runs with the library's message.
TEST(CliOptions, BenchReportsUnknownBackwardWay) {
  const ToolResult r = run_tool({"bench", "--n", "64", "--d", "16", "--dtype", "f32", "--threads", "1", "--causal",
                                 "0", "--direction", "backward", "--reps", "1", "--min-seconds", "0"},
                                ".", {"MEMATTN_BACKWARD=bogus"});
  EXPECT_NE(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("MEMATTN_BACKWARD: expected fused or passes, got bogus"), std::string::npos) << r.err;
}

TEST(CliOptions, BenchDecodeJson) {
  const ToolResult r = run_tool({"bench", "--decode", "--n", "300,70", "--seq-q", "2", "--heads", "8", "--d", "16",
                                 "--dtype", "bf16", "--threads", "1", "--reps", "1", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto count = [&](const std::string& s) { return occurrences(r.out, s); };
  // Each seq_k with a contiguous cache and pages of 16 and 256 keys, read by bf16 and by f32 queries.
  EXPECT_EQ(count("{\"direction\": \"decode\""), 12u) << r.out;
  EXPECT_EQ(count("\"seq_q\": 2,"), 12u);
  EXPECT_EQ(count("\"seq_k\": 300,"), 6u);
  EXPECT_EQ(count("\"seq_k\": 70,"), 6u);
  EXPECT_EQ(count("\"cache_dtype\": \"bf16\""), 12u);
  EXPECT_EQ(count("\"q_dtype\": \"bf16\""), 6u);
  EXPECT_EQ(count("\"q_dtype\": \"f32\""), 6u);
  for (const char* page : {"\"page_size\": 0,", "\"page_size\": 16,", "\"page_size\": 256,"})
    EXPECT_EQ(count(page), 4u) << page;
  EXPECT_EQ(count("\"kv_heads\": 2,"), 12u);
  for (const char* key : {"\"threads\": 1,", "\"gbps\": ", "\"peak_gbps\": ", "\"head_walk_gbps\": "})
    EXPECT_EQ(count(key), 12u) << key;
}

// f32 queries on an f32 cache are the cache's own dtype: one row, not two; --q-dtype picks.
TEST(CliOptions, BenchDecodeQueryDtypes) {
  const std::vector<std::string> point{"bench", "--decode", "--n", "100", "--seq-q", "1", "--heads", "4", "--d", "8",
                                       "--dtype", "f32,f16", "--threads", "1", "--reps", "1", "--page-size", "0", "--json"};
  const auto run = [&](std::vector<std::string> extra) {
    extra.insert(extra.begin(), point.begin(), point.end());
    const ToolResult r = run_tool(extra);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r.out;
  };
  const std::string both = run({});
  EXPECT_EQ(occurrences(both, "{\"direction\": \"decode\""), 3u) << both;
  EXPECT_EQ(occurrences(both, "\"cache_dtype\": \"f16\", \"q_dtype\": \"f32\""), 1u) << both;
  EXPECT_EQ(occurrences(both, "\"cache_dtype\": \"f16\", \"q_dtype\": \"f16\""), 1u) << both;
  EXPECT_EQ(occurrences(both, "\"cache_dtype\": \"f32\", \"q_dtype\": \"f32\""), 1u) << both;
  const std::string cache_only = run({"--q-dtype", "cache"});
  EXPECT_EQ(occurrences(cache_only, "\"q_dtype\": \"f32\""), 1u) << cache_only;
  EXPECT_EQ(occurrences(cache_only, "\"cache_dtype\": \"f16\", \"q_dtype\": \"f16\""), 1u) << cache_only;
  const ToolResult bad = run_tool({"bench", "--decode", "--q-dtype", "bf16"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("--q-dtype: 'bf16' is not cache or f32"), std::string::npos) << bad.err;
}

TEST(CliOptions, BenchDecodePageSizes) {
  const ToolResult r = run_tool({"bench", "--decode", "--n", "100", "--seq-q", "1", "--heads", "4", "--d", "8",
                                 "--dtype", "f32", "--threads", "1", "--reps", "1", "--page-size", "3,0", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(occurrences(r.out, "{\"direction\": \"decode\""), 2u) << r.out;
  EXPECT_EQ(occurrences(r.out, "\"page_size\": 3,"), 1u) << r.out;
  EXPECT_EQ(occurrences(r.out, "\"page_size\": 0,"), 1u) << r.out;
}

TEST(CliOptions, BenchSeqQNeedsDecode) {
  const ToolResult r = run_tool({"bench", "--seq-q", "2"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--decode"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace memattn::cli_test
