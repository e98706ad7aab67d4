// Deadlines of the end-to-end tests, stretched by PDSERVE_TEST_TIME_SCALE (an integer >= 1;
// scripts/sanitize.sh sets it for the ASan + UBSan build, whose servers run several times slower,
// so that a bounded wait fails on a hang, not on instrumentation).
#pragma once

#include <chrono>
#include <cstdlib>
#include <string>

namespace pdserve::test {

inline int time_scale() {
  static const int scale = [] {
    const char* v = std::getenv("PDSERVE_TEST_TIME_SCALE");
    const int n = v ? std::atoi(v) : 1;
    return n > 0 ? n : 1;
  }();
  return scale;
}
inline std::chrono::seconds scaled(int seconds) { return std::chrono::seconds(seconds * time_scale()); }
// The same as a decimal string, for timeouts passed to servers through their environment.
inline std::string scaled_str(int seconds) { return std::to_string(seconds * time_scale()); }

}  // namespace pdserve::test
