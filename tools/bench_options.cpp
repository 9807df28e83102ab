// Parsing and validation of `memattn bench`'s options: list options, ranges, names, SIMD targets.
#include "bench_options.hpp"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <string_view>

#include "memattn/memattn.hpp"

namespace memattn::tool {
namespace {

bool parse_count(std::string_view s, int64_t& out) {
  if (s.empty() || s.size() > 12 || s.find_first_not_of("0123456789") != std::string_view::npos) return false;
  out = std::stoll(std::string(s));
  return out > 0;
}
bool parse_flag01(std::string_view s, int64_t& out) {
  if (s != "0" && s != "1") return false;
  out = s == "1";
  return true;
}
bool parse_dtype(std::string_view s, DType& out) {
  for (DType t : {DType::f32, DType::bf16, DType::f16})
    if (s == dtype_name(t)) return out = t, true;
  return false;
}
bool parse_algorithm(std::string_view s, Algorithm& out) {
  for (Algorithm a : {Algorithm::flash, Algorithm::chunked, Algorithm::naive, Algorithm::sequential,
                      Algorithm::automatic})
    if (s == algorithm_name(a)) return out = a, true;
  return false;
}
// A SIMD target name this build runs on this CPU (memattn::supported_targets()).
bool parse_target(std::string_view s, std::string& out) {
  for (const std::string& t : supported_targets())
    if (s == t) return out = t, true;
  return false;
}
bool parse_direction(std::string_view s, Direction& out) {
  for (Direction d : {Direction::forward, Direction::backward})
    if (s == direction_name(d)) return out = d, true;
  return false;
}

// A list option: its first use replaces the default, later uses and commas add values.
template <typename T>
void add_values(const std::string& opt, std::string_view text, std::vector<T>& list, bool& seen,
                const char* expected, bool (*parse)(std::string_view, T&)) {
  if (!seen) list.clear(), seen = true;
  while (true) {
    const size_t comma = text.find(',');
    const std::string_view piece = text.substr(0, comma);
    T value{};
    if (!parse(piece, value))
      throw UsageError{opt + ": '" + std::string(piece) + "' is not " + expected};
    if (std::find(list.begin(), list.end(), value) == list.end()) list.push_back(value);
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
  }
}

// The list a positive-integer option fills; nullptr for other options.
std::vector<int64_t>* count_list(Config& c, const std::string& opt) {
  if (opt == "--n") return &c.n;
  if (opt == "--d") return &c.d;
  if (opt == "--batch") return &c.batch;
  if (opt == "--heads") return &c.heads;
  if (opt == "--threads") return &c.threads;
  return nullptr;
}

}  // namespace

Config parse_bench_options(int argc, char** argv) {
  Config c;
  bool quick = false, backward = false;
  std::map<std::string, bool> seen;
  for (int i = 0; i < argc; ++i) {
    std::string opt = argv[i], inline_value;
    const size_t eq = opt.find('=');
    const bool has_inline = opt.rfind("--", 0) == 0 && eq != std::string::npos;
    if (has_inline) inline_value = opt.substr(eq + 1), opt.resize(eq);
    const auto value = [&]() -> std::string {
      if (has_inline) return inline_value;
      if (i + 1 >= argc) throw UsageError{opt + ": needs a value"};
      return argv[++i];
    };
    const auto flag = [&](bool& f) {
      if (has_inline) throw UsageError{opt + ": takes no value, got '" + inline_value + "'"};
      f = true;
    };
    if (opt == "--json") flag(c.json);
    else if (opt == "--quick") flag(quick);
    else if (opt == "--peak") flag(c.peak_only);
    else if (opt == "--backward") flag(backward);
    else if (std::vector<int64_t>* counts = count_list(c, opt))
      add_values(opt, value(), *counts, seen[opt], "a positive integer", parse_count);
    else if (opt == "--causal") add_values(opt, value(), c.causal, seen[opt], "0 or 1", parse_flag01);
    else if (opt == "--dtype") add_values(opt, value(), c.dtypes, seen[opt], "f32, bf16 or f16", parse_dtype);
    else if (opt == "--algorithm")
      add_values(opt, value(), c.algorithms, seen[opt],
                 "flash, chunked, naive, sequential or automatic", parse_algorithm);
    else if (opt == "--direction")
      add_values(opt, value(), c.directions, seen[opt], "forward or backward", parse_direction);
    else if (opt == "--reps") {
      const std::string v = value();
      if (!parse_count(v, c.reps)) throw UsageError{opt + ": '" + v + "' is not a positive integer"};
    } else if (opt == "--min-seconds") {
      const std::string v = value();
      char* end = nullptr;
      c.min_seconds = std::strtod(v.c_str(), &end);
      if (v.empty() || *end || !(c.min_seconds >= 0 && c.min_seconds < 3600))
        throw UsageError{opt + ": '" + v + "' is not a number of seconds in [0, 3600)"};
    } else if (opt == "--target") {
      std::string expected = "one of this CPU's targets:";
      for (const std::string& t : supported_targets()) expected += " " + t;
      add_values(opt, value(), c.targets, seen[opt], expected.c_str(), parse_target);
    }
    else throw UsageError{"unknown option '" + opt + "' (see memattn bench --help)"};
  }
  if (quick && !seen["--n"]) c.n = {1024, 4096};
  try {
    selected_target(Options{});  // an unknown MEMATTN_TARGET fails here, not after the peak loops
  } catch (const Error& e) {
    throw UsageError{e.what()};
  }
  const auto& dirs = c.directions;
  if (backward && std::find(dirs.begin(), dirs.end(), Direction::backward) == dirs.end())
    c.directions.push_back(Direction::backward);
  return c;
}

int bench_usage(FILE* to) {
  std::fprintf(to,
      "usage: memattn bench [options]   attention GFLOP/s against the peak measured in the same run\n"
      "  --n N          sequence lengths (default 512,1024,2048,4096,8192,16384)\n"
      "  --d D          head dims (default 64,128)\n"
      "  --heads H      (default 8)           --batch B    (default 1)\n"
      "  --dtype T      f32, bf16, f16 (default f32,bf16)\n"
      "  --causal 0|1   (default 0,1)         --threads T  (default 1,2)\n"
      "  --algorithm A  flash (default), chunked, naive, sequential, automatic\n"
      "  --direction D  forward (default), backward;  --backward adds backward\n"
      "  --reps R       timed calls per point (default: enough for --min-seconds S, default 0.3, >= 3)\n"
      "  --target NAME  SIMD targets to compare (default: MEMATTN_TARGET, else the best this CPU runs)\n"
      "  --quick        n = 1024,4096 only (unless --n is given)\n"
      "  --json         a JSON list, one object per run    --peak  only the measured peaks\n"
      "List options take comma-separated values and may repeat. The full default sweep (96 runs) can\n"
      "take an hour or more on a slow kernel: the estimate and progress go to stderr.\n");
  return to == stdout ? 0 : 2;
}

}  // namespace memattn::tool
