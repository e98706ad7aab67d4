// Process-wide logging with SGLang's line format, so SGLang's log tooling reads our logs:
//
//   [2025-11-22 23:05:30 DP0 TP0 EP0] Decode batch, #running-req: 1024, ...
//   [2025-11-22 18:06:33] The server is fired up and ready to roll!
//
// The rank part ("{prefix}") belongs to the calling thread: a scheduler thread sets its rank once
// with set_thread_rank(); HTTP/tokenizer threads set nothing and log without a prefix.
// Warnings, errors and critical messages get "WARNING: " / "ERROR: " / "CRITICAL: " in front of
// the message; the bracket part is the same for every level.
//
// The logger is the one piece of process-wide state in pdserve (a log is process-wide by nature).
// All functions are thread safe. Logging is synchronous: a line is on stderr (and every added
// sink, flushed) when the call returns, so lines are never lost on a crash.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "base/status.h"

namespace spdlog::sinks {
class sink;
}

namespace pdserve::log {

// A thread's place in the server, as SGLang prints it (sglang-spec §5):
// " DP{dp}" if dp_rank is set, " PP{pp}" if pp_size > 1, " TP{tp}" if tp_size > 1,
// " EP{ep}" if ep_size > 1.
struct RankPrefix {
  std::optional<int> dp_rank = std::nullopt;
  int pp_rank = 0, pp_size = 1;
  int tp_rank = 0, tp_size = 1;
  int ep_rank = 0, ep_size = 1;
};

// The prefix text with its leading space, e.g. " DP0 TP0 EP0"; empty when nothing applies.
std::string format_prefix(const RankPrefix& rank);

// Sets / clears the calling thread's prefix (other threads are not affected).
void set_thread_rank(const RankPrefix& rank);
void clear_thread_rank();
// The calling thread's current prefix text (as format_prefix returned it).
std::string thread_prefix();

// Sets a thread's rank for a scope and restores the previous prefix on exit.
class ScopedThreadRank {
 public:
  explicit ScopedThreadRank(const RankPrefix& rank);
  ~ScopedThreadRank();
  ScopedThreadRank(const ScopedThreadRank&) = delete;
  ScopedThreadRank& operator=(const ScopedThreadRank&) = delete;

 private:
  std::string saved_;
};

enum class Level { kDebug, kInfo, kWarning, kError, kCritical };

// "debug" | "info" | "warning" | "error" | "critical" (SGLang's --log-level values).
std::optional<Level> parse_level(std::string_view name);
// Sets the minimum level; throws std::invalid_argument for an unknown name. Before init() the
// level is info. May be called again to change the level.
void init(const std::string& level);
void set_level(Level level);
Level level();

// Also writes every line to `path` (appended; created if missing), flushed per line.
Status add_file_sink(const std::string& path);
// Adds / removes any spdlog sink; the sink gets our line format. For tests and tools that capture
// log output (e.g. an ostream sink).
void add_sink(std::shared_ptr<spdlog::sinks::sink> sink);
void remove_sink(const std::shared_ptr<spdlog::sinks::sink>& sink);
// Turns the stderr sink off or on (on by default), e.g. for tools whose stderr is machine-read.
void set_stderr_enabled(bool enabled);

namespace detail {
bool enabled(Level level);
void write(Level level, std::string_view message);
}  // namespace detail

template <class... A>
void log(Level level, fmt::format_string<A...> f, A&&... args) {
  if (detail::enabled(level)) detail::write(level, fmt::format(f, std::forward<A>(args)...));
}
template <class... A>
void debug(fmt::format_string<A...> f, A&&... args) {
  log(Level::kDebug, f, std::forward<A>(args)...);
}
template <class... A>
void info(fmt::format_string<A...> f, A&&... args) {
  log(Level::kInfo, f, std::forward<A>(args)...);
}
template <class... A>
void warning(fmt::format_string<A...> f, A&&... args) {
  log(Level::kWarning, f, std::forward<A>(args)...);
}
template <class... A>
void error(fmt::format_string<A...> f, A&&... args) {
  log(Level::kError, f, std::forward<A>(args)...);
}
template <class... A>
void critical(fmt::format_string<A...> f, A&&... args) {
  log(Level::kCritical, f, std::forward<A>(args)...);
}

}  // namespace pdserve::log
