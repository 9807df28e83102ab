// `memattn run --mpi` under mpirun (1 to 3 ranks): its files against the single-process `memattn run`.
#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include "cli_support.hpp"
#include "npy.hpp"
#include "support.hpp"

namespace {
using namespace memattn;
using cli_test::Array;

std::vector<double> values(const std::string& path) {
  const tool::NpyArray a = tool::read_npy(path, {{DType::f32, DType::f64}, -1, ""});
  const Tensor t = a.tensor();
  std::vector<double> v(size_t(t.numel()));
  for (size_t i = 0; i < v.size(); ++i)
    v[i] = t.dtype == DType::f64 ? static_cast<const double*>(a.data())[i] : static_cast<const float*>(a.data())[i];
  return v;
}

// mpiexec, its flags (space-separated, the rank-count flag last), the rank count, the tool.
std::vector<std::string> mpirun(int ranks) {
  std::vector<std::string> a{MEMATTN_MPIEXEC};
  std::istringstream flags(MEMATTN_MPIEXEC_FLAGS);
  for (std::string f; flags >> f;) a.push_back(f);
  a.insert(a.end(), {std::to_string(ranks), MEMATTN_TOOL_PATH});
  return a;
}

const std::vector<std::string> kOneThread{"OMP_NUM_THREADS=1"};

struct MpiCase {
  int ranks;
  const char* placement;
  bool causal;
  const char* align;
  int64_t seq_q, seq_k, heads_q, heads_kv;
  bool fortran_v;  // v in Fortran order: the element-wise slice reader
  bool backward;   // also dq, dk, dv
  const char* window = nullptr;  // --window L,R
  bool mask = false;             // --mask of a row per query (cut per rank)
};

void PrintTo(const MpiCase& c, std::ostream* os) {
  *os << "np" << c.ranks << " " << c.placement << (c.causal ? " causal " : " ") << c.align << " seq " << c.seq_q
      << "/" << c.seq_k << " heads " << c.heads_q << "/" << c.heads_kv
      << (c.fortran_v ? " fortran v" : "") << (c.backward ? " backward" : "")
      << (c.window ? std::string(" window ") + c.window : "") << (c.mask ? " mask" : "");
}

class RunMpi : public testing::TestWithParam<MpiCase> {};

// out and lse within TESTPLAN's rule: the ring's error against the f64 run at most twice the
// single-process f32 run's (ring attention merges per-block partials, so not bitwise).
TEST_P(RunMpi, MatchesSingleProcessRun) {
  const MpiCase& p = GetParam();
  cli_test::ScratchDir dir;
  const std::vector<int64_t> qs{2, p.seq_q, p.heads_q, 16}, ks{2, p.seq_k, p.heads_kv, 16};
  for (DType dt : {DType::f32, DType::f64}) {
    const std::string suffix = dt == DType::f32 ? "32" : "64";
    cli_test::write_npy(dir.path("q" + suffix + ".npy"), Array::random(dt, qs, 1));
    cli_test::write_npy(dir.path("k" + suffix + ".npy"), Array::random(dt, ks, 2));
    cli_test::write_npy(dir.path("v" + suffix + ".npy"), Array::random(dt, ks, 3, p.fortran_v));
    cli_test::write_npy(dir.path("dout" + suffix + ".npy"), Array::random(dt, qs, 4));
  }
  if (p.mask) cli_test::write_npy(dir.path("mask.npy"), Array::random(DType::u8, {2, 1, p.seq_q, p.seq_k}, 5));
  const auto args = [&](const std::string& suffix, const std::string& out) {
    std::vector<std::string> a{"run", "--q", "q" + suffix + ".npy", "--k", "k" + suffix + ".npy",
                               "--v", "v" + suffix + ".npy", "-o", out + ".npy", "--lse", out + "_lse.npy",
                               "--align", p.align};
    if (p.causal) a.push_back("--causal");
    if (p.window) a.insert(a.end(), {"--window", p.window});
    if (p.mask) a.insert(a.end(), {"--mask", "mask.npy"});
    if (p.backward)
      a.insert(a.end(), {"--backward", "--dout", "dout" + suffix + ".npy", "--dq", out + "_dq.npy", "--dk",
                         out + "_dk.npy", "--dv", out + "_dv.npy"});
    return a;
  };
  std::vector<std::string> ref_args = args("64", "ref");
  ref_args.insert(ref_args.end(), {"--algorithm", "naive"});
  ASSERT_EQ(cli_test::run_tool(ref_args, dir.dir()).exit_code, 0);
  ASSERT_EQ(cli_test::run_tool(args("32", "base"), dir.dir()).exit_code, 0);
  std::vector<std::string> ring = mpirun(p.ranks), ring_args = args("32", "ring");
  ring.insert(ring.end(), ring_args.begin(), ring_args.end());
  ring.insert(ring.end(), {"--mpi", "--placement", p.placement});
  const cli_test::ToolResult r = cli_test::run_program(ring, dir.dir(), kOneThread);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // k = 2 forward, 3 for the gradients (as tests/dist's library tests).
  for (const char* part : {"", "_lse", "_dq", "_dk", "_dv"}) {
    const bool gradient = part[1] == 'd';
    if (gradient && !p.backward) continue;
    const std::vector<double> got = values(dir.path(std::string("ring") + part + ".npy"));
    EXPECT_EQ(mt::accuracy_failure(got, values(dir.path(std::string("ref") + part + ".npy")),
                                   values(dir.path(std::string("base") + part + ".npy")), DType::f32,
                                   gradient ? 3.0 : 2.0),
              "")
        << "output ring" << part;
  }
}

// Lengths not divisible by the rank count, GQA, cross-attention under both alignments, backward.
INSTANTIATE_TEST_SUITE_P(
    Cases, RunMpi,
    testing::Values(MpiCase{1, "contiguous", false, "top_left", 9, 9, 2, 2, false, false},
                    MpiCase{2, "contiguous", false, "top_left", 13, 13, 4, 2, false, false},
                    MpiCase{2, "zigzag", true, "top_left", 13, 13, 2, 1, false, true},
                    MpiCase{3, "contiguous", true, "top_left", 17, 17, 4, 2, false, false},
                    MpiCase{3, "zigzag", true, "bottom_right", 11, 20, 2, 2, false, true},
                    MpiCase{3, "zigzag", false, "top_left", 10, 7, 3, 1, true, false},
                    MpiCase{3, "zigzag", true, "bottom_right", 13, 16, 2, 2, false, true, "5,-1", true},
                    MpiCase{2, "contiguous", false, "top_left", 11, 11, 2, 1, false, false, "2,3", true}));

// An option ring attention refuses (a diagonal beyond its bounds), and a missing input: every rank exits 1, one message, no output.
TEST(RunMpiErrors, EveryRankFailsWithOneMessage) {
  cli_test::ScratchDir dir;
  cli_test::write_npy(dir.path("q.npy"), Array::random(DType::f32, {1, 8, 2, 8}, 1));
  const struct {
    std::vector<std::string> extra;
    std::string message;
  } cases[] = {{{"--diagonal-offset", "4611686018427387905"},
                "options.attention.diagonal_offset 4611686018427387905 with global seq_q 8 and seq_k 8 puts the "
                "diagonal too far"},
               {{}, "missing.npy"}};
  for (const auto& c : cases) {
    std::vector<std::string> a = mpirun(3);
    a.insert(a.end(), {"run", "--mpi", "--q", "q.npy", "--k", c.extra.empty() ? "missing.npy" : "q.npy", "--v",
                       "q.npy", "-o", "out.npy"});
    a.insert(a.end(), c.extra.begin(), c.extra.end());
    const cli_test::ToolResult r = cli_test::run_program(a, dir.dir(), kOneThread);
    EXPECT_EQ(r.exit_code, 1) << r.err;
    const size_t at = r.err.find(c.message);
    EXPECT_NE(at, std::string::npos) << r.err;
    EXPECT_EQ(r.err.find(c.message, at + 1), std::string::npos) << "printed more than once: " << r.err;
    EXPECT_EQ(r.err.find("memattn run: rank 0: "), 0u) << r.err;
    EXPECT_EQ(dir.names(), std::vector<std::string>{"q.npy"});
  }
}

}  // namespace
