// When and how long to wait before re-sending a request (sglang-spec §3.2): only 408, 429, 500,
// 502, 503, 504 and transport errors are retried (other 4xx are the client's fault and pass
// through); the backoff grows geometrically, is capped, and is spread by jitter so that clients
// that failed together do not come back together.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>

namespace pdserve::router {

struct RetryConfig {
  bool enabled = true;
  int max_retries = 5;  // attempts in all, as the Rust router's loop `for attempt in 0..max_retries`
  int64_t initial_backoff_ms = 50;
  int64_t max_backoff_ms = 30000;
  double multiplier = 1.5;
  double jitter = 0.2;

  int attempts() const { return enabled ? std::max(1, max_retries) : 1; }
};

inline bool is_retryable_status(int status) {
  return status == 408 || status == 429 || status == 500 || status == 502 || status == 503 || status == 504;
}

// Backoff before attempt `attempt + 1` (attempt counts from 0); `unit` is uniform in [0, 1).
inline std::chrono::milliseconds retry_backoff(const RetryConfig& c, int attempt, double unit) {
  double base = static_cast<double>(c.initial_backoff_ms) * std::pow(c.multiplier, attempt);
  base = std::min(base, static_cast<double>(c.max_backoff_ms));
  double jittered = base * (1.0 + c.jitter * (2.0 * unit - 1.0));
  return std::chrono::milliseconds(static_cast<int64_t>(std::max(0.0, std::round(jittered))));
}

}  // namespace pdserve::router
