// `pdserve eplb`: the expert-placement algorithm on a recorded distribution (the offline half of
// SGLang's init_by_eplb), so a placement can be computed, inspected and reused.
//
//   pdserve eplb --input DUMP --ep-size N --num-redundant-experts R --nnodes K [--num-groups G]
//                [--eplb-algorithm deepseek|deepseek_hierarchical|auto] --output placement.json
//
// DUMP: our recorder's .json or .safetensors dump, SGLang's .pt dump, or any JSON with logical_count
// ([layers][experts] or [passes][layers][experts]). Writes {"physical_to_logical_map": [[...]]},
// which `--init-expert-location` of pdserve and of SGLang both accept, and prints the balancedness
// (mean / max GPU load, averaged over MoE layers) of the trivial placement and of the new one.
// Exit 0 on success; 1 with "error: ..." for bad input; 2 for usage errors.
#pragma once

#include <functional>
#include <ostream>
#include <string>

#include <CLI/CLI.hpp>

namespace pdserve::moe {

struct EplbCli {
  std::string input, output;
  int ep_size = 0;
  int num_redundant_experts = 0;
  int nnodes = 1;
  int num_groups = 0;  // 0: the dump's metadata.num_groups, else 1
  std::string algorithm = "auto";
};

// Runs the command: the report goes to `out`, "error: ..." to `err`; returns the exit code.
int run_eplb_cli(const EplbCli& cli, std::ostream& out, std::ostream& err);

// Registers the subcommand's flags; the returned callback runs it (exit code).
std::function<int()> add_eplb_command(CLI::App& root);

}  // namespace pdserve::moe
