// Penalties and logprobs of the per-request sampler, against hand-computed expectations.
#include <cmath>
#include <random>

#include <gtest/gtest.h>

#include "scheduler/sampler.h"

namespace pdserve::scheduler {
namespace {

Request make_request(std::vector<int32_t> prompt, std::vector<int32_t> outputs) {
  Request r;
  r.in.input_ids = std::move(prompt);
  r.output_ids = std::move(outputs);
  r.in.sampling.temperature = 0;
  return r;
}

TEST(Sampler, GreedyWithoutPenaltiesTakesTheMaximum) {
  std::vector<float> logits = {0.1f, 3.0f, 2.9f, -1.0f};
  Request r = make_request({0}, {});
  std::mt19937_64 rng(1);
  std::vector<float> scratch;
  EXPECT_EQ(sample_next(logits.data(), 4, r, rng, scratch), 1);
}

TEST(Sampler, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits) {
  // Token 1 (3.0) was in the prompt: 3.0 / 2 = 1.5 < 2.9, so token 2 wins.
  std::vector<float> logits = {0.1f, 3.0f, 2.9f, -1.0f};
  Request r = make_request({1}, {});
  r.in.sampling.repetition_penalty = 2.0f;
  std::mt19937_64 rng(1);
  std::vector<float> scratch;
  EXPECT_EQ(sample_next(logits.data(), 4, r, rng, scratch), 2);
  // A negative logit gets more negative: token 3 seen, -1 * 2 = -2, still last; ranks unchanged.
  std::vector<float> neg = {-0.5f, -3.0f, -0.6f, -1.0f};
  Request r2 = make_request({0}, {});
  r2.in.sampling.repetition_penalty = 2.0f;
  EXPECT_EQ(sample_next(neg.data(), 4, r2, rng, scratch), 2);  // -0.5 * 2 = -1.0 < -0.6
}

TEST(Sampler, FrequencyAndPresencePenaltiesCountOutputTokensOnly) {
  std::vector<float> logits = {2.0f, 1.5f, 0.0f};
  // Token 0 generated twice: 2.0 - 2 * 0.3 - 0.0 = 1.4 < 1.5.
  Request r = make_request({1, 1, 1}, {0, 0});
  r.in.sampling.frequency_penalty = 0.3f;
  std::mt19937_64 rng(1);
  std::vector<float> scratch;
  EXPECT_EQ(sample_next(logits.data(), 3, r, rng, scratch), 1);
  // Presence: once is enough. 2.0 - 0.6 = 1.4 < 1.5; the prompt's token 1 is not penalized.
  Request p = make_request({1, 1, 1}, {0});
  p.in.sampling.presence_penalty = 0.6f;
  EXPECT_EQ(sample_next(logits.data(), 3, p, rng, scratch), 1);
  // The original logits are untouched (penalties work on a copy).
  EXPECT_FLOAT_EQ(logits[0], 2.0f);
}

TEST(Sampler, LogprobsAreLogSoftmax) {
  std::vector<float> logits = {1.0f, 2.0f, 3.0f};
  const double lse = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0));
  auto lp = token_logprob(logits.data(), 3, 1, 2);
  EXPECT_NEAR(lp.logprob, 2.0 - lse, 1e-6);
  ASSERT_EQ(lp.top.size(), 2u);
  EXPECT_EQ(lp.top[0].second, 2);
  EXPECT_NEAR(lp.top[0].first, 3.0 - lse, 1e-6);
  EXPECT_EQ(lp.top[1].second, 1);
}

TEST(Sampler, SeededSamplingIsDeterministic) {
  std::vector<float> logits(50);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<float>(i % 7) * 0.3f;
  Request r = make_request({0}, {});
  r.in.sampling.temperature = 1.0f;
  std::vector<float> scratch;
  std::mt19937_64 a(42), b(42);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(sample_next(logits.data(), 50, r, a, scratch), sample_next(logits.data(), 50, r, b, scratch));
}

}  // namespace
}  // namespace pdserve::scheduler
