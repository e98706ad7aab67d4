// The request driver against an in-process stub server: every request completes with the right
// counts, Poisson send times are honoured, --max-concurrency caps the streams in flight, and the
// client's own ceiling (requests/s against a server that costs nothing) is printed for
// docs/perf/bench.md.
#include <cstdio>

#include <gtest/gtest.h>

#include "bench/arrival.h"
#include "bench/metrics.h"
#include "bench/runner.h"
#include "stub_server.h"

namespace pdserve::bench {
namespace {

std::vector<DatasetRequest> requests(size_t n, int64_t out) {
  return std::vector<DatasetRequest>(n, DatasetRequest{"hi", {}, 1, out});
}

TEST(Runner, AllRequestsCompleteWithExactCountsAndTheClientCeiling) {
  test::StubServer stub;
  RunOptions o;
  o.base_url = stub.url();
  o.max_concurrency = 256;
  const size_t n = 3000;
  const int64_t out = 16;
  const auto r = run_requests(requests(n, out), o);
  ASSERT_EQ(r.outputs.size(), n);
  const auto m = compute_metrics(r.outputs, r.duration, nullptr);
  EXPECT_EQ(m.completed, static_cast<int64_t>(n));
  EXPECT_EQ(m.total_output, static_cast<int64_t>(n) * out);
  EXPECT_EQ(m.total_input, static_cast<int64_t>(n));
  for (const auto& x : r.outputs) {
    ASSERT_TRUE(x.success) << x.error;
    EXPECT_EQ(x.itl.size() + 1, static_cast<size_t>(out));  // the first token is TTFT, not an ITL
    EXPECT_LE(x.ttft, x.latency);
  }
  EXPECT_LE(stub.max_in_flight(), 256);
  std::printf("[client ceiling] %zu requests x %lld streamed tokens in %.3f s: %.0f requests/s, %.0f tokens/s\n", n,
              static_cast<long long>(out), r.duration, m.request_throughput, m.output_throughput);
}

TEST(Runner, PoissonSendTimesAreHonoured) {
  test::StubServer stub;
  RunOptions o;
  o.base_url = stub.url();
  o.request_rate = 100;
  o.seed = 5;
  const size_t n = 150;
  const auto r = run_requests(requests(n, 2), o);
  const auto planned = arrival_times(n, 100, 1.0, 5);
  // Never early; late only by scheduling noise (this 2-core machine runs builds beside the test,
  // so single requests can be 100+ ms late: the checks are on the median and the overall rate).
  std::vector<double> late;
  for (size_t i = 0; i < n; ++i) {
    ASSERT_TRUE(r.outputs[i].success) << r.outputs[i].error;
    EXPECT_GE(r.outputs[i].start, planned[i] - 0.002) << "request " << i << " was sent before its time";
    late.push_back(r.outputs[i].start - planned[i]);
  }
  EXPECT_LT(percentile(late, 50), 0.02);
  const double rate = static_cast<double>(n - 1) / (r.outputs[n - 1].start - r.outputs[0].start);
  const double planned_rate = static_cast<double>(n - 1) / (planned[n - 1] - planned[0]);
  EXPECT_NEAR(rate, planned_rate, 0.15 * planned_rate);
  EXPECT_GE(r.duration, planned.back());
}

TEST(Runner, MaxConcurrencyCapsStreamsInFlight) {
  test::StubServer stub(std::chrono::milliseconds(30));
  RunOptions o;
  o.base_url = stub.url();
  o.max_concurrency = 4;
  const auto r = run_requests(requests(40, 3), o);
  for (const auto& x : r.outputs) ASSERT_TRUE(x.success) << x.error;
  EXPECT_EQ(stub.max_in_flight(), 4);
  // 40 requests, 4 at a time, 30 ms each: at least 10 rounds.
  EXPECT_GE(r.duration, 0.29);
}

TEST(Runner, TransportErrorsAreReportedPerRequest) {
  RunOptions o;
  o.base_url = "http://127.0.0.1:1";  // nothing listens there
  const auto r = run_requests(requests(3, 2), o);
  for (const auto& x : r.outputs) {
    EXPECT_FALSE(x.success);
    EXPECT_FALSE(x.error.empty());
  }
}

}  // namespace
}  // namespace pdserve::bench
