// `memattn run`: attention on .npy files, forward and optionally backward.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "memattn/types.hpp"

namespace CLI {
class App;
}

namespace memattn::tool {

struct RunConfig {
  std::string q, k, v, mask, bias;  // input .npy paths; mask, bias: "" when not given
  std::string alibi_slopes, sinks;  // f32 score-modifier inputs; "" when not given
  // Varlen batches: i32/i64 offsets .npy paths (both or neither) and the longest lengths (0: computed).
  std::string cu_seqlens_q, cu_seqlens_k;
  int64_t max_seqlen_q = 0, max_seqlen_k = 0;
  // A KV cache: seqlens_k given makes k and v caches for attention_with_kvcache, paged when
  // block_table is given too; "" when not given.
  std::string seqlens_k, block_table;
  std::string out, lse;             // output .npy paths; lse: "" when not wanted
  bool backward = false;
  std::string dout, dq, dk, dv;  // with backward: dout input, gradient outputs
  bool causal = false;
  Align align = Align::top_left;
  int64_t window_left = -1, window_right = -1;
  int64_t diagonal_offset = 0;  // added to the alignment's diagonal
  std::optional<double> scale;  // used exactly with f64 inputs, rounded to float otherwise
  double softcap = 0;           // > 0: scores capped as softcap * tanh(s / softcap)
  Algorithm algorithm = Algorithm::automatic;
  int threads = 0;  // 0: all that OpenMP offers
  bool mpi = false;                     // ring attention across the ranks of mpirun (run_mpi.cpp)
  std::string placement = "contiguous";  // with mpi: contiguous or zigzag
};

// The attention options of the command line (the tensors they point to are the caller's to set).
Options attention_options(const RunConfig& c);

// Adds the `run` subcommand to `app`; parsing fills `c` (bad values are CLI11 errors naming the
// option, the value and what was expected).
CLI::App* add_run_command(CLI::App& app, RunConfig& c);

// Runs it and returns the exit code: 0, 1 (an unusable file, or the library refused the call), 2 (an
// output path is an input or another output). On any error no output file exists afterwards.
int run_main(const RunConfig& c);

// `run --mpi`: every rank reads its slices, memattn::dist::ring_forward, rank 0 writes the
// outputs. Exit codes as run_main's, agreed by every rank; 1 when built without MPI.
int run_mpi_main(const RunConfig& c);

class NpyArray;
// Throws NpyError unless dout has q's dtype and out's shape.
void check_dout(const NpyArray& dout, const NpyArray& q, const std::vector<int64_t>& out_shape);

// The first output that names an input or an earlier output, as a message; "" when there is none.
std::string coinciding_paths(const RunConfig& c);

}  // namespace memattn::tool
