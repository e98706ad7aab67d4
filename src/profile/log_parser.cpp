#include "profile/log_parser.h"

#include <ctime>
#include <fstream>
#include <regex>
#include <type_traits>

namespace pdserve::profile {

namespace {

template <class T>
std::optional<T> to_number(const std::string& s) {
  try {
    size_t pos = 0;
    T v;
    if constexpr (std::is_floating_point_v<T>) v = std::stod(s, &pos);
    else v = std::stoll(s, &pos);
    if (pos == s.size()) return v;
  } catch (...) {
  }
  return std::nullopt;
}
std::optional<double> to_double(const std::string& s) { return to_number<double>(s); }
std::optional<int64_t> to_int(const std::string& s) { return to_number<int64_t>(s); }

// The rest of the message after a "Decode batch"/"Prefill batch" head, or nullopt.
std::optional<std::string_view> after_head(std::string_view m, std::string_view head) {
  if (m.substr(0, head.size()) != head) return std::nullopt;
  m.remove_prefix(head.size());
  if (!m.empty() && m[0] == ' ' && m.size() > 1 && m[1] == '[') {  // "Decode batch [12], "
    const auto close = m.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    m.remove_prefix(close + 1);
  }
  if (m.empty() || (m[0] != ',' && m[0] != '.')) return std::nullopt;
  return m.substr(1);
}

}  // namespace

std::optional<LogLine> parse_log_line(std::string_view line) {
  static const std::regex re(R"(^\[(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})([^\]]*)\] ?(.*)$)");
  std::cmatch m;
  if (!std::regex_match(line.data(), line.data() + line.size(), m, re)) return std::nullopt;
  LogLine l;
  std::tm tm{};
  tm.tm_year = std::stoi(m[1]) - 1900;
  tm.tm_mon = std::stoi(m[2]) - 1;
  tm.tm_mday = std::stoi(m[3]);
  tm.tm_hour = std::stoi(m[4]);
  tm.tm_min = std::stoi(m[5]);
  tm.tm_sec = std::stoi(m[6]);
  l.time = static_cast<double>(timegm(&tm));
  l.timestamp = std::string(line.substr(1, 19));
  static const std::regex rank_re(R"( (DP|TP|EP|PP)(\d+))");
  const std::string prefix = m[7];
  for (std::sregex_iterator it(prefix.begin(), prefix.end(), rank_re), end; it != end; ++it) {
    const int v = std::stoi((*it)[2]);
    if ((*it)[1] == "DP") l.dp = v;
    else if ((*it)[1] == "TP") l.tp = v;
    else if ((*it)[1] == "EP") l.ep = v;
  }
  l.message = m[8];
  while (!l.message.empty() && (l.message.back() == '\r' || l.message.back() == ' ')) l.message.pop_back();
  return l;
}

std::map<std::string, std::string> parse_stat_fields(std::string_view message) {
  std::map<std::string, std::string> f;
  size_t pos = 0;
  while (pos < message.size()) {
    size_t end = message.find(',', pos);
    if (end == std::string_view::npos) end = message.size();
    std::string_view part = message.substr(pos, end - pos);
    pos = end + 1;
    const auto colon = part.rfind(": ");
    if (colon == std::string_view::npos) continue;
    std::string key(part.substr(0, colon)), value(part.substr(colon + 2));
    auto trim = [](std::string& s) {
      while (!s.empty() && s.front() == ' ') s.erase(s.begin());
      while (!s.empty() && (s.back() == ' ' || s.back() == ',')) s.pop_back();
    };
    trim(key);
    trim(value);
    f[key] = value;
  }
  return f;
}

std::optional<DecodeStats> parse_decode_batch(std::string_view message) {
  auto rest = after_head(message, "Decode batch");
  if (!rest) return std::nullopt;
  const auto f = parse_stat_fields(*rest);
  auto running = f.count("#running-req") ? to_int(f.at("#running-req")) : std::nullopt;
  if (!running) return std::nullopt;
  DecodeStats s;
  s.running = *running;
  if (f.count("#token")) s.tokens = to_int(f.at("#token")).value_or(0);
  if (f.count("#queue-req")) s.queue = to_int(f.at("#queue-req")).value_or(0);
  if (f.count("gen throughput (token/s)")) s.gen_throughput = to_double(f.at("gen throughput (token/s)"));
  return s;
}

std::optional<PrefillStats> parse_prefill_batch(std::string_view message) {
  auto rest = after_head(message, "Prefill batch");
  if (!rest) return std::nullopt;
  const auto f = parse_stat_fields(*rest);
  auto new_token = f.count("#new-token") ? to_int(f.at("#new-token")) : std::nullopt;
  if (!new_token) return std::nullopt;
  PrefillStats s;
  s.new_token = *new_token;
  if (f.count("#new-seq")) s.new_seq = to_int(f.at("#new-seq")).value_or(0);
  if (f.count("#cached-token")) s.cached_token = to_int(f.at("#cached-token")).value_or(0);
  if (f.count("#running-req")) s.running = to_int(f.at("#running-req")).value_or(0);
  if (f.count("#queue-req")) s.queue = to_int(f.at("#queue-req")).value_or(0);
  if (f.count("input throughput (token/s)")) s.input_throughput = to_double(f.at("input throughput (token/s)"));
  return s;
}

std::optional<ProfileStart> parse_profile_start(std::string_view message) {
  // S-1121 "(with profile id: ID)", S-0506 "(with id ID)", by stage "Profiling starts for EXTEND. ...".
  static const std::regex re(
      R"(^Profiling starts(?: for (EXTEND|DECODE))?\. Traces will be saved to: (.*) \(with (?:profile id: |id )([^)]*)\)$)");
  std::cmatch m;
  if (!std::regex_match(message.data(), message.data() + message.size(), m, re)) return std::nullopt;
  return ProfileStart{m[2], m[3], m[1].matched ? std::string(m[1]) : std::string()};
}

bool is_profile_stop(std::string_view message) { return message.substr(0, 14) == "Stop profiling"; }

std::optional<double> parse_pass_balancedness(std::string_view message) {
  static const std::regex re(R"(^\[Expert Balancedness\] forward_pass_id=\d+ current_pass_balancedness=([0-9.]+))");
  std::cmatch m;
  if (!std::regex_search(message.data(), message.data() + message.size(), m, re)) return std::nullopt;
  return to_double(m[1].str());
}

Result<std::vector<LogLine>> read_log_file(const std::string& path) {
  std::ifstream f(path);
  if (!f) return make_error(ErrorCode::kNotFound, "cannot open the log {}", path);
  std::vector<LogLine> out;
  std::string line;
  while (std::getline(f, line))
    if (auto l = parse_log_line(line)) out.push_back(std::move(*l));
  return out;
}

}  // namespace pdserve::profile
