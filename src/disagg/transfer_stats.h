// Transfer observations for the server's Prometheus histograms (sglang:kv_transfer_latency_ms,
// sglang:kv_transfer_speed_gb_s). disagg/ sits below server/, so it only records; the server drains
// the samples into its histograms at scrape time.
#pragma once

#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

namespace pdserve::disagg {

struct TransferSample {
  double latency_ms = 0;
  double speed_gb_s = 0;
  int64_t bytes = 0;
};

class TransferStats {
 public:
  void record(double seconds, int64_t bytes) {
    TransferSample s{seconds * 1e3, seconds > 0 ? static_cast<double>(bytes) / seconds / 1e9 : 0.0, bytes};
    std::lock_guard<std::mutex> lock(mu_);
    if (samples_.size() < kMaxPending) samples_.push_back(s);
    ++count_;
    bytes_ += bytes;
  }
  std::vector<TransferSample> drain() {
    std::lock_guard<std::mutex> lock(mu_);
    return std::exchange(samples_, {});
  }
  int64_t count() const {
    std::lock_guard<std::mutex> lock(mu_);
    return count_;
  }
  int64_t bytes() const {
    std::lock_guard<std::mutex> lock(mu_);
    return bytes_;
  }

 private:
  static constexpr size_t kMaxPending = 100000;  // without a scraper, stop collecting
  mutable std::mutex mu_;
  std::vector<TransferSample> samples_;
  int64_t count_ = 0, bytes_ = 0;
};

}  // namespace pdserve::disagg
