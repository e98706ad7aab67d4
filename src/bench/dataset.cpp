#include "bench/dataset.h"

#include <algorithm>
#include <numeric>

#include "base/json.h"

namespace pdserve::bench {

namespace {

bool is_word_token(const std::string& bytes) {
  if (bytes.size() < 3 || bytes[0] != ' ') return false;
  return std::all_of(bytes.begin() + 1, bytes.end(), [](char c) { return c >= 'a' && c <= 'z'; });
}

int64_t uniform(std::mt19937_64& rng, int64_t lo, int64_t hi) {  // inclusive
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

Result<std::vector<DatasetRequest>> sharegpt(const DatasetOptions& o, const tokenizer::Tokenizer& tok,
                                             std::mt19937_64& rng) {
  if (o.path.empty())
    return make_error(ErrorCode::kInvalidArgument,
                      "--dataset-name sharegpt needs --dataset-path FILE (a ShareGPT JSON file; nothing is downloaded)");
  PDSERVE_ASSIGN_OR_RETURN(auto doc, read_json_file(o.path));
  if (!doc.is_array()) return make_error(ErrorCode::kCorrupt, "{}: expected a JSON array of conversations", o.path);
  // First two turns of every conversation with at least two, as SGLang's sample_sharegpt_requests.
  std::vector<std::pair<std::string, std::string>> pairs;
  for (const auto& e : doc) {
    if (!e.is_object() || !e.contains("conversations") || !e["conversations"].is_array()) continue;
    const auto& c = e["conversations"];
    if (c.size() < 2 || !c[0].is_object() || !c[1].is_object()) continue;
    auto a = c[0].find("value"), b = c[1].find("value");
    if (a == c[0].end() || b == c[1].end() || !a->is_string() || !b->is_string()) continue;
    pairs.emplace_back(a->get<std::string>(), b->get<std::string>());
  }
  std::shuffle(pairs.begin(), pairs.end(), rng);
  std::vector<DatasetRequest> out;
  for (const auto& [prompt, completion] : pairs) {
    if (static_cast<int64_t>(out.size()) >= o.num_prompts) break;
    auto p = tok.encode(prompt, true);
    if (!p) continue;  // invalid UTF-8 in the file: skip that conversation
    int64_t out_len = 0;
    if (o.sharegpt_output_len) {
      out_len = *o.sharegpt_output_len;
    } else {
      auto c = tok.encode(completion, true);
      if (!c) continue;
      out_len = static_cast<int64_t>(c->size());
    }
    const auto in_len = static_cast<int64_t>(p->size());
    if (in_len < 2 || out_len < 2) continue;
    if (o.sharegpt_context_len && in_len + out_len > *o.sharegpt_context_len) continue;
    if (!o.sharegpt_output_len && !o.sharegpt_context_len && (in_len > 1024 || in_len + out_len > 2048)) continue;
    out.push_back(DatasetRequest{prompt, {}, in_len, out_len});
  }
  if (static_cast<int64_t>(out.size()) < o.num_prompts)
    return make_error(ErrorCode::kInvalidArgument, "{}: only {} usable conversations for --num-prompts {}", o.path,
                      out.size(), o.num_prompts);
  return out;
}

}  // namespace

Result<VocabText> VocabText::create(const tokenizer::Tokenizer& tok) {
  VocabText vt(tok);
  for (int32_t id = 0; id < tok.vocab_size() && vt.words_.size() < 20000; ++id) {
    const std::string* bytes = tok.token_bytes(id);
    if (!bytes || tok.is_special(id) || !is_word_token(*bytes)) continue;
    auto ids = tok.encode(*bytes, false);
    if (ids && ids->size() == 1 && (*ids)[0] == id) vt.words_.push_back(*bytes);
  }
  if (vt.words_.size() < 16)
    return make_error(ErrorCode::kUnsupported, "the tokenizer has too few whole-word tokens ({}) to build random text",
                      vt.words_.size());
  return vt;
}

Result<std::string> VocabText::make(int64_t len, std::mt19937_64& rng) const {
  std::string text;
  std::uniform_int_distribution<size_t> pick(0, words_.size() - 1);
  for (int64_t i = 0; i < len; ++i) text += words_[pick(rng)];
  PDSERVE_ASSIGN_OR_RETURN(auto ids, tok_->encode(text, false));
  if (static_cast<int64_t>(ids.size()) != len)
    return make_error(ErrorCode::kInternal, "random text of {} words tokenized to {} tokens", len, ids.size());
  return text;
}

std::vector<std::pair<int64_t, int64_t>> random_lengths(const DatasetOptions& o, std::mt19937_64& rng) {
  std::vector<std::pair<int64_t, int64_t>> lens;
  const int64_t in_lo = std::max<int64_t>(static_cast<int64_t>(o.random_input_len * o.random_range_ratio), 1);
  const int64_t out_lo = std::max<int64_t>(static_cast<int64_t>(o.random_output_len * o.random_range_ratio), 1);
  for (int64_t i = 0; i < o.num_prompts; ++i) {
    const int64_t in = uniform(rng, std::min(in_lo, o.random_input_len), o.random_input_len);
    const int64_t out = uniform(rng, std::min(out_lo, o.random_output_len), o.random_output_len);
    lens.emplace_back(in, out);
  }
  return lens;
}

Result<std::vector<DatasetRequest>> build_dataset(const DatasetOptions& o, const tokenizer::Tokenizer& tok) {
  std::mt19937_64 rng(o.seed);
  if (o.num_prompts <= 0) return make_error(ErrorCode::kInvalidArgument, "--num-prompts must be > 0");
  if (o.random_range_ratio < 0 || o.random_range_ratio > 1)
    return make_error(ErrorCode::kInvalidArgument, "--random-range-ratio must be in [0, 1]");
  if (o.name == "sharegpt") return sharegpt(o, tok, rng);
  std::vector<DatasetRequest> out;
  if (o.name == "random" || o.name == "random-ids") {
    if (o.random_input_len <= 0 || o.random_output_len <= 0)
      return make_error(ErrorCode::kInvalidArgument, "--random-input-len and --random-output-len must be > 0");
    const auto lens = random_lengths(o, rng);
    std::optional<VocabText> vt;
    if (o.name == "random") {
      PDSERVE_ASSIGN_OR_RETURN(auto v, VocabText::create(tok));
      vt.emplace(std::move(v));
    }
    const int64_t vocab = tok.vocab_size();
    for (size_t i = 0; i < lens.size(); ++i) {
      DatasetRequest r;
      r.prompt_len = lens[i].first;
      r.output_len = lens[i].second;
      if (vt) {
        PDSERVE_ASSIGN_OR_RETURN(r.prompt, vt->make(r.prompt_len, rng));
        if (o.tokenize_prompt) {
          PDSERVE_ASSIGN_OR_RETURN(r.prompt_ids, tok.encode(r.prompt, false));
          r.prompt.clear();
        }
      } else {
        // SGLang's random-ids: consecutive ids from a random offset, wrapped at the vocabulary.
        const int64_t offset = uniform(rng, 0, vocab - 1);
        for (int64_t j = 0; j < r.prompt_len; ++j)
          r.prompt_ids.push_back(static_cast<int32_t>((offset + static_cast<int64_t>(i) + j) % vocab));
      }
      out.push_back(std::move(r));
    }
    return out;
  }
  if (o.name == "generated-shared-prefix") {
    if (o.gsp_num_groups <= 0 || o.gsp_prompts_per_group <= 0 || o.gsp_system_prompt_len <= 0 ||
        o.gsp_question_len <= 0 || o.gsp_output_len <= 0)
      return make_error(ErrorCode::kInvalidArgument, "the --gsp-* values must be > 0");
    PDSERVE_ASSIGN_OR_RETURN(auto vt, VocabText::create(tok));
    for (int64_t g = 0; g < o.gsp_num_groups; ++g) {
      PDSERVE_ASSIGN_OR_RETURN(std::string system, vt.make(o.gsp_system_prompt_len, rng));
      for (int64_t q = 0; q < o.gsp_prompts_per_group; ++q) {
        PDSERVE_ASSIGN_OR_RETURN(std::string question, vt.make(o.gsp_question_len, rng));
        // Words start with a space, so the two parts stay exactly system + question tokens.
        out.push_back(DatasetRequest{system + question, {}, o.gsp_system_prompt_len + o.gsp_question_len,
                                     o.gsp_output_len});
      }
    }
    std::shuffle(out.begin(), out.end(), rng);
    return out;
  }
  return make_error(ErrorCode::kInvalidArgument,
                    "unknown --dataset-name '{}' (random, random-ids, sharegpt, generated-shared-prefix)", o.name);
}

}  // namespace pdserve::bench
