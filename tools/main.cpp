// The memattn command-line tool: `memattn demo`, `bench`, `run` and `merge`, parsed with CLI11.
#include <cmath>
#include <cstdio>
#include <exception>
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>

#include "bench.hpp"
#include "cli_values.hpp"
#include "demo.hpp"
#include "memattn/error.hpp"
#include "merge_cmd.hpp"
#include "run.hpp"

using namespace memattn::tool;

int main(int argc, char** argv) {
  CLI::App app("memattn " MEMATTN_VERSION ": exact softmax attention whose extra memory does not grow with n^2",
               "memattn");
  app.set_version_flag("--version", "memattn " MEMATTN_VERSION);
  app.require_subcommand(1);

  DemoConfig demo;
  CLI::App* demo_cmd = app.add_subcommand(
      "demo", "The paper's Tables 2 and 3 measured here: memory, time and accuracy of naive, chunked, flash");
  demo_cmd->footer("Forward (naive, chunked, flash) for n = 2^8 .. 2^14 and beyond while the budget lasts, then\n"
                   "forward + backward (naive, flash). About a minute. Example: memattn demo --json");
  demo_cmd->add_flag("--json", demo.json, "a JSON list, one object per row, instead of the tables");
  demo_cmd->add_option("--max-seconds", demo.max_seconds, "time budget for the sizes past n = 2^14")
      ->check(number_in(0, HUGE_VAL, "a number of seconds >= 0"))->type_name("S")->capture_default_str();
  Config bench;
  CLI::App* bench_cmd = add_bench_command(app, bench);
  RunConfig run;
  CLI::App* run_cmd = add_run_command(app, run);
  MergeConfig merge;
  CLI::App* merge_cmd = add_merge_command(app, merge);
  std::string help_topic;
  CLI::App* help_cmd = app.add_subcommand("help", "This text, or a command's help (memattn help run)");
  help_cmd->add_option("command", help_topic, "the command to describe")
      ->check(CLI::IsMember({"demo", "bench", "run", "merge"}));
  app.footer("Each command has its own --help, e.g. memattn run --help. Usage errors exit with 2.");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    if (app.get_subcommands().empty() && argc > 1) {  // CLI11 would only say a command is required
      std::fprintf(stderr, "memattn: unknown command or option '%s' (expected demo, bench, run, merge or help)\n", argv[1]);
      return 2;
    }
    std::string command = "memattn";
    for (const CLI::App* sub : app.get_subcommands()) command += " " + sub->get_name();
    std::fprintf(stderr, "%s: %s\nRun '%s --help' for the options.\n", command.c_str(), e.what(), command.c_str());
    return 2;
  }

  try {
    if (*demo_cmd) return demo_main(demo);
    if (*bench_cmd) return bench_main(bench);
    if (*run_cmd) return run_main(run);
    if (*merge_cmd) return merge_main(merge);
    const CLI::App* topic = help_topic.empty() ? &app : app.get_subcommand(help_topic);
    std::cout << app.get_formatter()->make_help(topic, topic == &app ? "memattn" : "memattn " + help_topic,
                                                 CLI::AppFormatMode::Normal);
    return 0;
  } catch (const memattn::Error& e) {
    std::fprintf(stderr, "memattn: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {  // e.g. std::bad_alloc for the demo's own buffers
    std::fprintf(stderr, "memattn: %s\n", e.what());
    return 1;
  }
}
