#include "profile/analyze_command.h"

#include <cstdio>
#include <fstream>

#include "base/json.h"
#include "profile/analyzer.h"

namespace pdserve::profile {

namespace {

struct AnalyzeArgs {
  AnalyzeOptions o;
  int num_gpus = 0;
  std::string output_json, html;
};

int run_analyze(AnalyzeArgs a, const CLI::App& app) {
  if (app.count("--num-gpus")) a.o.num_gpus = a.num_gpus;
  auto r = analyze(a.o);
  if (!r) {
    std::fprintf(stderr, "error: %s\n", r.error().message().c_str());
    return r.error().code() == ErrorCode::kInvalidArgument ? 2 : 1;
  }
  std::fputs(format_text(*r).c_str(), stdout);
  if (!a.output_json.empty()) {
    if (auto st = write_json_file(a.output_json, to_json(*r)); !st) {
      std::fprintf(stderr, "error: %s\n", st.error().message().c_str());
      return 1;
    }
  }
  if (!a.html.empty()) {
    std::ofstream f(a.html);
    if (!(f << to_html(*r))) {
      std::fprintf(stderr, "error: cannot write %s\n", a.html.c_str());
      return 1;
    }
  }
  // No window means nothing was measured: a script must not read an empty report as success.
  return r->windows.empty() ? 1 : 0;
}

}  // namespace

std::function<int()> add_analyze_command(CLI::App& root) {
  auto a = std::make_shared<AnalyzeArgs>();
  CLI::App* app = root.add_subcommand("analyze", "Per-GPU throughput from server logs and profiler traces");
  app->add_option("--log", a->o.decode_logs, "Decode server log file(s) (SGLang or pdserve format)")->check(CLI::ExistingFile);
  app->add_option("--prefill-log", a->o.prefill_logs, "Prefill server log file(s)")->check(CLI::ExistingFile);
  app->add_option("--trace-dir", a->o.trace_dir, "Folder with the {id}-TP-*.trace.json.gz files");
  app->add_option("--profile-id", a->o.profile_id, "Only this profiling window (default: all)");
  app->add_option("--num-gpus", a->num_gpus, "GPUs of the server (default: the number of DP ranks)");
  app->add_option("--output-json", a->output_json, "Write the report as JSON");
  app->add_option("--html", a->html, "Write an HTML page with tables and charts");
  return [a, app] { return run_analyze(*a, *app); };
}

}  // namespace pdserve::profile
