// `memattn merge` writes bitwise what memattn::merge gives in this process, and refuses bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "cli_support.hpp"
#include "memattn/memattn.hpp"

namespace memattn::cli_test {
namespace {

constexpr int64_t B = 2, S = 5, H = 3, Dv = 4;

// Three parts of f32 [B, S, H, Dv] with lse [B, H, S]; part 1's first row is empty (-inf, NaN
// out: never read) and row 1 of every part is empty (merged: out +0, lse -inf).
struct Parts {
  std::vector<Array> outs, lses;
  Parts() {
    for (uint32_t p = 0; p < 3; ++p) {
      outs.push_back(Array::random(DType::f32, {B, S, H, Dv}, 10 + p));
      lses.push_back(Array::random(DType::f32, {B, H, S}, 20 + p));
      auto* lse = reinterpret_cast<float*>(lses.back().bytes.data());
      for (int64_t b = 0; b < B; ++b)
        for (int64_t h = 0; h < H; ++h) lse[(b * H + h) * S + 1] = -std::numeric_limits<float>::infinity();
    }
    reinterpret_cast<float*>(lses[1].bytes.data())[0] = -std::numeric_limits<float>::infinity();
    for (int64_t e = 0; e < Dv; ++e) reinterpret_cast<float*>(outs[1].bytes.data())[e] = std::nanf("");
  }
  std::vector<std::string> args(const ScratchDir& dir) const {
    std::vector<std::string> a{"merge"};
    for (size_t p = 0; p < outs.size(); ++p) {
      const std::string o = dir.path("out" + std::to_string(p) + ".npy");
      const std::string l = dir.path("lse" + std::to_string(p) + ".npy");
      write_npy(o, outs[p]);
      write_npy(l, lses[p]);
      a.insert(a.end(), {"--out", o, "--part-lse", l});
    }
    return a;
  }
};

TEST(CliMerge, BitwiseEqualToDirectMerge) {
  ScratchDir dir;
  Parts parts;
  std::vector<std::string> args = parts.args(dir);
  args.insert(args.end(), {"-o", dir.path("merged.npy"), "--lse", dir.path("merged_lse.npy")});
  const ToolResult r = run_tool(args);
  ASSERT_EQ(r.exit_code, 0) << r.err;

  std::vector<Tensor> outs, lses;
  for (size_t p = 0; p < parts.outs.size(); ++p)
    outs.push_back(parts.outs[p].tensor()), lses.push_back(parts.lses[p].tensor());
  Array want = Array::zeros(DType::f32, {B, S, H, Dv}), want_lse = Array::zeros(DType::f32, {B, H, S});
  const Tensor lse_view = want_lse.tensor();
  merge(outs, lses, want.tensor(), &lse_view);
  // The tool's files end with their payload (the .npy header before it is the reader's concern).
  const std::string got = read_file(dir.path("merged.npy")), got_lse = read_file(dir.path("merged_lse.npy"));
  ASSERT_GE(got.size(), want.bytes.size());
  EXPECT_EQ(got.substr(got.size() - want.bytes.size()),
            std::string(reinterpret_cast<const char*>(want.bytes.data()), want.bytes.size()));
  EXPECT_EQ(got_lse.substr(got_lse.size() - want_lse.bytes.size()),
            std::string(reinterpret_cast<const char*>(want_lse.bytes.data()), want_lse.bytes.size()));
  // The premise of the empty rows: merged lse -inf (so the payloads above compared that too).
  EXPECT_EQ(reinterpret_cast<const float*>(want_lse.bytes.data())[1], -std::numeric_limits<float>::infinity());
}

TEST(CliMerge, ErrorsLeaveNoOutput) {
  ScratchDir dir;
  Parts parts;
  std::vector<std::string> args = parts.args(dir);
  const std::vector<std::string> inputs = dir.names();

  std::vector<std::string> unpaired = args;
  unpaired.insert(unpaired.end(), {"--out", dir.path("out0.npy"), "-o", dir.path("m.npy")});
  ToolResult r = run_tool(unpaired);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("4 --out but 3 --part-lse: each part needs both"), std::string::npos) << r.err;

  std::vector<std::string> onto_input = args;
  onto_input.insert(onto_input.end(), {"-o", dir.path("out2.npy")});
  r = run_tool(onto_input);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("is an input: refusing to overwrite it"), std::string::npos) << r.err;

  // A part whose shape differs: the library's message, naming the part.
  write_npy(dir.path("out1.npy"), Array::random(DType::f32, {B, S, H, Dv + 1}, 3));
  std::vector<std::string> mismatched = args;
  mismatched.insert(mismatched.end(), {"-o", dir.path("m.npy")});
  r = run_tool(mismatched);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("memattn merge: outs[1]"), std::string::npos) << r.err;

  // An lse of the wrong dtype: the reader names the file.
  write_npy(dir.path("out1.npy"), parts.outs[1]);
  write_npy(dir.path("lse2.npy"), Array::random(DType::f16, {B, H, S}, 4));
  r = run_tool(mismatched);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("lse2.npy: dtype '<f2'"), std::string::npos) << r.err;
  EXPECT_EQ(dir.names(), inputs) << "an output or a temporary was left behind";
}

}  // namespace
}  // namespace memattn::cli_test
