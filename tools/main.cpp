// The memattn command-line tool: `memattn demo`, `memattn bench` and `memattn help`.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "bench.hpp"
#include "demo.hpp"
#include "memattn/error.hpp"

static int usage(FILE* to) {
  std::fprintf(to,
               "usage: memattn <command> [options]\n"
               "  demo [--json] [--max-seconds S]  the paper's Tables 2 and 3 on this machine: extra\n"
               "                                   memory, time and max difference to naive of the\n"
               "                                   forward (naive, chunked, flash) and backward\n"
               "  bench [--quick] [--json] [--peak] [options]  attention GFLOP/s against the machine's\n"
               "                                   peak measured in the same run (bench --help)\n"
               "  help                             this text\n");
  return to == stdout ? 0 : 2;
}

int main(int argc, char** argv) {
  if (argc < 2) return usage(stderr);
  const std::string cmd = argv[1];
  try {
    if (cmd == "demo") return memattn::tool::demo_main(argc - 2, argv + 2);
    if (cmd == "bench") return memattn::tool::bench_main(argc - 2, argv + 2);
    if (cmd == "help" || cmd == "--help" || cmd == "-h") return usage(stdout);
  } catch (const memattn::Error& e) {
    std::fprintf(stderr, "memattn: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {  // e.g. std::bad_alloc for the demo's own buffers
    std::fprintf(stderr, "memattn: %s: %s\n", cmd.c_str(), e.what());
    return 1;
  }
  std::fprintf(stderr, "memattn: unknown command '%s'\n", cmd.c_str());
  return usage(stderr);
}
