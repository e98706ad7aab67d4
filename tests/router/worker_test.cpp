#include "router/worker.h"

#include <gtest/gtest.h>

#include "router/retry.h"

namespace pdserve::router {
namespace {

using namespace std::chrono_literals;

TEST(CircuitBreaker, OpensHalfOpensAndCloses) {
  CircuitBreaker cb({true, 3, 2, 1000ms, 10'000ms});
  auto t = SteadyTime{} + 100s;
  EXPECT_TRUE(cb.allows(t));
  EXPECT_FALSE(cb.record(false, t));
  EXPECT_FALSE(cb.record(false, t));
  auto tr = cb.record(false, t);
  ASSERT_TRUE(tr);
  EXPECT_EQ(tr->second, CircuitBreaker::State::kOpen);
  EXPECT_FALSE(cb.allows(t + 500ms));
  EXPECT_TRUE(cb.allows(t + 1000ms));  // timeout passed: half-open probes
  EXPECT_EQ(cb.state(), CircuitBreaker::State::kHalfOpen);
  EXPECT_FALSE(cb.record(true, t + 1001ms));
  tr = cb.record(true, t + 1002ms);
  ASSERT_TRUE(tr);
  EXPECT_EQ(tr->second, CircuitBreaker::State::kClosed);
}

TEST(CircuitBreaker, HalfOpenFailureReopens) {
  CircuitBreaker cb({true, 1, 2, 1000ms, 10'000ms});
  auto t = SteadyTime{} + 100s;
  cb.record(false, t);
  ASSERT_TRUE(cb.allows(t + 2s));
  cb.record(false, t + 2s);
  EXPECT_EQ(cb.state(), CircuitBreaker::State::kOpen);
  EXPECT_FALSE(cb.allows(t + 2500ms));
}

TEST(CircuitBreaker, FailuresOutsideTheWindowDoNotAddUp) {
  CircuitBreaker cb({true, 2, 1, 1000ms, 5'000ms});
  auto t = SteadyTime{} + 100s;
  cb.record(false, t);
  cb.record(false, t + 10s);  // the first is too old
  EXPECT_EQ(cb.state(), CircuitBreaker::State::kClosed);
  cb.record(false, t + 11s);
  EXPECT_EQ(cb.state(), CircuitBreaker::State::kOpen);
}

TEST(CircuitBreaker, DisabledAlwaysAllows) {
  CircuitBreaker cb({false, 1, 1, 1000ms, 1000ms});
  auto t = SteadyTime{} + 1s;
  cb.record(false, t);
  EXPECT_TRUE(cb.allows(t));
}

TEST(Worker, HealthThresholds) {
  Worker w("http://a:1", WorkerType::kRegular, std::nullopt, {});
  EXPECT_TRUE(w.healthy());
  EXPECT_FALSE(w.record_health(false, 3, 2));
  EXPECT_FALSE(w.record_health(false, 3, 2));
  EXPECT_TRUE(w.record_health(false, 3, 2));
  EXPECT_FALSE(w.healthy());
  EXPECT_FALSE(w.available());
  EXPECT_FALSE(w.record_health(true, 3, 2));
  EXPECT_TRUE(w.record_health(true, 3, 2));
  EXPECT_TRUE(w.healthy());
}

TEST(WorkerRegistry, AddRemoveAvailable) {
  WorkerRegistry r;
  ASSERT_TRUE(r.add("http://p:1", WorkerType::kPrefill, 8998, {}));
  ASSERT_TRUE(r.add("http://d:1", WorkerType::kDecode, std::nullopt, {}));
  EXPECT_FALSE(r.add("http://d:1", WorkerType::kDecode, std::nullopt, {}));
  EXPECT_FALSE(r.add("ftp://x", WorkerType::kDecode, std::nullopt, {}));
  EXPECT_EQ(r.available(WorkerType::kPrefill).size(), 1u);
  r.of_type(WorkerType::kDecode)[0]->set_healthy(false);
  EXPECT_TRUE(r.available(WorkerType::kDecode).empty());
  EXPECT_TRUE(r.remove("http://p:1"));
  EXPECT_FALSE(r.remove("http://p:1"));
  EXPECT_EQ(r.all().size(), 1u);
}

TEST(Retry, StatusesAndBackoff) {
  for (int s : {408, 429, 500, 502, 503, 504}) EXPECT_TRUE(is_retryable_status(s)) << s;
  for (int s : {200, 400, 401, 404, 413, 422, 501}) EXPECT_FALSE(is_retryable_status(s)) << s;
  RetryConfig c;
  EXPECT_EQ(retry_backoff(c, 0, 0.5).count(), 50);
  EXPECT_EQ(retry_backoff(c, 1, 0.5).count(), 75);
  EXPECT_EQ(retry_backoff(c, 100, 0.5).count(), 30000);  // capped
  EXPECT_EQ(retry_backoff(c, 0, 0.0).count(), 40);        // -20 %
  EXPECT_EQ(retry_backoff(c, 0, 0.999999).count(), 60);   // +20 %
  c.enabled = false;
  EXPECT_EQ(c.attempts(), 1);
}

}  // namespace
}  // namespace pdserve::router
