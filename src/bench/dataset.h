// Benchmark prompts, as sglang.bench_serving samples them (sglang-spec §6.1): `random` (text of an
// exact token length), `random-ids`, `sharegpt` (a local ShareGPT JSON file) and
// `generated-shared-prefix` (groups of prompts sharing a long system prompt).
//
// Exact-length text (our `random`; SGLang cuts ShareGPT text, which needs a download): the text is
// a run of words drawn from the tokenizer's own vocabulary, each a token that is a space followed
// by ASCII letters and that tokenizes back to itself alone. The pre-tokenizer splits text at
// every such word, so N words are exactly N tokens; every prompt is re-tokenized to check it.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "base/status.h"
#include "tokenizer/tokenizer.h"

namespace pdserve::bench {

struct DatasetRequest {
  std::string prompt;               // text sent to the server (empty when ids are sent)
  std::vector<int32_t> prompt_ids;  // ids sent instead of text (random-ids, --tokenize-prompt)
  int64_t prompt_len = 0;           // tokens, as SGLang counts them (without the server's BOS)
  int64_t output_len = 0;           // max_new_tokens
};

struct DatasetOptions {
  std::string name = "sharegpt";  // random | random-ids | sharegpt | generated-shared-prefix
  std::string path;               // ShareGPT JSON (sharegpt)
  int64_t num_prompts = 1000;
  int64_t random_input_len = 1024, random_output_len = 1024;
  double random_range_ratio = 0.0;
  std::optional<int64_t> sharegpt_output_len, sharegpt_context_len;
  int64_t gsp_num_groups = 64, gsp_prompts_per_group = 16, gsp_system_prompt_len = 2048,
          gsp_question_len = 128, gsp_output_len = 256;
  bool tokenize_prompt = false;  // random: send ids instead of text
  uint64_t seed = 1;
};

// Builds text of an exact token length from a tokenizer's whole-word tokens (see the file comment).
class VocabText {
 public:
  static Result<VocabText> create(const tokenizer::Tokenizer& tok);
  // `len` random words (len tokens), checked by re-tokenizing.
  Result<std::string> make(int64_t len, std::mt19937_64& rng) const;
  size_t num_words() const { return words_.size(); }

 private:
  explicit VocabText(const tokenizer::Tokenizer& tok) : tok_(&tok) {}
  const tokenizer::Tokenizer* tok_;
  std::vector<std::string> words_;
};

// Input/output lengths of the random datasets: uniform integers in
// [max(L_in*r, 1), L_in] and [max(L_out*r, 1), L_out] (SGLang's randint bounds; output at least 1).
std::vector<std::pair<int64_t, int64_t>> random_lengths(const DatasetOptions& o, std::mt19937_64& rng);

// The prompts for `o`; errors name the flag or file at fault. Needs a tokenizer for every dataset.
Result<std::vector<DatasetRequest>> build_dataset(const DatasetOptions& o, const tokenizer::Tokenizer& tok);

}  // namespace pdserve::bench
