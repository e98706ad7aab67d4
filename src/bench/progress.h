// A tqdm-style progress line on stderr ("100%|##########| 1000/1000 [00:12<00:00, 81.2it/s]"),
// drawn only when stderr is a terminal, so logs and pipes get no carriage-return noise.
#pragma once

#include <cstdint>

namespace pdserve::bench {

class ProgressBar {
 public:
  // enabled: the caller's wish (not --disable-tqdm); the bar still stays off without a terminal.
  ProgressBar(int64_t total, bool enabled);
  ~ProgressBar();
  void update(int64_t n = 1);
  bool active() const { return active_; }

 private:
  void draw(bool force);
  int64_t total_, done_ = 0;
  bool active_;
  double start_, last_draw_ = 0;
};

}  // namespace pdserve::bench
