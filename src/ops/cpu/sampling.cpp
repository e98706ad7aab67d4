#include "ops/cpu/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace pdserve::ops::cpu {

namespace {

int32_t argmax_first(const float* logits, int64_t vocab) {
  int64_t best = 0;
  for (int64_t i = 1; i < vocab; ++i)
    if (logits[i] > logits[best]) best = i;
  return static_cast<int32_t>(best);
}

}  // namespace

int32_t sample_token(const float* logits, int64_t vocab, const SamplingParams& p, std::mt19937_64& rng) {
  // SGLang treats temperatures below 1e-6 as greedy; dividing by them would overflow anyway.
  constexpr float kGreedyBelow = 1e-6f;
  if (p.temperature < kGreedyBelow || p.top_k == 1) return argmax_first(logits, vocab);

  // Softmax of logits / T in f32 as SGLang does; the normaliser is summed in double so a 129k-entry
  // vocabulary does not lose the tail.
  thread_local std::vector<float> prob;
  thread_local std::vector<int32_t> order;
  prob.resize(static_cast<size_t>(vocab));
  const float inv_t = 1.0f / p.temperature;
  float mx = -INFINITY;
  for (int64_t i = 0; i < vocab; ++i) mx = std::max(mx, logits[i] * inv_t);
  double z = 0.0;
  for (int64_t i = 0; i < vocab; ++i) {
    prob[i] = std::exp(logits[i] * inv_t - mx);
    z += prob[i];
  }
  const float inv_z = static_cast<float>(1.0 / z);
  for (int64_t i = 0; i < vocab; ++i) prob[i] *= inv_z;

  // Candidates in descending probability, ties to the lower id, so the draw is a pure function of
  // (logits, params, rng state).
  const int64_t k = (p.top_k <= 0 || p.top_k > vocab) ? vocab : p.top_k;
  order.resize(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  auto desc = [](int32_t a, int32_t b) { return prob[a] > prob[b] || (prob[a] == prob[b] && a < b); };
  std::partial_sort(order.begin(), order.begin() + k, order.end(), desc);

  int64_t keep = k;
  if (p.top_p < 1.0f) {
    // Smallest prefix whose mass reaches top_p: token j stays while the mass before it is < top_p.
    double before = 0.0;
    for (int64_t j = 0; j < k; ++j) {
      if (j > 0 && before >= p.top_p) {
        keep = j;
        break;
      }
      before += prob[order[j]];
    }
  }
  if (p.min_p > 0.0f) {
    const float threshold = p.min_p * prob[order[0]];
    int64_t j = 1;
    while (j < keep && prob[order[j]] >= threshold) ++j;
    keep = j;
  }

  double total = 0.0;
  for (int64_t j = 0; j < keep; ++j) total += prob[order[j]];
  const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng) * total;
  double acc = 0.0;
  for (int64_t j = 0; j < keep; ++j) {
    acc += prob[order[j]];
    if (u < acc) return order[j];
  }
  return order[keep - 1];  // u landed on the rounding sliver at the very top
}

}  // namespace pdserve::ops::cpu
