#include "base/clock.h"

namespace pdserve {

std::string Clock::format_timestamp(std::time_t t) {
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[32];
  size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return std::string(buf, n);
}

std::string Clock::timestamp() {
  return format_timestamp(std::chrono::system_clock::to_time_t(std::chrono::system_clock::now()));
}

}  // namespace pdserve
