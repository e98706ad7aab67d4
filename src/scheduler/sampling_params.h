// Per-request sampling and stopping parameters, with SGLang's names and defaults.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "base/status.h"

namespace pdserve::scheduler {

struct SamplingParams {
  int64_t max_new_tokens = 128;
  int64_t min_new_tokens = 0;
  float temperature = 1.0f;  // 0 (or < 1e-6) = greedy
  float top_p = 1.0f;
  int64_t top_k = -1;  // -1 = all
  float min_p = 0.0f;
  float frequency_penalty = 0.0f;   // [-2, 2]
  float presence_penalty = 0.0f;    // [-2, 2]
  float repetition_penalty = 1.0f;  // (0, 2]
  std::vector<std::string> stop;      // stop strings (matched on detokenized output)
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  bool skip_special_tokens = true;
  std::optional<uint64_t> sampling_seed;  // none: seeded from the request id
  int64_t n = 1;

  bool greedy() const { return temperature < 1e-6f || top_k == 1; }
  bool has_penalties() const { return frequency_penalty != 0 || presence_penalty != 0 || repetition_penalty != 1; }
  // Checks ranges; the message names the field as the client wrote it ("sampling_params.top_p").
  Status validate(int64_t vocab_size) const;
};

}  // namespace pdserve::scheduler
