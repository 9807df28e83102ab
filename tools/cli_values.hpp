// CLI11 validators shared by the subcommands: each names the value it rejects and what it expected.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>

namespace memattn::tool {

// Digits only, > 0, at most 12 of them (so that it fits in int64 with room to multiply).
CLI::Validator positive_integer();

// A number x with lo <= x < hi (inf bounds allowed); `expected` completes "'x' is not ...".
CLI::Validator number_in(double lo, double hi, const std::string& expected);

// One of the names; the option receives the paired text instead (an enum's integer value, which
// CLI11 converts to the enum, or the name itself for string options).
CLI::Validator one_of(std::vector<std::pair<std::string, std::string>> names, const std::string& expected);

// memattn::Algorithm by name: flash, chunked, naive, sequential, auto (or automatic).
CLI::Validator algorithm_names();

// The name -> integer pair of an enum value for one_of().
template <typename Enum>
std::pair<std::string, std::string> enum_name(std::string name, Enum value) {
  return {std::move(name), std::to_string(int(value))};
}

}  // namespace memattn::tool
