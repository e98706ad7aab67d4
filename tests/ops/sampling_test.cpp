#include "ops/sampling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

namespace pdserve::ops {
namespace {

std::vector<float> random_logits(int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.0f, 2.0f);
  std::vector<float> v(static_cast<size_t>(vocab));
  for (float& x : v) x = n(rng);
  return v;
}

int32_t argmax(const std::vector<float>& v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());  // first maximum
}

SamplingParams params(float temperature, float top_p = 1.0f, int64_t top_k = -1, float min_p = 0.0f) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_p = top_p;
  p.top_k = top_k;
  p.min_p = min_p;
  return p;
}

// Softmax of log(probs) recovers probs, so tests can state distributions directly.
std::vector<float> logits_of(const std::vector<double>& probs) {
  std::vector<float> v;
  for (double p : probs) v.push_back(static_cast<float>(std::log(p)));
  return v;
}

std::vector<double> frequencies(const std::vector<float>& logits, const SamplingParams& p, int draws, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<double> f(logits.size(), 0.0);
  for (int i = 0; i < draws; ++i) f[sample_token(logits.data(), static_cast<int64_t>(logits.size()), p, rng)] += 1.0;
  for (double& x : f) x /= draws;
  return f;
}

TEST(Sampling, GreedyTakesTheFirstMaximum) {
  std::mt19937_64 rng(1);
  const std::vector<float> v = {0.5f, 3.0f, -1.0f, 3.0f, 2.9f};
  EXPECT_EQ(sample_token(v.data(), 5, params(0.0f), rng), 1);
  const std::vector<float> big = random_logits(129280, 7);
  EXPECT_EQ(sample_token(big.data(), 129280, params(0.0f), rng), argmax(big));
  // top_p / top_k / min_p do not matter when greedy.
  EXPECT_EQ(sample_token(big.data(), 129280, params(0.0f, 0.5f, 10, 0.3f), rng), argmax(big));
}

TEST(Sampling, TopKOneEqualsGreedy) {
  std::mt19937_64 rng(2);
  for (uint64_t seed = 0; seed < 20; ++seed) {
    const std::vector<float> v = random_logits(1000, seed);
    EXPECT_EQ(sample_token(v.data(), 1000, params(1.3f, 1.0f, 1), rng), argmax(v));
  }
  const std::vector<float> tie = {1.0f, 4.0f, 4.0f};
  EXPECT_EQ(sample_token(tie.data(), 3, params(1.0f, 1.0f, 1), rng), 1);
}

TEST(Sampling, TinyTopPEqualsGreedy) {
  std::mt19937_64 rng(3);
  for (uint64_t seed = 0; seed < 20; ++seed) {
    const std::vector<float> v = random_logits(5000, 100 + seed);
    EXPECT_EQ(sample_token(v.data(), 5000, params(0.8f, 1e-6f), rng), argmax(v));
  }
}

TEST(Sampling, SameSeedSameTokens) {
  const std::vector<float> v = random_logits(3000, 9);
  const SamplingParams p = params(1.0f, 0.95f, 50, 0.01f);
  std::mt19937_64 a(42), b(42), c(43);
  std::vector<int32_t> ta, tb, tc;
  for (int i = 0; i < 200; ++i) {
    ta.push_back(sample_token(v.data(), 3000, p, a));
    tb.push_back(sample_token(v.data(), 3000, p, b));
    tc.push_back(sample_token(v.data(), 3000, p, c));
  }
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, tc);
}

TEST(Sampling, DistributionMatchesSoftmax) {
  // T = 0.5 on log-probs squares the distribution: p_i^2 / sum p^2.
  const std::vector<double> probs = {0.4, 0.25, 0.15, 0.1, 0.06, 0.04};
  std::vector<double> want;
  double z = 0.0;
  for (double p : probs) z += p * p;
  for (double p : probs) want.push_back(p * p / z);
  const std::vector<double> got = frequencies(logits_of(probs), params(0.5f), 200000, 11);
  for (size_t i = 0; i < probs.size(); ++i) EXPECT_NEAR(got[i], want[i], 0.005) << "token " << i;
  const std::vector<double> t1 = frequencies(logits_of(probs), params(1.0f), 200000, 12);
  for (size_t i = 0; i < probs.size(); ++i) EXPECT_NEAR(t1[i], probs[i], 0.005) << "token " << i;
}

TEST(Sampling, TopKTopPAndMinPRestrictAndRenormalize) {
  const std::vector<double> probs = {0.05, 0.5, 0.3, 0.15};  // sorted: 1, 2, 3, 0
  const std::vector<float> lg = logits_of(probs);
  // top_k 2: tokens 1 and 2 only, renormalized 0.625 / 0.375.
  std::vector<double> f = frequencies(lg, params(1.0f, 1.0f, 2), 100000, 21);
  EXPECT_EQ(f[0], 0.0);
  EXPECT_EQ(f[3], 0.0);
  EXPECT_NEAR(f[1], 0.625, 0.006);
  // top_p 0.7: mass before token 2 is 0.5 < 0.7 (kept), before token 3 it is 0.8 (dropped).
  f = frequencies(lg, params(1.0f, 0.7f), 100000, 22);
  EXPECT_EQ(f[0] + f[3], 0.0);
  EXPECT_NEAR(f[2], 0.375, 0.006);
  // min_p 0.2: threshold 0.1 drops token 0 (0.05) only.
  f = frequencies(lg, params(1.0f, 1.0f, -1, 0.2f), 100000, 23);
  EXPECT_EQ(f[0], 0.0);
  EXPECT_NEAR(f[3], 0.15 / 0.95, 0.006);
  // min_p 1.0 keeps only the maximum.
  f = frequencies(lg, params(1.0f, 1.0f, 0, 1.0f), 1000, 24);
  EXPECT_EQ(f[1], 1.0);
}

TEST(Sampling, RejectsInvalidParameters) {
  std::mt19937_64 rng(5);
  const std::vector<float> v = {1.0f, 2.0f};
  EXPECT_THROW(sample_token(v.data(), 2, params(-0.1f), rng), std::invalid_argument);
  EXPECT_THROW(sample_token(v.data(), 2, params(1.0f, 0.0f), rng), std::invalid_argument);
  EXPECT_THROW(sample_token(v.data(), 2, params(1.0f, 1.5f), rng), std::invalid_argument);
  EXPECT_THROW(sample_token(v.data(), 2, params(1.0f, 1.0f, -1, -0.1f), rng), std::invalid_argument);
  EXPECT_THROW(sample_token(v.data(), 2, params(1.0f, 1.0f, -1, 1.1f), rng), std::invalid_argument);
  EXPECT_THROW(sample_token(v.data(), 2, params(1.0f, 1.0f, -2), rng), std::invalid_argument);
  EXPECT_THROW(sample_token(v.data(), 0, params(1.0f), rng), std::invalid_argument);
  EXPECT_THROW(sample_token(v.data(), 2, params(NAN), rng), std::invalid_argument);
}

}  // namespace
}  // namespace pdserve::ops
