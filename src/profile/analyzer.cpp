#include "profile/analyzer.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include <fmt/format.h>

namespace pdserve::profile {

namespace {

struct Stat {
  double time = 0;
  double value = 0;                 // #running-req (decode) or #new-token (prefill)
  std::optional<double> throughput; // gen / input throughput
};

std::optional<Stat> stat_of(const LogLine& l, bool decode) {
  if (decode) {
    auto d = parse_decode_batch(l.message);
    if (!d) return std::nullopt;
    return Stat{l.time, static_cast<double>(d->running), d->gen_throughput};
  }
  auto p = parse_prefill_batch(l.message);
  if (!p) return std::nullopt;
  return Stat{l.time, static_cast<double>(p->new_token), p->input_throughput};
}

struct RankWindow {
  std::string dir, start_time;
  double start = 0;
  std::vector<Stat> stats;
  std::vector<double> balancedness;  // per-pass lines inside the window
  std::optional<Stat> before;  // the last stat line before the window opened
  bool open = true;
};

void analyze_role(const std::vector<ParsedLog>& logs, bool decode,
                  const std::vector<std::pair<std::string, StepTiming>>& traces, const AnalyzeOptions& o,
                  double t_origin, AnalyzeReport& report) {
  const std::string role = decode ? "decode" : "prefill";
  // rank -> profile id -> window; lines of one rank are in time order within each file.
  std::map<int, std::map<std::string, RankWindow>> windows;
  std::map<int, RankSeries> series;
  for (const auto& log : logs) {
    std::map<int, std::string> open_id;  // per rank in this file
    std::map<int, Stat> last_stat;
    for (const auto& l : log.lines) {
      const int dp = l.dp.value_or(0);
      if (auto ps = parse_profile_start(l.message)) {
        if (!o.profile_id.empty() && ps->profile_id != o.profile_id) continue;
        auto& w = windows[dp][ps->profile_id];
        if (w.stats.empty() && !w.before) {  // by stage, a second start line keeps the first window
          w.dir = ps->dir;
          w.start = l.time;
          w.start_time = l.timestamp;
          if (last_stat.count(dp)) w.before = last_stat[dp];
        }
        w.open = true;
        open_id[dp] = ps->profile_id;
        continue;
      }
      if (is_profile_stop(l.message)) {
        if (open_id.count(dp)) windows[dp][open_id[dp]].open = false;
        open_id.erase(dp);
        continue;
      }
      if (auto b = parse_pass_balancedness(l.message)) {
        if (open_id.count(dp)) windows[dp][open_id[dp]].balancedness.push_back(*b);
        continue;
      }
      auto s = stat_of(l, decode);
      if (!s) continue;
      last_stat[dp] = *s;
      auto& ser = series[dp];
      ser.role = role;
      ser.dp = dp;
      ser.t.push_back(l.time - t_origin);
      ser.running.push_back(s->value);
      ser.throughput.push_back(s->throughput.value_or(0));
      if (open_id.count(dp)) windows[dp][open_id[dp]].stats.push_back(*s);
    }
  }
  for (auto& [dp, s] : series) report.series.push_back(std::move(s));

  // Windows by id, ordered by their first start.
  std::map<std::string, double> id_start;
  for (const auto& [dp, ws] : windows)
    for (const auto& [id, w] : ws)
      if (!id_start.count(id) || w.start < id_start[id]) id_start[id] = w.start;
  std::vector<std::string> ids;
  for (const auto& [id, t] : id_start) ids.push_back(id);
  std::sort(ids.begin(), ids.end(), [&](const auto& a, const auto& b) { return id_start[a] < id_start[b]; });

  for (const auto& id : ids) {
    WindowResult wr;
    wr.role = role;
    wr.profile_id = id;
    // Traces of this window: rank = DP in the name, else TP (with DP attention each TP rank is a DP rank).
    std::map<int, std::pair<std::string, StepTiming>> rank_trace;
    std::set<int> trace_tps;
    for (const auto& [file, timing] : traces) {
      auto n = parse_trace_name(std::filesystem::path(file).filename().string());
      if (!n || n->profile_id != id) continue;
      if (!n->stage.empty() && (n->stage == "DECODE") != decode) continue;
      trace_tps.insert(n->tp);
      rank_trace[n->dp.value_or(n->tp)] = {file, timing};
    }
    double trace_sum = 0;
    int trace_n = 0, trace_steps = 0;
    std::string marker;
    const std::string kind = decode ? "decode" : "prefill";
    for (const auto& [r, ft] : rank_trace) {
      trace_sum += period_of_kind(ft.second, kind);
      ++trace_n;
      trace_steps += static_cast<int>(ft.second.starts_s.size());
      marker = ft.second.marker;
      const auto& k = ft.second.kinds;
      for (size_t i = 1; i < ft.second.starts_s.size(); ++i)
        if (k.size() != ft.second.starts_s.size() || (k[i] == kind && k[i - 1] == kind))
          wr.step_periods_s.push_back(ft.second.starts_s[i] - ft.second.starts_s[i - 1]);
    }
    double estimate_sum = 0;
    int estimate_n = 0;
    for (auto& [dp, ws] : windows) {
      auto it = ws.find(id);
      if (it == ws.end()) continue;
      const RankWindow& w = it->second;
      if (wr.start_time.empty() || w.start_time < wr.start_time) wr.start_time = w.start_time;
      wr.trace_dir_in_log = w.dir;
      RankResult rr;
      rr.dp = dp;
      rr.log_lines = static_cast<int>(w.stats.size());
      std::vector<Stat> used = w.stats;
      if (used.empty() && w.before) {
        used.push_back(*w.before);
        report.warnings.push_back(fmt::format("{} DP{} logged no statistics line in window {}; used the last one before it",
                                              role, dp, id));
      }
      if (used.empty()) {
        report.warnings.push_back(fmt::format("{} DP{} has no statistics line for window {}", role, dp, id));
      }
      double sum = 0, tsum = 0;
      int tn = 0;
      for (const auto& s : used) {
        sum += s.value;
        if (s.throughput) {
          tsum += *s.throughput;
          ++tn;
        }
      }
      rr.batch = used.empty() ? 0 : sum / static_cast<double>(used.size());
      if (tn) rr.log_throughput = tsum / tn;
      if (auto t = rank_trace.find(dp); t != rank_trace.end()) {
        rr.step_time_s = period_of_kind(t->second.second, kind);
        rr.trace_file = t->second.first;
      }
      if (rr.log_throughput && *rr.log_throughput > 0 && rr.batch > 0) {
        estimate_sum += rr.batch / *rr.log_throughput;
        ++estimate_n;
      }
      wr.global_batch += rr.batch;
      wr.ranks.push_back(rr);
      for (double b : w.balancedness) {
        wr.expert_balancedness = wr.expert_balancedness.value_or(0) + b;
        ++wr.balancedness_passes;
      }
    }
    if (wr.balancedness_passes > 0) *wr.expert_balancedness /= wr.balancedness_passes;
    if (trace_n > 0) {
      wr.step_time_s = trace_sum / trace_n;
      wr.step_time_source = fmt::format("trace ({} file{}, {} steps, {} spans)", trace_n, trace_n > 1 ? "s" : "",
                                        trace_steps, marker);
    } else if (estimate_n > 0) {
      wr.step_time_s = estimate_sum / estimate_n;
      wr.step_time_source = "log estimate (batch / logged throughput; no trace found)";
      report.warnings.push_back(fmt::format("no trace for profile id {} in '{}': step time estimated from the log", id,
                                            o.trace_dir));
    } else {
      wr.step_time_source = "unknown (no trace, no throughput in the log)";
      report.warnings.push_back(fmt::format("no step time for profile id {}", id));
    }
    wr.gpus = o.num_gpus.value_or(std::max<int>(static_cast<int>(wr.ranks.size()), static_cast<int>(trace_tps.size())));
    if (wr.step_time_s > 0 && wr.gpus > 0) wr.tokens_per_s_per_gpu = wr.global_batch / wr.step_time_s / wr.gpus;
    double total = 0;
    bool all = !wr.ranks.empty();
    for (auto& rr : wr.ranks) {
      const double st = rr.step_time_s.value_or(wr.step_time_s);
      rr.throughput_per_gpu = st > 0 ? rr.batch / st : 0;
      if (rr.log_throughput) total += *rr.log_throughput;
      else all = false;
    }
    if (all) {
      wr.log_throughput_total = total;
      if (wr.gpus > 0) wr.log_throughput_per_gpu = total / wr.gpus;
    }
    report.windows.push_back(std::move(wr));
  }
}

}  // namespace

AnalyzeReport analyze_parsed(const std::vector<ParsedLog>& decode, const std::vector<ParsedLog>& prefill,
                             const std::vector<std::pair<std::string, StepTiming>>& traces, const AnalyzeOptions& o) {
  AnalyzeReport report;
  double origin = 0;
  bool have = false;
  for (const auto* logs : {&decode, &prefill})
    for (const auto& l : *logs)
      if (!l.lines.empty() && (!have || l.lines.front().time < origin)) {
        origin = l.lines.front().time;
        have = true;
      }
  analyze_role(decode, true, traces, o, origin, report);
  analyze_role(prefill, false, traces, o, origin, report);
  if (report.windows.empty())
    report.warnings.push_back(o.profile_id.empty() ? "no profiling window (\"Profiling starts ...\") in the logs"
                                                   : "no profiling window with profile id " + o.profile_id + " in the logs");
  return report;
}

Result<AnalyzeReport> analyze(const AnalyzeOptions& o) {
  if (o.decode_logs.empty() && o.prefill_logs.empty())
    return make_error(ErrorCode::kInvalidArgument, "give at least one --log (decode) or --prefill-log file");
  if (o.num_gpus && *o.num_gpus <= 0) return make_error(ErrorCode::kInvalidArgument, "--num-gpus must be > 0");
  std::vector<ParsedLog> decode, prefill;
  std::set<std::string> ids;
  for (const auto* paths : {&o.decode_logs, &o.prefill_logs})
    for (const auto& p : *paths) {
      PDSERVE_ASSIGN_OR_RETURN(auto lines, read_log_file(p));
      for (const auto& l : lines)
        if (auto ps = parse_profile_start(l.message)) ids.insert(ps->profile_id);
      (paths == &o.decode_logs ? decode : prefill).push_back(ParsedLog{std::move(lines)});
    }
  std::vector<std::pair<std::string, StepTiming>> traces;
  std::vector<std::string> warnings;
  if (!o.trace_dir.empty()) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (!fs::is_directory(o.trace_dir, ec))
      return make_error(ErrorCode::kNotFound, "--trace-dir {} is not a folder", o.trace_dir);
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(o.trace_dir, ec)) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      auto n = parse_trace_name(f.filename().string());
      // Only the windows asked about: torch traces can be gigabytes.
      if (!n || !ids.count(n->profile_id) || (!o.profile_id.empty() && n->profile_id != o.profile_id)) continue;
      auto t = read_chrome_trace(f.string());
      if (!t) {
        warnings.push_back(t.error().message());
        continue;
      }
      auto st = step_timing(*t);
      if (!st) {
        warnings.push_back(st.error().message());
        continue;
      }
      traces.emplace_back(f.string(), std::move(*st));
    }
  }
  auto report = analyze_parsed(decode, prefill, traces, o);
  report.warnings.insert(report.warnings.begin(), warnings.begin(), warnings.end());
  return report;
}

}  // namespace pdserve::profile
