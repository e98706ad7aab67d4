#include "bench/progress.h"

#include <unistd.h>

#include <cstdio>
#include <string>

#include <fmt/format.h>

#include "base/clock.h"

namespace pdserve::bench {

namespace {
std::string mmss(double s) {
  const auto t = static_cast<int64_t>(s < 0 ? 0 : s);
  return fmt::format("{:02}:{:02}", t / 60, t % 60);
}
}  // namespace

ProgressBar::ProgressBar(int64_t total, bool enabled)
    : total_(total), active_(enabled && ::isatty(2) == 1), start_(Clock::monotonic()) {
  if (active_) draw(true);
}

ProgressBar::~ProgressBar() {
  if (active_) std::fputs("\n", stderr);
}

void ProgressBar::update(int64_t n) {
  done_ += n;
  if (active_) draw(done_ >= total_);
}

void ProgressBar::draw(bool force) {
  const double now = Clock::monotonic();
  if (!force && now - last_draw_ < 0.1) return;  // at most 10 redraws a second
  last_draw_ = now;
  const double el = now - start_;
  const double rate = el > 0 ? static_cast<double>(done_) / el : 0;
  const double left = rate > 0 ? static_cast<double>(total_ - done_) / rate : 0;
  const int width = 10;
  const int filled = total_ > 0 ? static_cast<int>(width * done_ / total_) : 0;
  std::string bar(static_cast<size_t>(filled), '#');
  bar.resize(width, ' ');
  std::fprintf(stderr, "\r%3d%%|%s| %lld/%lld [%s<%s, %.2fit/s]", total_ ? static_cast<int>(100 * done_ / total_) : 100,
               bar.c_str(), static_cast<long long>(done_), static_cast<long long>(total_), mmss(el).c_str(),
               mmss(left).c_str(), rate);
  std::fflush(stderr);
}

}  // namespace pdserve::bench
