// Clocks: a monotonic clock for durations and throughput, the wall clock for timestamps.
#pragma once

#include <chrono>
#include <ctime>
#include <string>

namespace pdserve {

struct Clock {
  // Seconds on a monotonic clock (arbitrary origin): only differences mean anything.
  static double monotonic() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  }
  // Seconds since the Unix epoch (wall clock; may jump).
  static double unix_seconds() {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  }
  // Local time "YYYY-MM-DD HH:MM:SS", the format of SGLang's log lines.
  static std::string timestamp();
  static std::string format_timestamp(std::time_t t);
};

// Elapsed monotonic time since construction or the last reset().
class Stopwatch {
 public:
  Stopwatch() : start_(Clock::monotonic()) {}
  double seconds() const { return Clock::monotonic() - start_; }
  void reset() { start_ = Clock::monotonic(); }

 private:
  double start_;
};

}  // namespace pdserve
