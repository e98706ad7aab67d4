// pdserve: one binary, SGLang-compatible subcommands. This file only picks the subcommand; each
// module registers its own flags and runs its own command.
#include <cstdio>
#include <functional>
#include <map>

#include <CLI/CLI.hpp>

#include "bench/bench_command.h"
#include "bench/one_batch.h"
#include "launch/repro.h"
#include "model/generate.h"
#include "moe/eplb_command.h"
#include "profile/analyze_command.h"
#include "router/router.h"
#include "server/model_server.h"
#include "tokenizer/tokenize_command.h"

int main(int argc, char** argv) {
  CLI::App app{"pdserve: PD-disaggregated DeepSeek-V3 serving"};
  app.require_subcommand(1);
  std::map<std::string, std::function<int()>> commands;
  commands["generate"] = pdserve::model::add_generate_command(app);
  commands["tokenize"] = pdserve::tokenizer::add_tokenize_command(app);
  commands["serve"] = pdserve::server::add_serve_command(app);
  commands["bench"] = pdserve::bench::add_bench_command(app);
  commands["bench-one-batch"] = pdserve::bench::add_bench_one_batch_command(app);
  commands["analyze"] = pdserve::profile::add_analyze_command(app);
  commands["router"] = pdserve::router::add_router_command(app);
  commands["eplb"] = pdserve::moe::add_eplb_command(app);
  commands["repro"] = pdserve::launch::add_repro_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::fprintf(stderr, "error: %s\n", e.what());
    std::fprintf(stderr, "Run with --help for usage.\n");
    return 2;
  }
  for (auto* sub : app.get_subcommands()) return commands.at(sub->get_name())();
  return 2;
}
