// The machine's measured memory read bandwidth: a STREAM-like read of a buffer far larger than the
// caches, one slice per thread, best of several runs.
#pragma once

namespace memattn::tool {

// GB/s (1e9 bytes per second) that `threads` threads reading at once sustain.
double measure_read_gbps(int threads);

}  // namespace memattn::tool
