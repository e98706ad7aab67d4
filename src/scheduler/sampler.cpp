#include "scheduler/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "ops/sampling.h"

namespace pdserve::scheduler {

TokenLogprob token_logprob(const float* logits, int64_t vocab, int32_t token, int64_t top_n) {
  double mx = -INFINITY;
  for (int64_t i = 0; i < vocab; ++i) mx = std::max(mx, static_cast<double>(logits[i]));
  double sum = 0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
  const double lse = mx + std::log(sum);
  TokenLogprob out;
  out.token_id = token;
  out.logprob = static_cast<float>(logits[token] - lse);
  if (top_n > 0) {
    const int64_t n = std::min(top_n, vocab);
    std::vector<int32_t> idx(static_cast<size_t>(vocab));
    for (int64_t i = 0; i < vocab; ++i) idx[static_cast<size_t>(i)] = static_cast<int32_t>(i);
    std::partial_sort(idx.begin(), idx.begin() + n, idx.end(), [&](int32_t a, int32_t b) {
      return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    for (int64_t i = 0; i < n; ++i)
      out.top.emplace_back(static_cast<float>(logits[idx[static_cast<size_t>(i)]] - lse), idx[static_cast<size_t>(i)]);
  }
  return out;
}

int32_t sample_next(const float* logits, int64_t vocab, const Request& req, std::mt19937_64& rng,
                    std::vector<float>& scratch) {
  const SamplingParams& sp = req.in.sampling;
  const float* row = logits;
  if (sp.has_penalties()) {
    scratch.assign(logits, logits + vocab);
    if (sp.repetition_penalty != 1.0f) {
      auto penalize = [&](int32_t t) {
        float& v = scratch[static_cast<size_t>(t)];
        v = v > 0 ? v / sp.repetition_penalty : v * sp.repetition_penalty;
      };
      std::vector<bool> seen(static_cast<size_t>(vocab), false);
      for (int64_t i = 0; i < req.total_tokens(); ++i) {
        const int32_t t = req.token_at(i);
        if (!seen[static_cast<size_t>(t)]) {
          seen[static_cast<size_t>(t)] = true;
          penalize(t);
        }
      }
    }
    if (sp.frequency_penalty != 0 || sp.presence_penalty != 0) {
      std::unordered_map<int32_t, int64_t> counts;
      for (int32_t t : req.output_ids) ++counts[t];
      for (const auto& [t, c] : counts)
        scratch[static_cast<size_t>(t)] -= sp.frequency_penalty * static_cast<float>(c) + sp.presence_penalty;
    }
    row = scratch.data();
  }
  return ops::sample_token(row, vocab, sampling_op_params(sp), rng);
}

ops::SamplingParams sampling_op_params(const SamplingParams& sp) {
  ops::SamplingParams p;
  p.temperature = sp.greedy() ? 0.0f : sp.temperature;
  p.top_p = sp.top_p;
  p.top_k = sp.top_k;
  p.min_p = sp.min_p;
  return p;
}

}  // namespace pdserve::scheduler
