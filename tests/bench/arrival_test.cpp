// The arrival process: Poisson at the requested rate (mean gap, exponential spread, Poisson counts
// per window), gamma burstiness, all-at-once for an infinite rate. Fixed seeds: deterministic.
#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include "bench/arrival.h"
#include "bench/metrics.h"

namespace pdserve::bench {
namespace {

std::vector<double> gaps(const std::vector<double>& t) {
  std::vector<double> g;
  for (size_t i = 1; i < t.size(); ++i) g.push_back(t[i] - t[i - 1]);
  return g;
}

TEST(Arrival, PoissonHasTheRequestedMeanRate) {
  const double rate = 50;
  const size_t n = 20000;
  const auto t = arrival_times(n, rate, 1.0, 7);
  ASSERT_EQ(t.size(), n);
  EXPECT_EQ(t[0], 0.0);
  const auto g = gaps(t);
  // Mean gap 1/rate; its standard error is (1/rate)/sqrt(n) = 0.7 %: 4 sigma is 2.8 %.
  EXPECT_NEAR(mean(g), 1 / rate, 0.028 / rate);
  // Exponential gaps: standard deviation equals the mean (coefficient of variation 1).
  EXPECT_NEAR(stddev(g) / mean(g), 1.0, 0.04);
  // Counts in 1-second windows are Poisson(50): variance / mean (dispersion index) near 1.
  std::vector<double> counts(static_cast<size_t>(t.back()) + 1, 0);
  for (double x : t) counts[static_cast<size_t>(x)] += 1;
  counts.pop_back();  // the last window is partial
  const double m = mean(counts), v = stddev(counts) * stddev(counts);
  EXPECT_NEAR(m, rate, 1.5);
  EXPECT_NEAR(v / m, 1.0, 0.2);
}

TEST(Arrival, BurstinessChangesTheSpreadNotTheRate) {
  const auto t = arrival_times(20000, 10, 0.25, 11);
  const auto g = gaps(t);
  EXPECT_NEAR(mean(g), 0.1, 0.1 * 0.06);
  // Gamma(k) gaps have coefficient of variation 1/sqrt(k) = 2.
  EXPECT_NEAR(stddev(g) / mean(g), 2.0, 0.15);
}

TEST(Arrival, InfiniteRateSendsEverythingAtOnce) {
  for (double r : {std::numeric_limits<double>::infinity(), 0.0})
    for (double x : arrival_times(100, r, 1.0, 1)) EXPECT_EQ(x, 0.0);
  EXPECT_TRUE(arrival_times(0, 5, 1, 1).empty());
  EXPECT_EQ(arrival_times(3, 5, 1, 42), arrival_times(3, 5, 1, 42));  // seeded
}

}  // namespace
}  // namespace pdserve::bench
