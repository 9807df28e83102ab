// `memattn run` writes bitwise what memattn::forward/backward give in this process, on every path.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "cli_support.hpp"
#include "memattn/memattn.hpp"
#include "npy.hpp"

namespace memattn::cli_test {
namespace {

struct Case {
  std::string name;
  DType dtype = DType::f32;
  int64_t batch = 2, seq_q = 5, seq_k = 7, heads_q = 4, heads_kv = 2, dim = 8, dim_v = 6;
  std::optional<std::vector<int64_t>> mask, bias;  // shapes, broadcast dims 1
  DType bias_dtype = DType::f32;
  bool mask_as_bool = true;
  bool causal = false;
  Align align = Align::top_left;
  int64_t window_left = -1, window_right = -1;
  int64_t diagonal_offset = 0;
  std::optional<double> scale;
  double softcap = 0;
  std::optional<std::vector<int64_t>> alibi;  // ALiBi slopes' shape: {heads_q} or {batch, heads_q}
  bool sinks = false;
  Algorithm algorithm = Algorithm::automatic;
  bool fortran = false;
  int version = 1;
  bool lse = true, backward = false;
  bool force_progress = false;  // MEMATTN_FORCE_PROGRESS=1: the per-(batch, kv head) pieces
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

const char* align_name(Align a) { return a == Align::top_left ? "top_left" : "bottom_right"; }

class CliRunResults : public testing::TestWithParam<Case> {};

TEST_P(CliRunResults, BitwiseEqualToDirectCalls) {
  const Case& c = GetParam();
  ScratchDir dir;
  Array q = Array::random(c.dtype, {c.batch, c.seq_q, c.heads_q, c.dim}, 1, c.fortran);
  Array k = Array::random(c.dtype, {c.batch, c.seq_k, c.heads_kv, c.dim}, 2, c.fortran);
  Array v = Array::random(c.dtype, {c.batch, c.seq_k, c.heads_kv, c.dim_v}, 3, c.fortran);
  Array dout = Array::random(c.dtype, {c.batch, c.seq_q, c.heads_q, c.dim_v}, 4, c.fortran);
  std::optional<Array> mask, bias, slopes, sinks;
  std::vector<std::string> args{"run", "--q", "q.npy", "--k", "k.npy", "--v", "v.npy", "-o", "out.npy"};
  write_npy(dir.path("q.npy"), q, c.version);
  write_npy(dir.path("k.npy"), k, c.version);
  write_npy(dir.path("v.npy"), v, c.version);
  if (c.mask) {
    mask = Array::random(DType::u8, *c.mask, 5, c.fortran);
    write_npy(dir.path("mask.npy"), *mask, c.version, c.mask_as_bool);
    args.insert(args.end(), {"--mask", "mask.npy"});
  }
  if (c.bias) {
    bias = Array::random(c.bias_dtype, *c.bias, 6, c.fortran);
    write_npy(dir.path("bias.npy"), *bias, c.version);
    args.insert(args.end(), {"--bias", "bias.npy"});
  }
  if (c.alibi) {
    slopes = Array::random(DType::f32, *c.alibi, 7, c.fortran);
    write_npy(dir.path("slopes.npy"), *slopes, c.version);
    args.insert(args.end(), {"--alibi-slopes", "slopes.npy"});
  }
  if (c.sinks) {
    sinks = Array::random(DType::f32, {c.heads_q}, 8, c.fortran);
    write_npy(dir.path("sinks.npy"), *sinks, c.version);
    args.insert(args.end(), {"--sinks", "sinks.npy"});
  }
  if (c.lse) args.insert(args.end(), {"--lse", "lse.npy"});
  if (c.causal) args.push_back("--causal");
  args.insert(args.end(), {"--align", align_name(c.align)});
  if (c.window_left != -1 || c.window_right != -1)
    args.insert(args.end(), {"--window", std::to_string(c.window_left) + "," + std::to_string(c.window_right)});
  if (c.diagonal_offset != 0) args.insert(args.end(), {"--diagonal-offset", std::to_string(c.diagonal_offset)});
  if (c.scale) {
    char text[32];
    std::snprintf(text, sizeof text, "%.17g", *c.scale);
    args.insert(args.end(), {"--scale", text});
  }
  if (c.softcap > 0) {
    char text[32];
    std::snprintf(text, sizeof text, "%.17g", c.softcap);
    args.insert(args.end(), {"--softcap", text});
  }
  if (c.algorithm != Algorithm::automatic) args.insert(args.end(), {"--algorithm", algorithm_name(c.algorithm)});
  if (c.backward) {
    write_npy(dir.path("dout.npy"), dout, c.version);
    args.insert(args.end(), {"--backward", "--dout", "dout.npy", "--dq", "dq.npy", "--dk", "dk.npy", "--dv", "dv.npy"});
  }
  std::vector<std::string> env;
  if (c.force_progress) env.push_back("MEMATTN_FORCE_PROGRESS=1");
  const ToolResult r = run_tool(args, dir.dir(), env);
  ASSERT_EQ(r.exit_code, 0) << r.err;

  const int64_t pieces = c.batch * c.heads_kv * (c.backward ? 2 : 1);
  const std::string done = std::to_string(pieces) + "/" + std::to_string(pieces);
  if (c.force_progress) {
    EXPECT_NE(r.err.find('\r'), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(done), std::string::npos) << "expected the bar to count " << pieces << " pieces: " << r.err;
  } else {
    EXPECT_EQ(r.err, "") << "no terminal, no progress bar";
  }

  // The same computation in this process, one direct call each, on views of the same bytes.
  Options o;
  o.causal = c.causal, o.align = c.align, o.window_left = c.window_left, o.window_right = c.window_right;
  o.diagonal_offset = c.diagonal_offset;
  o.scale = c.scale, o.softcap = c.softcap, o.algorithm = c.algorithm;
  Tensor mask_view, bias_view;
  if (mask) mask_view = mask->tensor(), o.mask = &mask_view;
  if (bias) bias_view = bias->tensor(), o.bias = &bias_view;
  Tensor slopes_view, sinks_view;
  if (slopes) slopes_view = slopes->tensor(), o.alibi_slopes = &slopes_view;
  if (sinks) sinks_view = sinks->tensor(), o.sinks = &sinks_view;
  Array out = Array::zeros(c.dtype, dout.shape), lse = Array::zeros(DType::f32, {c.batch, c.heads_q, c.seq_q});
  Tensor lse_view = lse.tensor();
  forward(q.tensor(), k.tensor(), v.tensor(), out.tensor(), c.lse || c.backward ? &lse_view : nullptr, o);
  expect_output(dir.path("out.npy"), out);
  if (c.lse) expect_output(dir.path("lse.npy"), lse);
  if (c.backward) {
    Array dq = Array::zeros(c.dtype, q.shape), dk = Array::zeros(c.dtype, k.shape), dv = Array::zeros(c.dtype, v.shape);
    backward(q.tensor(), k.tensor(), v.tensor(), out.tensor(), dout.tensor(), lse_view, dq.tensor(), dk.tensor(),
             dv.tensor(), o);
    expect_output(dir.path("dq.npy"), dq);
    expect_output(dir.path("dk.npy"), dk);
    expect_output(dir.path("dv.npy"), dv);
  }
  for (const std::string& name : dir.names()) EXPECT_EQ(name.find(".tmp-"), std::string::npos) << name;
}

std::vector<Case> cases() {
  const auto with = [](Case c, auto&& edit) { edit(c); return c; };
  const Case base;
  const std::vector<int64_t> per_head_mask{1, 4, 5, 7}, per_batch_bias{2, 1, 5, 7}, row_mask{2, 1, 1, 7};
  std::vector<Case> forward_cases = {
      with(base, [](Case& c) { c.name = "f32"; }),
      with(base, [](Case& c) { c.name = "f16", c.dtype = DType::f16; }),
      with(base, [](Case& c) { c.name = "f32_no_lse", c.lse = false; }),
      with(base, [&](Case& c) { c.name = "f32_mask_bias", c.mask = per_head_mask, c.bias = per_batch_bias; }),
      with(base, [&](Case& c) {
        c.name = "f16_u8_mask_f16_bias", c.dtype = c.bias_dtype = DType::f16, c.mask = row_mask,
        c.mask_as_bool = false, c.bias = std::vector<int64_t>{1, 4, 5, 7};
      }),
      with(base, [&](Case& c) { c.name = "f16_f32_bias", c.dtype = DType::f16, c.bias = per_batch_bias; }),
      with(base, [](Case& c) { c.name = "causal_top_left", c.causal = true; }),
      with(base, [](Case& c) { c.name = "causal_bottom_right", c.causal = true, c.align = Align::bottom_right; }),
      with(base, [](Case& c) {
        c.name = "causal_bottom_right_more_queries", c.causal = true, c.align = Align::bottom_right;
        c.seq_q = 7, c.seq_k = 5;
      }),
      with(base, [](Case& c) { c.name = "window", c.window_left = 2, c.window_right = 1; }),
      with(base, [](Case& c) {
        c.name = "window_causal_bottom_right", c.window_left = 3, c.window_right = 0, c.causal = true,
        c.align = Align::bottom_right;
      }),
      with(base, [](Case& c) {
        c.name = "window_alibi_diagonal_offset", c.window_left = 1, c.window_right = 2, c.diagonal_offset = -3,
        c.alibi = std::vector<int64_t>{4};
      }),
      with(base, [](Case& c) { c.name = "scale", c.scale = -0.3; }),
      with(base, [](Case& c) { c.name = "softcap", c.softcap = 0.75, c.causal = true; }),
      with(base, [](Case& c) {
        c.name = "alibi_sinks_softcap", c.alibi = std::vector<int64_t>{4}, c.sinks = true, c.softcap = 2;
      }),
      with(base, [](Case& c) {
        c.name = "alibi_per_batch_bottom_right", c.alibi = std::vector<int64_t>{2, 4}, c.causal = true,
        c.align = Align::bottom_right;
      }),
      with(base, [](Case& c) { c.name = "f64_scale", c.dtype = DType::f64, c.algorithm = Algorithm::naive, c.scale = 0.3; }),
      with(base, [&](Case& c) { c.name = "fortran", c.fortran = true, c.mask = per_head_mask, c.bias = per_batch_bias; }),
      with(base, [](Case& c) { c.name = "f16_fortran", c.dtype = DType::f16, c.fortran = true, c.causal = true; }),
      with(base, [](Case& c) { c.name = "npy_version_2", c.version = 2; }),
      with(base, [](Case& c) { c.name = "npy_version_3", c.version = 3; }),
      with(base, [](Case& c) { c.name = "mqa", c.heads_kv = 1; }),
      with(base, [&](Case& c) { c.name = "f64_naive", c.dtype = c.bias_dtype = DType::f64, c.algorithm = Algorithm::naive, c.bias = per_batch_bias; }),
      with(base, [](Case& c) { c.name = "f64_auto_is_chunked", c.dtype = DType::f64; }),
      with(base, [](Case& c) { c.name = "f64_sequential", c.dtype = DType::f64, c.algorithm = Algorithm::sequential; }),
      with(base, [](Case& c) { c.name = "f32_chunked", c.algorithm = Algorithm::chunked, c.causal = true; }),
      with(base, [](Case& c) { c.name = "f32_naive", c.algorithm = Algorithm::naive; }),
      with(base, [](Case& c) { c.name = "empty_keys", c.seq_k = 0; }),
      with(base, [](Case& c) {
        c.name = "long_causal", c.seq_q = c.seq_k = 300, c.dim = c.dim_v = 16, c.batch = 1, c.causal = true;
      }),
  };
  const std::vector<Case> backward_cases = {
      with(base, [&](Case& c) { c.name = "backward_f32", c.mask = per_head_mask, c.bias = per_batch_bias, c.causal = true; }),
      with(base, [](Case& c) { c.name = "backward_f32_no_lse_file", c.lse = false; }),
      with(base, [&](Case& c) { c.name = "backward_f16", c.dtype = DType::f16, c.mask = row_mask, c.window_left = 2; }),
      with(base, [](Case& c) { c.name = "backward_f64_naive", c.dtype = DType::f64, c.algorithm = Algorithm::naive; }),
      with(base, [](Case& c) { c.name = "backward_f32_naive", c.algorithm = Algorithm::naive, c.causal = true; }),
      with(base, [](Case& c) { c.name = "backward_softcap", c.softcap = 0.75, c.causal = true; }),
      with(base, [](Case& c) { c.name = "backward_causal_diagonal_offset", c.causal = true, c.diagonal_offset = 4; }),
      with(base, [](Case& c) {
        c.name = "backward_modifiers", c.alibi = std::vector<int64_t>{2, 4}, c.sinks = true, c.softcap = 1.5;
      }),
      with(base, [](Case& c) { c.name = "backward_fortran", c.fortran = true, c.causal = true, c.align = Align::bottom_right; }),
      with(base, [](Case& c) {
        c.name = "backward_long", c.seq_q = c.seq_k = 300, c.dim = c.dim_v = 16, c.batch = 1, c.causal = true;
      }),
  };
  return with_progress_variants(forward_cases, backward_cases);
}

INSTANTIATE_TEST_SUITE_P(Cases, CliRunResults, testing::ValuesIn(cases()),
                         [](const testing::TestParamInfo<Case>& info) { return info.param.name; });

}  // namespace
}  // namespace memattn::cli_test
