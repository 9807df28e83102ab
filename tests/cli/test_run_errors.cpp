// `memattn run` on bad files and bad requests: the message says what and where, and no output remains.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cli_support.hpp"
#include "memattn/memattn.hpp"

namespace memattn::cli_test {
namespace {

const std::vector<std::string> kInputs{"k.npy", "q.npy", "v.npy"};

// A directory with valid q [2,5,4,8], k [2,7,2,8], v [2,7,2,6] (f32), where each test breaks one thing.
class CliRunErrors : public testing::Test {
 protected:
  void SetUp() override {
    write_npy(dir.path("q.npy"), q);
    write_npy(dir.path("k.npy"), k);
    write_npy(dir.path("v.npy"), v);
  }
  // Runs `run --q q.npy --k k.npy --v v.npy -o out.npy` plus `extra`; expects the exit
  // code, each of `parts` in stderr, and the directory to hold exactly `files` afterwards.
  void expect_error(const std::vector<std::string>& extra, int exit_code, const std::vector<std::string>& parts,
                    std::vector<std::string> files = kInputs) {
    std::vector<std::string> args{"run", "--q", "q.npy", "--k", "k.npy", "--v", "v.npy", "-o", "out.npy"};
    args.insert(args.end(), extra.begin(), extra.end());
    expect_failure(dir, args, exit_code, parts, std::move(files));
  }
  void write_q(const std::string& bytes) { write_file(dir.path("q.npy"), bytes); }

  ScratchDir dir;
  Array q = Array::random(DType::f32, {2, 5, 4, 8}, 1), k = Array::random(DType::f32, {2, 7, 2, 8}, 2);
  Array v = Array::random(DType::f32, {2, 7, 2, 6}, 3);
};

TEST_F(CliRunErrors, MissingFile) {
  std::filesystem::remove(dir.path("k.npy"));
  expect_error({}, 1, {"k.npy: cannot open: No such file or directory"}, {"q.npy", "v.npy"});
}

TEST_F(CliRunErrors, TruncatedFile) {
  const std::string whole = read_file(dir.path("q.npy"));
  write_q(whole.substr(0, whole.size() - 100));
  expect_error({}, 1, {"q.npy: truncated", "needs 1280 bytes of data", "found 1180"});
}

TEST_F(CliRunErrors, TrailingBytes) {
  write_q(read_file(dir.path("q.npy")) + "xyz");
  expect_error({}, 1, {"q.npy: trailing bytes", "needs 1280 bytes", "found 1283"});
}

TEST_F(CliRunErrors, BadMagic) {
  std::string bytes = read_file(dir.path("q.npy"));
  bytes[5] = 'X';
  write_q(bytes);
  expect_error({}, 1, {"q.npy: not a .npy file: expected the magic string \\x93NUMPY, found '\\x93NUMPX'"});
}

TEST_F(CliRunErrors, EmptyFile) {
  write_q("");
  expect_error({}, 1, {"q.npy: not a .npy file", "0-byte file"});
}

TEST_F(CliRunErrors, UnsupportedVersion) {
  std::string bytes = read_file(dir.path("q.npy"));
  bytes[6] = 4;
  write_q(bytes);
  expect_error({}, 1, {"q.npy: unsupported .npy format version 4.0 (expected 1.0, 2.0 or 3.0)"});
}

TEST_F(CliRunErrors, HeaderLengthPastTheEnd) {
  write_q(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 5, 4, 8), }", 0).substr(0, 40));
  expect_error({}, 1, {"q.npy: truncated .npy header: the header length says 118 bytes, the file has 30"});
}

struct MalformedHeader {
  std::string dict, message;
};

TEST_F(CliRunErrors, MalformedHeaders) {
  const MalformedHeader cases[] = {
      {"{'descr': '<f4', 'fortran_order': False}", "no 'shape' key"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 5, 4 8), }", "expected ','"},
      {"{'descr' '<f4', 'fortran_order': False, 'shape': (2, 5, 4, 8), }", "at character 9: expected ':', found '''"},
      {"{'descr': '<f4, 'fortran_order': False, 'shape': (2, 5, 4, 8), }", "expected ',', found 'f'"},
      {"{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2, 5, 4, 8), }", "expected True or False"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 5, 4, 8), 'extra': 1}", "unexpected key 'extra'"},
      {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 5, 4, 8), }", "key 'descr' given twice"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (-2, 5, 4, 8), }", "expected a non-negative integer"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 5, 4, 8), } x", "text after the closing '}'"},
      {"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", "a structured dtype"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (5), }", "a one-element shape needs a trailing comma"},
      {"['descr', '<f4']", "expected '{'"},
  };
  for (const MalformedHeader& m : cases) {
    SCOPED_TRACE(m.dict);
    write_q(npy_bytes(m.dict, 1280));
    expect_error({}, 1, {"q.npy: malformed .npy header", m.message});
  }
}

TEST_F(CliRunErrors, UnsupportedDtype) {
  write_q(npy_bytes("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 5, 4, 8), }", 1280));
  expect_error({}, 1, {"q.npy: dtype '<i4' (int32) is not supported here; expected '<f4' (f32), '<f2' (f16) or '<f8' (f64)"});
  write_q(npy_bytes("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 5, 4, 8), }", 1280));
  expect_error({}, 1, {"q.npy: dtype '>f4' (float32, big-endian) is not supported"});
  // An item size whose bit count overflows int is named as given, without a bit count (fuzzing).
  write_q(npy_bytes("{'descr': '<i999999999', 'fortran_order': False, 'shape': (2, 5, 4, 8), }", 1280));
  expect_error({}, 1, {"q.npy: dtype '<i999999999' is not supported here"});
}

TEST_F(CliRunErrors, MaskOfFloats) {
  write_npy(dir.path("m.npy"), Array::random(DType::f32, {1, 1, 5, 7}, 4));
  expect_error({"--mask", "m.npy"}, 1, {"m.npy: dtype '<f4' (float32) is not supported here; expected '|b1' or '|u1'"},
               {"k.npy", "m.npy", "q.npy", "v.npy"});
}

TEST_F(CliRunErrors, WrongRank) {
  write_npy(dir.path("q.npy"), Array::random(DType::f32, {2, 5, 32}, 1));
  expect_error({}, 1, {"q.npy: expected a 4-D array [batch, seq_q, heads_q, dim], found shape (2, 5, 32) (3-D)"});
}

TEST_F(CliRunErrors, MismatchedShapesGiveTheLibrarysMessage) {
  Array k6 = Array::random(DType::f32, {2, 7, 2, 6}, 2);
  write_npy(dir.path("k.npy"), k6);
  std::string library_message;
  try {
    workspace_bytes(q.tensor(), k6.tensor(), v.tensor(), Options{});
  } catch (const Error& e) {
    library_message = e.what();
  }
  ASSERT_NE(library_message, "");
  expect_error({}, 1, {"memattn run: " + library_message + "\n"});
}

TEST_F(CliRunErrors, MaskNotBroadcastable) {
  write_npy(dir.path("m.npy"), Array::random(DType::u8, {1, 3, 5, 7}, 4), 1, true);
  expect_error({"--mask", "m.npy"}, 1, {"mask shape [1,3,5,7] not broadcastable to [B=2,H=4,Sq=5,Sk=7]"},
               {"k.npy", "m.npy", "q.npy", "v.npy"});
}

TEST_F(CliRunErrors, BadWindow) {
  for (const char* w : {"3", "1,-2", "a,b", "1,2,3", ""}) {
    SCOPED_TRACE(w);
    expect_error({"--window", w}, 2, {"memattn run: --window: '" + std::string(w) + "' is not L,R: two integers >= -1"});
  }
}

TEST_F(CliRunErrors, BadOptionValues) {
  expect_error({"--algorithm", "fast"}, 2, {"--algorithm: 'fast' is not flash, chunked, naive, sequential or auto"});
  expect_error({"--align", "middle"}, 2, {"--align: 'middle' is not top_left or bottom_right"});
  expect_error({"--threads", "0"}, 2, {"--threads: '0' is not a positive integer"});
  expect_error({"--scale", "inf"}, 2, {"--scale: 'inf' is not a finite number"});
  expect_error({"--dq", "dq.npy"}, 2, {"--dq requires --backward"});
  expect_error({"--backward", "--dout", "q.npy"}, 2, {"--backward requires --dq"});
}

TEST_F(CliRunErrors, OutputPathIsAnInput) {
  const std::string before = read_file(dir.path("q.npy"));
  const ToolResult r = run_tool({"run", "--q", "q.npy", "--k", "k.npy", "--v", "v.npy", "-o", "./q.npy"}, dir.dir());
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("-o ./q.npy is the input --q q.npy: refusing to overwrite an input"), std::string::npos) << r.err;
  EXPECT_EQ(read_file(dir.path("q.npy")), before);
  ::symlink("v.npy", dir.path("link.npy").c_str());
  expect_error({"--lse", "link.npy"}, 2, {"--lse link.npy is the input --v v.npy"}, {"k.npy", "link.npy", "q.npy", "v.npy"});
  expect_error({"--lse", "out.npy"}, 2, {"--lse out.npy and -o out.npy name the same file"}, {"k.npy", "link.npy", "q.npy", "v.npy"});
}

TEST_F(CliRunErrors, LibraryRefusesFlashForF64) {
  for (const char* name : {"q.npy", "k.npy", "v.npy"}) {
    Array a = Array::random(DType::f64, name[0] == 'q' ? q.shape : name[0] == 'k' ? k.shape : v.shape, 7);
    write_npy(dir.path(name), a);
  }
  expect_error({"--algorithm", "flash"}, 1, {"memattn run: algorithm: flash takes f32, bf16 or f16 inputs, got f64"});
}

TEST_F(CliRunErrors, BackwardRefusedBeforeTheForwardRuns) {
  write_npy(dir.path("do.npy"), Array::random(DType::f32, {2, 5, 4, 6}, 5));
  expect_error({"--algorithm", "chunked", "--backward", "--dout", "do.npy", "--dq", "dq.npy", "--dk", "dk.npy", "--dv", "dv.npy"},
               1, {"algorithm: backward supports naive and flash"}, {"do.npy", "k.npy", "q.npy", "v.npy"});
}

TEST_F(CliRunErrors, DoutUnlikeOut) {
  write_npy(dir.path("do.npy"), Array::random(DType::f32, {1, 5, 4, 6}, 5));
  expect_error({"--backward", "--dout", "do.npy", "--dq", "dq.npy", "--dk", "dk.npy", "--dv", "dv.npy"}, 1,
               {"do.npy: shape (1, 5, 4, 6) does not match out's shape (2, 5, 4, 6)"}, {"do.npy", "k.npy", "q.npy", "v.npy"});
  write_npy(dir.path("do.npy"), Array::random(DType::f16, {2, 5, 4, 6}, 5));
  expect_error({"--backward", "--dout", "do.npy", "--dq", "dq.npy", "--dk", "dk.npy", "--dv", "dv.npy"}, 1,
               {"do.npy: dtype '<f2' does not match q's '<f4'"}, {"do.npy", "k.npy", "q.npy", "v.npy"});
}

TEST_F(CliRunErrors, FailedRenameRemovesEveryOutput) {
  // out.npy is renamed first; lse.npy names a directory, so its rename fails after out.npy exists.
  ASSERT_EQ(::mkdir(dir.path("lse.npy").c_str(), 0755), 0);
  expect_error({"--lse", "lse.npy"}, 1, {"lse.npy: cannot rename lse.npy.tmp-", "to it: Is a directory"},
               {"k.npy", "lse.npy", "q.npy", "v.npy"});
}

TEST_F(CliRunErrors, MissingOutputDirectory) {
  const ToolResult r = run_tool({"run", "--q", "q.npy", "--k", "k.npy", "--v", "v.npy", "-o", "no/out.npy"}, dir.dir());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("no/out.npy: cannot create a temporary file beside it: No such file or directory"),
            std::string::npos) << r.err;
  EXPECT_EQ(dir.names(), kInputs);
}

// SIGTERM (or SIGINT, SIGHUP) while the computation runs removes the temporaries before the process ends.
TEST_F(CliRunErrors, TerminationRemovesTemporaries) {
  for (const char* name : {"q.npy", "k.npy", "v.npy"}) write_npy(dir.path(name), Array::random(DType::f32, {1, 4096, 4, 64}, 8));
  const int pid = start_tool({"run", "--q", "q.npy", "--k", "k.npy", "--v", "v.npy", "--algorithm", "naive", "-o", "out.npy"},
                             dir.dir());
  const auto has_temporary = [&] {
    for (const std::string& n : dir.names())
      if (n.find(".tmp-") != std::string::npos) return true;
    return false;
  };
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!has_temporary() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  ASSERT_TRUE(has_temporary()) << "the run made no temporary file";
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM) << "status " << status;
  EXPECT_EQ(dir.names(), kInputs);
}

}  // namespace
}  // namespace memattn::cli_test
