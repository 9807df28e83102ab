// libFuzzer harness of the C++ API: forward and backward on decoded shapes, strides, dtypes, options, masks, biases and values.
#include "fuzz_checks.hpp"

namespace {
std::vector<std::string> g_targets;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  g_targets = fuzz::start();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  fuzz::Problem p;
  fuzz::decode(in, p, g_targets);
  fuzz::CppFrontDoor door;
  fuzz::exercise(door, p);
  return 0;
}
