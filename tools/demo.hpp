// `memattn demo`: the paper's Tables 2 and 3 measured on this machine.
#pragma once

namespace memattn::tool {

struct DemoConfig {
  bool json = false;         // a JSON list instead of the tables
  double max_seconds = 30;   // time budget for the sizes past 2^14
};

int demo_main(const DemoConfig& config);

}  // namespace memattn::tool
