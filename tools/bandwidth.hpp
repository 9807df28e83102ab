// The machine's measured memory read bandwidth: a STREAM-like read of a buffer far larger than the
// caches, one slice per thread, best of several runs.
#pragma once

#include <cstddef>
#include <cstdint>

namespace memattn::tool {

// GB/s (1e9 bytes per second) that `threads` threads reading at once sustain.
double measure_read_gbps(int threads);

// GB/s of the same read in the order the decode items walk a cache of `kv_heads` rows of
// `row_bytes` per key (a BSHD cache): chunks of `chunk` keys, within a chunk one head's rows after
// the other. Each head's rows lie a whole key's row apart, so this is the most a kernel reading the
// cache in that order can get; measured next to measure_read_gbps to show what the order costs.
double measure_head_walk_gbps(int threads, int64_t kv_heads, size_t row_bytes, int64_t chunk);

}  // namespace memattn::tool
