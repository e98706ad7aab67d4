#include "scheduler/model_runner.h"

namespace pdserve::scheduler {

Result<Tensor> NoopRunner::forward(const std::vector<model::SequenceInput>& batch, bool all_logits) {
  int64_t rows = 0;
  for (const auto& s : batch) rows += all_logits ? static_cast<int64_t>(s.tokens.size()) : 1;
  Tensor logits = Tensor::empty({rows, vocab_}, DType::kF32);
  int64_t r = 0;
  for (const auto& s : batch) {
    const size_t n = all_logits ? s.tokens.size() : 1;
    for (size_t i = 0; i < n; ++i, ++r) {
      const int32_t last = all_logits ? s.tokens[i] : s.tokens.back();
      logits.data<float>()[r * vocab_ + (last + 1) % vocab_] = 10.0f;
    }
  }
  return logits;
}

}  // namespace pdserve::scheduler
