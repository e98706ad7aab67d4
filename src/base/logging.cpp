#include "base/logging.h"

#include <mutex>
#include <stdexcept>

#include <spdlog/logger.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/dist_sink.h>
#include <spdlog/sinks/stdout_sinks.h>

namespace pdserve::log {
namespace {

// The flag formatter below runs on the thread that logs (the logger is synchronous), so a
// thread_local is the calling thread's prefix.
thread_local std::string t_prefix;

// '%*' in the pattern: the calling thread's rank prefix.
class RankPrefixFlag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg&, const std::tm&, spdlog::memory_buf_t& dest) override {
    dest.append(t_prefix.data(), t_prefix.data() + t_prefix.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<RankPrefixFlag>(); }
};

// '%q' in the pattern: "WARNING: " / "ERROR: " / "CRITICAL: " for those levels, else nothing.
class LevelTagFlag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
    std::string_view tag;
    switch (msg.level) {
      case spdlog::level::warn: tag = "WARNING: "; break;
      case spdlog::level::err: tag = "ERROR: "; break;
      case spdlog::level::critical: tag = "CRITICAL: "; break;
      default: break;
    }
    dest.append(tag.data(), tag.data() + tag.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<LevelTagFlag>(); }
};

// SGLang: "[%(asctime)s{prefix}] %(message)s" with datefmt "%Y-%m-%d %H:%M:%S" (local time).
std::unique_ptr<spdlog::formatter> make_formatter() {
  auto f = std::make_unique<spdlog::pattern_formatter>();
  f->add_flag<RankPrefixFlag>('*').add_flag<LevelTagFlag>('q').set_pattern("[%Y-%m-%d %H:%M:%S%*] %q%v");
  return f;
}

spdlog::level::level_enum to_spdlog(Level level) {
  switch (level) {
    case Level::kDebug: return spdlog::level::debug;
    case Level::kInfo: return spdlog::level::info;
    case Level::kWarning: return spdlog::level::warn;
    case Level::kError: return spdlog::level::err;
    case Level::kCritical: return spdlog::level::critical;
  }
  return spdlog::level::info;
}

// All sinks hang off one dist_sink, whose add/remove are locked against concurrent logging.
struct State {
  std::shared_ptr<spdlog::sinks::dist_sink_mt> dist = std::make_shared<spdlog::sinks::dist_sink_mt>();
  std::shared_ptr<spdlog::sinks::sink> stderr_sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  std::shared_ptr<spdlog::logger> logger;
  std::mutex mu;  // guards stderr_on
  bool stderr_on = true;

  State() {
    logger = std::make_shared<spdlog::logger>("pdserve", dist);
    logger->set_formatter(make_formatter());
    logger->set_level(spdlog::level::info);
    logger->flush_on(spdlog::level::trace);
    attach(stderr_sink);
  }
  void attach(const std::shared_ptr<spdlog::sinks::sink>& sink) {
    sink->set_formatter(make_formatter());
    dist->add_sink(sink);
  }
};

State& state() {
  static State s;  // constructed once, thread-safely, on first use
  return s;
}

}  // namespace

std::string format_prefix(const RankPrefix& r) {
  std::string out;
  if (r.dp_rank) out += fmt::format(" DP{}", *r.dp_rank);
  if (r.pp_size > 1) out += fmt::format(" PP{}", r.pp_rank);
  if (r.tp_size > 1) out += fmt::format(" TP{}", r.tp_rank);
  if (r.ep_size > 1) out += fmt::format(" EP{}", r.ep_rank);
  return out;
}

void set_thread_rank(const RankPrefix& rank) { t_prefix = format_prefix(rank); }
void clear_thread_rank() { t_prefix.clear(); }
std::string thread_prefix() { return t_prefix; }

ScopedThreadRank::ScopedThreadRank(const RankPrefix& rank) : saved_(t_prefix) { set_thread_rank(rank); }
ScopedThreadRank::~ScopedThreadRank() { t_prefix = std::move(saved_); }

std::optional<Level> parse_level(std::string_view name) {
  if (name == "debug") return Level::kDebug;
  if (name == "info") return Level::kInfo;
  if (name == "warning") return Level::kWarning;
  if (name == "error") return Level::kError;
  if (name == "critical") return Level::kCritical;
  return std::nullopt;
}

void init(const std::string& level) {
  auto l = parse_level(level);
  if (!l)
    throw std::invalid_argument("unknown log level '" + level +
                                "' (expected debug, info, warning, error or critical)");
  set_level(*l);
}

void set_level(Level level) { state().logger->set_level(to_spdlog(level)); }

Level level() {
  switch (state().logger->level()) {
    case spdlog::level::trace:
    case spdlog::level::debug: return Level::kDebug;
    case spdlog::level::info: return Level::kInfo;
    case spdlog::level::warn: return Level::kWarning;
    case spdlog::level::err: return Level::kError;
    default: return Level::kCritical;
  }
}

Status add_file_sink(const std::string& path) {
  std::shared_ptr<spdlog::sinks::sink> sink;
  try {
    sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path, /*truncate=*/false);
  } catch (const spdlog::spdlog_ex& e) {
    return make_error(ErrorCode::kIo, "cannot open log file {}: {}", path, e.what());
  }
  state().attach(sink);
  return ok_status();
}

void add_sink(std::shared_ptr<spdlog::sinks::sink> sink) { state().attach(sink); }

void remove_sink(const std::shared_ptr<spdlog::sinks::sink>& sink) { state().dist->remove_sink(sink); }

void set_stderr_enabled(bool enabled) {
  State& s = state();
  std::lock_guard lock(s.mu);
  if (enabled == s.stderr_on) return;
  if (enabled) {
    s.dist->add_sink(s.stderr_sink);
  } else {
    s.dist->remove_sink(s.stderr_sink);
  }
  s.stderr_on = enabled;
}

namespace detail {

bool enabled(Level level) { return state().logger->should_log(to_spdlog(level)); }

void write(Level level, std::string_view message) {
  state().logger->log(to_spdlog(level), spdlog::string_view_t(message.data(), message.size()));
}

}  // namespace detail
}  // namespace pdserve::log
