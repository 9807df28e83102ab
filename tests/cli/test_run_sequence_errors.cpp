// `memattn run` refuses bad varlen, KV-cache and mixed-dtype requests with a message that names the
// option or file, and leaves no output behind.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "cli_support.hpp"

namespace memattn::cli_test {
namespace {

// Valid inputs of both kinds: a varlen batch (lengths q 3, 0, 5; k 4, 2, 6) packed in q [1, 8, 4, 8],
// k [1, 12, 2, 8], v [1, 12, 2, 6]; a cache call of 3 sequences with 2 new queries each (cq) on
// caches [3, 10, 2, 8|6] (kc, vc) or on 6 pages of 4 keys (kp, vp), with 9, 0 and 5 keys.
class CliRunSequenceErrors : public testing::Test {
 protected:
  void SetUp() override {
    const std::pair<const char*, Array> files[] = {
        {"q.npy", Array::random(DType::f32, {1, 8, 4, 8}, 1)},
        {"k.npy", Array::random(DType::f32, {1, 12, 2, 8}, 2)},
        {"v.npy", Array::random(DType::f32, {1, 12, 2, 6}, 3)},
        {"cu_q.npy", Array::integers(DType::i32, {4}, {0, 3, 3, 8})},
        {"cu_k.npy", Array::integers(DType::i64, {4}, {0, 4, 6, 12})},
        {"cq.npy", Array::random(DType::f32, {3, 2, 4, 8}, 4)},
        {"kc.npy", Array::random(DType::f32, {3, 10, 2, 8}, 5)},
        {"vc.npy", Array::random(DType::f32, {3, 10, 2, 6}, 6)},
        {"kp.npy", Array::random(DType::f32, {6, 4, 2, 8}, 7)},
        {"vp.npy", Array::random(DType::f32, {6, 4, 2, 6}, 8)},
        {"lens.npy", Array::integers(DType::i32, {3}, {9, 0, 5})},
        {"table.npy", Array::integers(DType::i64, {3, 3}, {5, 4, 3, -1, -1, -1, 2, 1, -1})},
    };
    for (const auto& [name, a] : files) write(name, a), inputs.push_back(name);
  }
  void write(const std::string& name, const Array& a) { write_npy(dir.path(name), a); }

  // Runs `run` with these arguments and `-o out.npy --lse lse.npy`, and expects it to fail with
  // `exit_code` and each of `parts` in the message, with no file added to the inputs.
  void expect_error(std::vector<std::string> args, int exit_code, const std::vector<std::string>& parts) {
    args.insert(args.begin(), "run");
    args.insert(args.end(), {"-o", "out.npy", "--lse", "lse.npy"});
    expect_failure(dir, args, exit_code, parts, inputs);
  }
  // The valid call of each kind with `extra`: an option it already has takes the new value.
  void expect_varlen_error(const std::vector<std::string>& extra, int exit_code, const std::vector<std::string>& parts) {
    expect_error(merged({"--q", "q.npy", "--k", "k.npy", "--v", "v.npy", "--cu-seqlens-q", "cu_q.npy", "--cu-seqlens-k",
                         "cu_k.npy"},
                        extra),
                 exit_code, parts);
  }
  void expect_cache_error(const std::vector<std::string>& extra, int exit_code, const std::vector<std::string>& parts) {
    expect_error(merged({"--q", "cq.npy", "--k", "kc.npy", "--v", "vc.npy", "--seqlens-k", "lens.npy"}, extra),
                 exit_code, parts);
  }
  void expect_paged_error(const std::vector<std::string>& extra, int exit_code, const std::vector<std::string>& parts) {
    expect_error(merged({"--q", "cq.npy", "--k", "kp.npy", "--v", "vp.npy", "--seqlens-k", "lens.npy", "--block-table",
                         "table.npy"},
                        extra),
                 exit_code, parts);
  }
  static std::vector<std::string> merged(std::vector<std::string> args, const std::vector<std::string>& extra) {
    for (size_t i = 0; i < extra.size(); ++i) {
      const auto at = std::find(args.begin(), args.end(), extra[i]);
      const bool valued = i + 1 < extra.size() && extra[i + 1][0] != '-';
      if (at != args.end() && valued) *(at + 1) = extra[++i];
      else args.push_back(extra[i]);
    }
    return args;
  }

  ScratchDir dir;
  std::vector<std::string> inputs;
};

TEST_F(CliRunSequenceErrors, UnpairedOptions) {
  const std::vector<std::string> dense{"--q", "q.npy", "--k", "k.npy", "--v", "v.npy"};
  const auto plus = [&](std::vector<std::string> extra) {
    extra.insert(extra.begin(), dense.begin(), dense.end());
    return extra;
  };
  expect_error(plus({"--cu-seqlens-q", "cu_q.npy"}), 2, {"--cu-seqlens-q requires --cu-seqlens-k"});
  expect_error(plus({"--cu-seqlens-k", "cu_k.npy"}), 2, {"--cu-seqlens-k requires --cu-seqlens-q"});
  expect_error(plus({"--max-seqlen-q", "5"}), 2, {"--max-seqlen-q requires --cu-seqlens-q"});
  expect_error(plus({"--max-seqlen-k", "6"}), 2, {"--max-seqlen-k requires --cu-seqlens-k"});
  expect_error(plus({"--block-table", "table.npy"}), 2, {"--block-table requires --seqlens-k"});
}

TEST_F(CliRunSequenceErrors, ExclusiveOptions) {
  expect_cache_error({"--cu-seqlens-q", "cu_q.npy", "--cu-seqlens-k", "cu_k.npy"}, 2,
                     {"--cu-seqlens-q excludes --seqlens-k"});
  expect_cache_error({"--backward", "--dout", "cq.npy", "--dq", "dq.npy", "--dk", "dk.npy", "--dv", "dv.npy"}, 2,
                     {"--seqlens-k excludes --backward"});
  expect_varlen_error({"--mpi"}, 2, {"--cu-seqlens-q excludes --mpi"});
  expect_cache_error({"--mpi"}, 2, {"--seqlens-k excludes --mpi"});
}

TEST_F(CliRunSequenceErrors, BadOptionValues) {
  expect_varlen_error({"--max-seqlen-q", "0"}, 2, {"--max-seqlen-q: '0' is not a positive integer"});
  expect_varlen_error({"--max-seqlen-k", "-3"}, 2, {"--max-seqlen-k: '-3' is not a positive integer"});
}

TEST_F(CliRunSequenceErrors, IndexFilesOfTheWrongDtypeOrRank) {
  write("f.npy", Array::random(DType::f32, {4}, 9));
  write("two_d.npy", Array::integers(DType::i32, {1, 4}, {0, 3, 3, 8}));
  write("one_d.npy", Array::integers(DType::i32, {3}, {5, 4, 3}));
  inputs.insert(inputs.end(), {"f.npy", "two_d.npy", "one_d.npy"});
  const char* const integers = "is not supported here; expected '<i4' (i32) or '<i8' (i64)";
  expect_varlen_error({"--cu-seqlens-q", "f.npy"}, 1, {"f.npy: dtype '<f4' (float32) ", integers});
  expect_varlen_error({"--cu-seqlens-k", "two_d.npy"}, 1,
                      {"two_d.npy: expected a 1-D array [batch + 1] (offsets), found shape (1, 4) (2-D)"});
  expect_cache_error({"--seqlens-k", "f.npy"}, 1, {"f.npy: dtype '<f4' (float32) ", integers});
  expect_paged_error({"--block-table", "one_d.npy"}, 1,
                     {"one_d.npy: expected a 2-D array [batch, max_pages], found shape (3,) (1-D)"});
  expect_varlen_error({"--k", "two_d.npy"}, 1, {"two_d.npy: dtype '<i4' (int32) is not supported here"});
}

// The offsets' values are the library's to check, with its messages, before anything is written.
TEST_F(CliRunSequenceErrors, BadOffsets) {
  const std::pair<std::vector<int64_t>, std::string> cases[] = {
      {{0, 4, 6, 11}, "cu_seqlens_k[3]=11 (the last entry) must equal the key total k.shape[1] 12"},
      {{0, 4, 3, 12}, "cu_seqlens_k[2]=3 < cu_seqlens_k[1]=4; offsets must be non-decreasing"},
      {{1, 4, 6, 12}, "cu_seqlens_k[0]=1 must be 0"},
      {{0, 6, 12}, "cu_seqlens_q has 4 entries but cu_seqlens_k has 3"},
  };
  inputs.push_back("bad.npy");
  for (const auto& [offsets, message] : cases) {
    SCOPED_TRACE(message);
    write("bad.npy", Array::integers(DType::i32, {int64_t(offsets.size())}, offsets));
    expect_varlen_error({"--cu-seqlens-k", "bad.npy"}, 1, {"memattn run: " + message});
  }
  expect_varlen_error({"--max-seqlen-q", "4"}, 1, {"max_seqlen_q=4 is smaller than sequence 2's length 5"});
}

TEST_F(CliRunSequenceErrors, VarlenRefusals) {
  write("m.npy", Array::random(DType::u8, {1, 1, 8, 12}, 9));
  write("q2.npy", Array::random(DType::f32, {2, 4, 4, 8}, 9));
  inputs.insert(inputs.end(), {"m.npy", "q2.npy"});
  expect_varlen_error({"--mask", "m.npy"}, 1, {"mask: not supported with cu_seqlens (varlen)"});
  expect_varlen_error({"--q", "q2.npy"}, 1, {"memattn run: k: batch 1 does not match q batch 2"});
}

TEST_F(CliRunSequenceErrors, BadCacheCalls) {
  write("long.npy", Array::integers(DType::i32, {3}, {13, 0, 5}));
  write("far.npy", Array::integers(DType::i32, {3, 3}, {5, 6, 3, -1, -1, -1, 2, 1, -1}));
  write("m.npy", Array::random(DType::u8, {1, 1, 2, 10}, 9));
  inputs.insert(inputs.end(), {"long.npy", "far.npy", "m.npy"});
  expect_cache_error({"--seqlens-k", "long.npy"}, 1, {"seqlens_k[0]=13 exceeds the cache length k_cache.shape[1]=10"});
  expect_paged_error({"--block-table", "far.npy"}, 1,
                     {"block_table[0][1]=6 is not a page of k_cache (num_pages 6); sequence 0 has 9 keys"});
  expect_paged_error({"--seqlens-k", "long.npy"}, 1,
                     {"seqlens_k[0]=13 exceeds the 12 keys of block_table's 3 pages of page_size 4"});
  expect_cache_error({"--mask", "m.npy"}, 1, {"mask: not supported by attention_with_kvcache"});
  expect_cache_error({"--algorithm", "naive"}, 1, {"attention_with_kvcache runs the flash algorithm"});
  expect_failure(dir, {"run", "--q", "cq.npy", "--k", "kc.npy", "--v", "vc.npy", "--seqlens-k", "lens.npy", "-o", "lens.npy"},
                 2, {"-o lens.npy is the input --seqlens-k lens.npy"}, inputs);
}

// f32 queries on an f16 cache are forward only; other mixes are refused whole.
TEST_F(CliRunSequenceErrors, MixedDtypes) {
  write("k16.npy", Array::random(DType::f16, {1, 12, 2, 8}, 2));
  write("v16.npy", Array::random(DType::f16, {1, 12, 2, 6}, 3));
  write("q16.npy", Array::random(DType::f16, {1, 8, 4, 8}, 1));
  write("do.npy", Array::random(DType::f32, {1, 8, 4, 6}, 4));
  inputs.insert(inputs.end(), {"k16.npy", "v16.npy", "q16.npy", "do.npy"});
  expect_varlen_error({"--k", "k16.npy", "--v", "v16.npy", "--backward", "--dout", "do.npy", "--dq", "dq.npy", "--dk",
                       "dk.npy", "--dv", "dv.npy"},
                      1, {"the backward takes k and v in q's dtype (f32), got f16"});
  expect_varlen_error({"--k", "k16.npy", "--v", "v16.npy", "--algorithm", "naive"}, 1,
                      {"memattn run: algorithm: naive takes k and v in q's dtype; f32 queries against a f16 KV cache"});
  expect_varlen_error({"--q", "q16.npy"}, 1,
                      {"memattn run: q, k, v must have the same dtype, or f32 q with k and v both bf16 or both f16",
                       "got q=f16, k=f32, v=f32"});
  expect_varlen_error({"--k", "k16.npy"}, 1, {"got q=f32, k=f16, v=f32"});
}

}  // namespace
}  // namespace memattn::cli_test
