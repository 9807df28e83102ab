// `memattn bench`: attention throughput sweep against the machine's peak measured in the same run.
#pragma once

namespace memattn::tool {

// argv excludes "memattn bench". Returns the process exit code (2: bad option or value).
int bench_main(int argc, char** argv);

}  // namespace memattn::tool
