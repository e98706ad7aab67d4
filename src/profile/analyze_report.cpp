// The analyzer's three outputs: a text table (stdout), JSON, and an HTML page with charts.
#include <fmt/format.h>

#include "bench/svg_chart.h"
#include "profile/analyzer.h"

namespace pdserve::profile {

using nlohmann::json;

namespace {

std::string opt(const std::optional<double>& v, const char* f = "{:.2f}") {
  return v ? fmt::format(fmt::runtime(f), *v) : std::string("-");
}

}  // namespace

std::string format_text(const AnalyzeReport& r) {
  std::string o;
  for (const auto& w : r.windows) {
    const bool decode = w.role == "decode";
    o += fmt::format("Profile {} ({}), started {}\n", w.profile_id, w.role, w.start_time);
    o += fmt::format("  step time {:.2f} ms from {}; {} GPUs\n", w.step_time_s * 1000, w.step_time_source, w.gpus);
    o += fmt::format("  {:<6} {:>10} {:>6} {:>10} {:>14} {:>16}\n", "rank", decode ? "batch" : "new-token", "lines",
                     "step (ms)", decode ? "tok/s/GPU" : "in-tok/s/GPU", decode ? "log gen tok/s" : "log in-tok/s");
    for (const auto& k : w.ranks)
      o += fmt::format("  {:<6} {:>10.1f} {:>6} {:>10} {:>14.2f} {:>16}\n", "DP" + std::to_string(k.dp), k.batch,
                       k.log_lines, opt(k.step_time_s ? std::optional<double>(*k.step_time_s * 1000) : std::nullopt),
                       k.throughput_per_gpu, opt(k.log_throughput));
    o += fmt::format("  {:<6} {:>10.1f} {:>6} {:>10.2f} {:>14.2f} {:>16}\n", "total", w.global_batch, "",
                     w.step_time_s * 1000, w.tokens_per_s_per_gpu, opt(w.log_throughput_total));
    o += fmt::format("  {} tokens/s per GPU = {:.1f} / {:.4f} s / {} GPUs = {:.2f}\n", decode ? "output" : "input",
                     w.global_batch, w.step_time_s, w.gpus, w.tokens_per_s_per_gpu);
    if (w.log_throughput_per_gpu)
      o += fmt::format("  cross-check from the log: {:.2f} tok/s in total = {:.2f} per GPU\n", *w.log_throughput_total,
                       *w.log_throughput_per_gpu);
    if (w.expert_balancedness)
      o += fmt::format("  expert balancedness: {:.3f} (mean of {} passes' [Expert Balancedness] lines)\n",
                       *w.expert_balancedness, w.balancedness_passes);
    o += "\n";
  }
  for (const auto& wmsg : r.warnings) o += "warning: " + wmsg + "\n";
  return o;
}

json to_json(const AnalyzeReport& r) {
  json windows = json::array();
  auto optj = [](const std::optional<double>& v) { return v ? json(*v) : json(nullptr); };
  for (const auto& w : r.windows) {
    json ranks = json::array();
    for (const auto& k : w.ranks)
      ranks.push_back({{"dp_rank", k.dp},
                       {"batch", k.batch},
                       {"log_lines", k.log_lines},
                       {"step_time_s", optj(k.step_time_s)},
                       {"trace_file", k.trace_file},
                       {"throughput_per_gpu", k.throughput_per_gpu},
                       {"log_throughput", optj(k.log_throughput)}});
    windows.push_back({{"role", w.role},
                       {"profile_id", w.profile_id},
                       {"start_time", w.start_time},
                       {"trace_dir_in_log", w.trace_dir_in_log},
                       {"global_batch", w.global_batch},
                       {"step_time_s", w.step_time_s},
                       {"step_time_source", w.step_time_source},
                       {"gpus", w.gpus},
                       {"tokens_per_s_per_gpu", w.tokens_per_s_per_gpu},
                       {"log_throughput_total", optj(w.log_throughput_total)},
                       {"log_throughput_per_gpu", optj(w.log_throughput_per_gpu)},
                       {"step_periods_s", w.step_periods_s},
                       {"expert_balancedness", optj(w.expert_balancedness)},
                       {"balancedness_passes", w.balancedness_passes},
                       {"ranks", ranks}});
  }
  return {{"windows", windows}, {"warnings", r.warnings}};
}

std::string to_html(const AnalyzeReport& r) {
  using bench::xml_escape;
  std::string o =
      "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>pdserve analyze</title>\n"
      "<style>body{font-family:sans-serif;margin:24px}table{border-collapse:collapse}"
      "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}</style></head><body>\n"
      "<h1>Per-GPU throughput</h1>\n";
  for (const auto& w : r.windows) {
    const bool decode = w.role == "decode";
    o += fmt::format("<h2>Profile {} ({})</h2>\n<p>Started {}; step time <b>{:.2f} ms</b> from {}; {} GPUs; "
                     "<b>{:.2f} {} tokens/s per GPU</b> = {:.1f} / {:.4f} s / {}.</p>\n",
                     xml_escape(w.profile_id), w.role, xml_escape(w.start_time), w.step_time_s * 1000,
                     xml_escape(w.step_time_source), w.gpus, w.tokens_per_s_per_gpu, decode ? "output" : "input",
                     w.global_batch, w.step_time_s, w.gpus);
    o += fmt::format("<table><tr><th>rank</th><th>{}</th><th>log lines</th><th>step (ms)</th><th>tok/s/GPU</th>"
                     "<th>log tok/s</th></tr>\n",
                     decode ? "batch (#running-req)" : "#new-token per batch");
    for (const auto& k : w.ranks)
      o += fmt::format("<tr><td>DP{}</td><td>{:.1f}</td><td>{}</td><td>{}</td><td>{:.2f}</td><td>{}</td></tr>\n", k.dp,
                       k.batch, k.log_lines,
                       opt(k.step_time_s ? std::optional<double>(*k.step_time_s * 1000) : std::nullopt),
                       k.throughput_per_gpu, opt(k.log_throughput));
    o += fmt::format("<tr><th>total</th><th>{:.1f}</th><th></th><th>{:.2f}</th><th>{:.2f}</th><th>{}</th></tr></table>\n",
                     w.global_batch, w.step_time_s * 1000, w.tokens_per_s_per_gpu, opt(w.log_throughput_total));
    if (w.expert_balancedness)
      o += fmt::format("<p>Expert balancedness {:.3f} (mean of {} passes' <code>[Expert Balancedness]</code> lines).</p>\n",
                       *w.expert_balancedness, w.balancedness_passes);
    bench::SvgFigure fig;
    std::vector<std::string> labels;
    std::vector<double> batches;
    for (const auto& k : w.ranks) {
      labels.push_back("DP" + std::to_string(k.dp));
      batches.push_back(k.batch);
    }
    fig.add_bar_chart("Rank imbalance: batch per DP rank", decode ? "#running-req" : "#new-token", labels, batches);
    std::vector<double> ms;
    for (double p : w.step_periods_s) ms.push_back(p * 1000);
    fig.add_histogram("Step time distribution (trace)", "step period (ms)", ms, 20);
    o += fig.render(2);
  }
  for (const char* role : {"decode", "prefill"}) {
    std::vector<bench::Series> batch, tput;
    for (const auto& s : r.series)
      if (s.role == role) {
        batch.push_back({"DP" + std::to_string(s.dp), s.t, s.running});
        tput.push_back({"DP" + std::to_string(s.dp), s.t, s.throughput});
      }
    if (batch.empty()) continue;
    const bool decode = std::string(role) == "decode";
    o += fmt::format("<h2>{} over time</h2>\n", decode ? "Decode" : "Prefill");
    bench::SvgFigure fig;
    fig.add_line_chart(decode ? "Batch (#running-req) per rank" : "#new-token per prefill batch", "time (s)",
                       decode ? "requests" : "tokens", batch);
    fig.add_line_chart(decode ? "Gen throughput per rank (log)" : "Input throughput per rank (log)", "time (s)",
                       "tokens/s", tput);
    o += fig.render(2);
  }
  if (!r.warnings.empty()) {
    o += "<h2>Warnings</h2><ul>\n";
    for (const auto& w : r.warnings) o += "<li>" + xml_escape(w) + "</li>\n";
    o += "</ul>\n";
  }
  o += "</body></html>\n";
  return o;
}

}  // namespace pdserve::profile
