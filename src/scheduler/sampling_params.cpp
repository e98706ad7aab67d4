#include "scheduler/sampling_params.h"

namespace pdserve::scheduler {

Status SamplingParams::validate(int64_t vocab_size) const {
  auto bad = [](const char* field, const std::string& why) {
    return Status(make_error(ErrorCode::kInvalidArgument, "sampling_params.{} {}", field, why));
  };
  if (max_new_tokens < 0) return bad("max_new_tokens", "must be >= 0, got " + std::to_string(max_new_tokens));
  if (min_new_tokens < 0) return bad("min_new_tokens", "must be >= 0");
  if (min_new_tokens > max_new_tokens) return bad("min_new_tokens", "must be <= max_new_tokens");
  if (!(temperature >= 0.0f) || temperature > 100.0f) return bad("temperature", "must be in [0, 100]");
  if (!(top_p > 0.0f && top_p <= 1.0f)) return bad("top_p", "must be in (0, 1]");
  if (top_k < -1 || top_k == 0) return bad("top_k", "must be -1 (all) or >= 1");
  if (!(min_p >= 0.0f && min_p <= 1.0f)) return bad("min_p", "must be in [0, 1]");
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f)) return bad("frequency_penalty", "must be in [-2, 2]");
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f)) return bad("presence_penalty", "must be in [-2, 2]");
  if (!(repetition_penalty > 0.0f && repetition_penalty <= 2.0f)) return bad("repetition_penalty", "must be in (0, 2]");
  if (n < 1 || n > 64) return bad("n", "must be in [1, 64]");
  if (stop.size() > 64) return bad("stop", "has more than 64 strings");
  for (const auto& s : stop)
    if (s.empty() || s.size() > 1024) return bad("stop", "strings must have 1 to 1024 bytes");
  for (int32_t id : stop_token_ids)
    if (id < 0 || id >= vocab_size) return bad("stop_token_ids", "holds " + std::to_string(id) + ", outside the vocabulary");
  return ok_status();
}

}  // namespace pdserve::scheduler
