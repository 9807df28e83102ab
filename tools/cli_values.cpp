// CLI11 validators shared by the subcommands: positive integers, bounded numbers and names.
#include "cli_values.hpp"

#include <cmath>
#include <cstdlib>

#include "memattn/types.hpp"

namespace memattn::tool {

CLI::Validator positive_integer() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        const bool digits = !s.empty() && s.size() <= 12 && s.find_first_not_of("0123456789") == std::string::npos;
        if (digits && std::stoll(s) > 0) return "";
        return "'" + s + "' is not a positive integer";
      },
      "", "positive integer");
}

CLI::Validator number_in(double lo, double hi, const std::string& expected) {
  return CLI::Validator(
      [lo, hi, expected](std::string& s) -> std::string {
        char* end = nullptr;
        const double x = std::strtod(s.c_str(), &end);
        if (!s.empty() && *end == '\0' && std::isfinite(x) && x >= lo && x < hi) return "";
        return "'" + s + "' is not " + expected;
      },
      "", "number");
}

CLI::Validator one_of(std::vector<std::pair<std::string, std::string>> names, const std::string& expected) {
  return CLI::Validator(
      [names, expected](std::string& s) -> std::string {
        for (const auto& [name, value] : names)
          if (s == name) return s = value, "";
        return "'" + s + "' is not " + expected;
      },
      "", "one of");
}

CLI::Validator algorithm_names() {
  return one_of({enum_name("flash", Algorithm::flash), enum_name("chunked", Algorithm::chunked),
                 enum_name("naive", Algorithm::naive), enum_name("sequential", Algorithm::sequential),
                 enum_name("auto", Algorithm::automatic), enum_name("automatic", Algorithm::automatic)},
                "flash, chunked, naive, sequential or auto");
}

}  // namespace memattn::tool
