// `memattn merge`: reads the parts' .npy files, calls memattn::merge, writes all outputs or none.
#include "merge_cmd.hpp"

#include <CLI/CLI.hpp>

#include <optional>
#include <string>
#include <vector>

#include "memattn/memattn.hpp"
#include "npy.hpp"
#include "output_files.hpp"

namespace memattn::tool {

CLI::App* add_merge_command(CLI::App& app, MergeConfig& c) {
  CLI::App* sub = app.add_subcommand(
      "merge", "Attention over the union of disjoint key sets from each set's (out, lse): exact");
  sub->add_option("--out", c.outs, "a part's out .npy [batch, seq_q, heads, dim_v]; repeat per part, in order")
      ->required()->type_name("FILE");
  sub->add_option("--part-lse", c.lses, "that part's lse .npy, f32 [batch, heads, seq_q]; one per --out")
      ->required()->type_name("FILE");
  sub->add_option("-o", c.out, "the merged out .npy (the parts' dtype)")->required()->type_name("FILE");
  sub->add_option("--lse", c.lse, "the merged lse .npy (f32)")->type_name("FILE");
  sub->add_option("--threads", c.threads, "threads (0: all)")->check(CLI::NonNegativeNumber)->type_name("N");
  sub->footer("Parts whose lse is -inf (no key seen) are not read. Example:\n"
              "  memattn merge --out a.npy --part-lse a_lse.npy --out b.npy --part-lse b_lse.npy -o ab.npy");
  return sub;
}

namespace {

// What makes the command line unusable (unpaired parts, an output that is an input); "" if nothing.
std::string usage_problem(const MergeConfig& c) {
  if (c.outs.size() != c.lses.size())
    return std::to_string(c.outs.size()) + " --out but " + std::to_string(c.lses.size()) +
           " --part-lse: each part needs both";
  std::vector<std::string> inputs = c.outs;
  inputs.insert(inputs.end(), c.lses.begin(), c.lses.end());
  for (const std::string* o : {&c.out, &c.lse})
    for (const std::string& in : inputs)
      if (!o->empty() && same_file(*o, in))
        return *o + " is an input: refusing to overwrite it (merge in place through the library)";
  return !c.lse.empty() && same_file(c.lse, c.out) ? "-o and --lse name the same file" : "";
}

void merge_files(const MergeConfig& c) {
  std::vector<NpyArray> outs, lses;
  std::vector<Tensor> out_views, lse_views;
  for (size_t p = 0; p < c.outs.size(); ++p) {
    outs.push_back(read_npy(c.outs[p], {{DType::f32, DType::f16, DType::f64}, 4, "[batch, seq_q, heads, dim_v]"}));
    lses.push_back(read_npy(c.lses[p], {{DType::f32}, 3, "[batch, heads, seq_q]"}));
    out_views.push_back(outs.back().tensor());
    lse_views.push_back(lses.back().tensor());
  }
  const std::vector<int64_t>& shape = outs.front().shape();
  OutputFiles files;
  const Tensor out = files.add(c.out, outs.front().dtype(), shape);
  std::optional<Tensor> lse;
  if (!c.lse.empty()) lse = files.add(c.lse, DType::f32, {shape[0], shape[2], shape[1]});
  MergeOptions options;
  options.num_threads = c.threads;
  merge(out_views, lse_views, out, lse ? &*lse : nullptr, options);
  files.commit();
}

}  // namespace

int merge_main(const MergeConfig& c) {
  return run_file_command("memattn merge", usage_problem(c), [&] { merge_files(c); });
}

}  // namespace memattn::tool
