#include "moe/eplb_command.h"

#include <iostream>
#include <memory>

#include <fmt/format.h>

#include "base/clock.h"
#include "base/json.h"
#include "moe/eplb.h"
#include "moe/expert_location.h"

namespace pdserve::moe {
namespace {

// metadata.num_groups of our dumps, when the input is one.
int groups_from_metadata(const std::string& input) {
  if (!input.ends_with(".json")) return 0;
  auto j = read_json_file(input);
  if (!j.has_value() || !j->is_object() || !j->contains("metadata")) return 0;
  auto g = get_optional_field<int>((*j)["metadata"], "num_groups", input);
  return g.has_value() && g->has_value() ? **g : 0;
}

Result<std::string> run(const EplbCli& cli) {
  if (cli.ep_size < 1) return make_error(ErrorCode::kInvalidArgument, "--ep-size must be at least 1");
  if (cli.num_redundant_experts < 0)
    return make_error(ErrorCode::kInvalidArgument, "--num-redundant-experts must not be negative");
  if (cli.nnodes < 1 || cli.ep_size % cli.nnodes != 0)
    return make_error(ErrorCode::kInvalidArgument, "--nnodes {} must be at least 1 and divide --ep-size {}", cli.nnodes,
                      cli.ep_size);
  PDSERVE_ASSIGN_OR_RETURN(EplbAlgorithm algorithm, parse_eplb_algorithm(cli.algorithm));
  PDSERVE_ASSIGN_OR_RETURN(ExpertLocationSource src, read_expert_location_source(cli.input));
  if (src.kind != ExpertLocationSource::Kind::kCounts)
    return make_error(ErrorCode::kInvalidArgument,
                      "{}: holds {} rather than recorded counts (logical_count)", cli.input,
                      src.kind == ExpertLocationSource::Kind::kMapping ? "a placement" : "nothing");
  Matrix counts = src.summed_counts();

  EplbOptions opts;
  opts.num_physical_experts = static_cast<int>(counts.cols) + cli.num_redundant_experts;
  opts.num_gpus = cli.ep_size;
  opts.num_nodes = cli.nnodes;
  opts.num_groups = cli.num_groups > 0 ? cli.num_groups : std::max(1, groups_from_metadata(cli.input));
  opts.algorithm = algorithm;
  ExpertLayout layout{static_cast<int>(counts.rows), static_cast<int>(counts.cols), opts.num_physical_experts,
                      cli.ep_size};
  PDSERVE_RETURN_IF_ERROR(layout.validate());

  Stopwatch sw;
  PDSERVE_ASSIGN_OR_RETURN(Placement placement, rebalance_experts(counts, opts));
  const double seconds = sw.seconds();
  PDSERVE_ASSIGN_OR_RETURN(ExpertLocation trivial, ExpertLocation::trivial(layout));
  PDSERVE_ASSIGN_OR_RETURN(Balancedness before, compute_balancedness(counts, trivial.physical_to_logical(), cli.ep_size));
  PDSERVE_ASSIGN_OR_RETURN(Balancedness after, compute_balancedness(counts, placement.physical_to_logical, cli.ep_size));
  PDSERVE_ASSIGN_OR_RETURN(ExpertLocation loc, ExpertLocation::from_mapping(layout, placement.physical_to_logical));
  PDSERVE_RETURN_IF_ERROR(write_json_file(cli.output, loc.to_json(), -1));

  double total = 0;
  int moe_layers = 0;
  for (int64_t l = 0; l < counts.rows; ++l) {
    double s = 0;
    for (int64_t e = 0; e < counts.cols; ++e) s += counts.at(l, e);
    total += s;
    moe_layers += s > 0;
  }
  std::string report;
  report += fmt::format("input: {} ({} passes, {} layers ({} with load) x {} experts, {:.0f} expert choices)\n",
                        cli.input, src.passes.size(), counts.rows, moe_layers, counts.cols, total);
  report += fmt::format("algorithm: {} (--eplb-algorithm {}; {} groups, {} nodes), ep size {}, {} physical experts "
                        "({} per GPU, {} redundant)\n",
                        eplb_algorithm_name(resolve_eplb_algorithm(opts)), cli.algorithm, opts.num_groups, opts.num_nodes,
                        cli.ep_size, opts.num_physical_experts, layout.num_local_physical(), cli.num_redundant_experts);
  report += fmt::format("balancedness (mean/max GPU load, averaged over MoE layers): before {:.4f} (trivial placement), "
                        "after {:.4f}\n",
                        before.mean, after.mean);
  report += fmt::format("busiest GPU load summed over layers: before {:.0f}, after {:.0f} ({:+.1f}%)\n",
                        before.max_gpu_load, after.max_gpu_load,
                        before.max_gpu_load > 0 ? 100.0 * (after.max_gpu_load / before.max_gpu_load - 1) : 0.0);
  report += fmt::format("algorithm time: {:.2f} ms\n", seconds * 1e3);
  report += fmt::format("wrote {}\n", cli.output);
  return report;
}

}  // namespace

int run_eplb_cli(const EplbCli& cli, std::ostream& out, std::ostream& err) {
  auto r = run(cli);
  if (!r.has_value()) {
    err << "error: " << r.error().message() << "\n";
    return 1;
  }
  out << *r;
  return 0;
}

std::function<int()> add_eplb_command(CLI::App& root) {
  auto cli = std::make_shared<EplbCli>();
  CLI::App* app = root.add_subcommand("eplb", "Compute an expert placement (EPLB) from a recorded expert distribution");
  app->add_option("--input", cli->input, "Recorded distribution: .json / .safetensors (pdserve) or .pt (SGLang)")
      ->required();
  app->add_option("--output", cli->output, "Placement JSON to write ({\"physical_to_logical_map\": ...})")->required();
  app->add_option("--ep-size", cli->ep_size, "Expert-parallel size (GPUs holding experts)")->required();
  app->add_option("--num-redundant-experts,--ep-num-redundant-experts", cli->num_redundant_experts,
                  "Extra physical expert slots for copies of hot experts")
      ->capture_default_str();
  app->add_option("--nnodes", cli->nnodes, "Nodes the EP GPUs span")->capture_default_str();
  app->add_option("--num-groups", cli->num_groups,
                  "Expert groups of the router (DeepSeek-V3: 8); default: the dump's metadata, else 1");
  app->add_option("--eplb-algorithm", cli->algorithm, "deepseek | deepseek_hierarchical | auto")->capture_default_str();
  return [cli] { return run_eplb_cli(*cli, std::cout, std::cerr); };
}

}  // namespace pdserve::moe
