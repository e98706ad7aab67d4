#include "base/clock.h"

#include <cstdlib>
#include <regex>
#include <string>
#include <thread>

#include <gtest/gtest.h>

namespace pdserve {
namespace {

TEST(Clock, MonotonicAdvances) {
  Stopwatch sw;
  double a = Clock::monotonic();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  double b = Clock::monotonic();
  EXPECT_GE(b - a, 0.019);
  EXPECT_LT(b - a, 5.0);
  EXPECT_GE(sw.seconds(), 0.019);
  sw.reset();
  EXPECT_LT(sw.seconds(), 0.019);
}

TEST(Clock, TimestampFormat) {
  EXPECT_TRUE(std::regex_match(Clock::timestamp(), std::regex(R"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})")))
      << Clock::timestamp();
  // A fixed instant, rendered in UTC (timestamps are local time, so pin the zone for the test).
  const char* old_tz = std::getenv("TZ");
  std::string saved = old_tz ? old_tz : "";
  ::setenv("TZ", "UTC0", 1);
  ::tzset();
  EXPECT_EQ(Clock::format_timestamp(1763834793), "2025-11-22 18:06:33");
  if (old_tz) {
    ::setenv("TZ", saved.c_str(), 1);
  } else {
    ::unsetenv("TZ");
  }
  ::tzset();
  EXPECT_GT(Clock::unix_seconds(), 1.7e9);
}

}  // namespace
}  // namespace pdserve
