#include "profile/trace_reader.h"

#include <zlib.h>

#include <algorithm>
#include <map>
#include <regex>

namespace pdserve::profile {

using nlohmann::json;

Result<std::string> read_gzip_file(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) return make_error(ErrorCode::kNotFound, "cannot open {}", path);
  gzbuffer(f, 1 << 20);
  std::string out;
  std::vector<char> buf(1 << 20);
  for (;;) {
    const int n = gzread(f, buf.data(), static_cast<unsigned>(buf.size()));
    if (n < 0) {
      int err = 0;
      std::string msg = gzerror(f, &err);
      gzclose(f);
      return make_error(ErrorCode::kCorrupt, "{}: {}", path, msg);
    }
    if (n == 0) break;
    out.append(buf.data(), static_cast<size_t>(n));
  }
  gzclose(f);
  return out;
}

namespace {

std::string id_text(const json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_number()) return j.dump();
  return "";
}

}  // namespace

Result<Trace> read_chrome_trace(const std::string& path) {
  PDSERVE_ASSIGN_OR_RETURN(std::string text, read_gzip_file(path));
  json doc = json::parse(text, nullptr, false);
  if (doc.is_discarded()) return make_error(ErrorCode::kCorrupt, "{}: not valid JSON", path);
  const json* events = nullptr;
  if (doc.is_array()) events = &doc;  // the "JSON array format" of the Chrome trace spec
  else if (doc.is_object() && doc.contains("traceEvents") && doc["traceEvents"].is_array()) events = &doc["traceEvents"];
  if (!events) return make_error(ErrorCode::kCorrupt, "{}: no traceEvents array", path);
  Trace t;
  t.path = path;
  t.events.reserve(events->size());
  for (const auto& e : *events) {
    if (!e.is_object()) continue;
    TraceEvent ev;
    if (e.contains("name") && e["name"].is_string()) ev.name = e["name"].get<std::string>();
    if (e.contains("cat") && e["cat"].is_string()) ev.cat = e["cat"].get<std::string>();
    if (e.contains("ph") && e["ph"].is_string()) ev.ph = e["ph"].get<std::string>();
    if (e.contains("pid")) ev.pid = id_text(e["pid"]);
    if (e.contains("tid")) ev.tid = id_text(e["tid"]);
    if (e.contains("ts") && e["ts"].is_number()) ev.ts = e["ts"].get<double>();
    if (e.contains("dur") && e["dur"].is_number()) ev.dur = e["dur"].get<double>();
    if (e.contains("args")) ev.args = e["args"];
    t.events.push_back(std::move(ev));
  }
  return t;
}

std::optional<TraceName> parse_trace_name(const std::string& file_name) {
  static const std::regex re(
      R"(^(.*)-TP-(\d+)(?:-DP-(\d+))?(?:-PP-\d+)?(?:-EP-(\d+))?(?:-(EXTEND|DECODE))?\.trace\.json(?:\.gz)?$)");
  std::smatch m;
  if (!std::regex_match(file_name, m, re)) return std::nullopt;
  TraceName n;
  n.profile_id = m[1];
  n.tp = std::stoi(m[2]);
  if (m[3].matched) n.dp = std::stoi(m[3]);
  if (m[4].matched) n.ep = std::stoi(m[4]);
  if (m[5].matched) n.stage = m[5];
  return n;
}

Result<StepTiming> step_timing(const Trace& t) {
  auto ends_with = [](const std::string& s, const std::string& suf) {
    return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
  };
  // Marker kinds, most specific first; each is (label, predicate on the span name).
  const std::vector<std::pair<std::string, std::function<bool(const std::string&)>>> kinds = {
      {"run_batch", [&](const std::string& n) { return n == "run_batch" || ends_with(n, ": run_batch"); }},
      {"forward_decode/forward_extend",
       [&](const std::string& n) {
         return n == "forward_decode" || n == "forward_prefill" || ends_with(n, ": forward_decode") ||
                ends_with(n, ": forward_extend");
       }},
      {"forward", [&](const std::string& n) { return ends_with(n, ": forward"); }},
  };
  for (const auto& [label, match] : kinds) {
    std::map<std::string, std::vector<const TraceEvent*>> by_thread;
    for (const auto& e : t.events)
      if (e.ph == "X" && match(e.name)) by_thread[e.pid + "/" + e.tid].push_back(&e);
    if (by_thread.empty()) continue;
    auto best = std::max_element(by_thread.begin(), by_thread.end(),
                                 [](const auto& a, const auto& b) { return a.second.size() < b.second.size(); });
    auto evs = best->second;
    std::sort(evs.begin(), evs.end(), [](const TraceEvent* a, const TraceEvent* b) { return a->ts < b->ts; });
    StepTiming st;
    st.marker = label;
    double dsum = 0;
    // Relative to the first step: epoch microseconds in seconds would lose sub-microsecond bits.
    const double ts0 = evs.front()->ts;
    for (const TraceEvent* e : evs) {
      st.starts_s.push_back((e->ts - ts0) / 1e6);
      st.durations_s.push_back(e->dur / 1e6);
      dsum += e->dur / 1e6;
      if (e->args.is_object() && e->args.contains("batch_size") && e->args["batch_size"].is_number_integer())
        st.batch_sizes.push_back(e->args["batch_size"].get<int64_t>());
      if (e->args.is_object() && e->args.contains("batch_kind") && e->args["batch_kind"].is_string())
        st.kinds.push_back(e->args["batch_kind"].get<std::string>());
    }
    st.mean_duration_s = dsum / static_cast<double>(evs.size());
    st.period_s = evs.size() >= 2 ? (st.starts_s.back() - st.starts_s.front()) / static_cast<double>(evs.size() - 1)
                                  : st.mean_duration_s;
    return st;
  }
  return make_error(ErrorCode::kNotFound, "{}: no scheduler step spans (run_batch or forward) in the trace", t.path);
}

double period_of_kind(const StepTiming& st, const std::string& kind) {
  if (st.kinds.size() != st.starts_s.size()) return st.period_s;
  double sum = 0;
  int n = 0;
  for (size_t i = 1; i < st.starts_s.size(); ++i)
    if (st.kinds[i] == kind && st.kinds[i - 1] == kind) {
      sum += st.starts_s[i] - st.starts_s[i - 1];
      ++n;
    }
  return n ? sum / n : st.period_s;
}

}  // namespace pdserve::profile
