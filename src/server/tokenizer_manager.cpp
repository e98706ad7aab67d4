#include "server/tokenizer_manager.h"

#include <random>

#include <fmt/format.h>

#include "base/logging.h"
#include "server/response_format.h"

namespace pdserve::server {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

struct TokenizerManager::Item {
  std::string rid;
  std::vector<int32_t> input_ids;
  std::string prompt_text;  // for OpenAI echo
  scheduler::SamplingParams sampling;
  bool return_logprob = false;
  std::unique_ptr<tokenizer::IncrementalDetokenizer> detok;
  std::vector<int32_t> output_ids;
  size_t streamed_ids = 0;
  std::string text;         // decoded so far (complete characters)
  size_t sent_text = 0;     // bytes of `text` already sent (streams)
  size_t stop_holdback = 0; // bytes that might start a stop string: held back while streaming
  std::vector<scheduler::TokenLogprob> output_logprobs, input_logprobs;
  bool finished = false;
  std::optional<scheduler::FinishReason> finish;
  int64_t prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0, retractions = 0;
  Clock::time_point first_token, last_token;
};

struct TokenizerManager::Group {
  std::shared_ptr<ResponseChannel> ch;
  ApiFormat format = ApiFormat::kNative;
  bool is_batch = false, stream = false, return_text_in_logprobs = false;
  bool include_usage = false, echo = false, logprobs = false;
  std::string id;  // OpenAI response id
  int64_t created = 0;
  std::string model;
  std::vector<Item> items;
  size_t remaining = 0;
  bool started = false;  // SSE headers sent
  Clock::time_point arrival;
  std::mutex mu;  // serializes output handling for this group (several DP ranks may deliver)
};

namespace {

std::string sse_json(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// Text visible to the client now: all of it when finished (trimmed at a matched stop string),
// else all but the bytes that might still turn into a stop string.
std::string visible_text(const std::string& text, bool finished, const std::optional<scheduler::FinishReason>& f,
                         size_t holdback) {
  if (finished) {
    if (f && f->matched_str) {
      const auto pos = text.find(*f->matched_str);
      if (pos != std::string::npos) return text.substr(0, pos);
    }
    return text;
  }
  if (holdback == 0 || text.size() <= holdback) return holdback ? std::string() : text;
  size_t cut = text.size() - holdback;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;  // whole characters only
  return text.substr(0, cut);
}

}  // namespace

TokenizerManager::TokenizerManager(std::shared_ptr<const tokenizer::Tokenizer> tok,
                                   std::vector<RankHandle*> schedulers, std::string model_name,
                                   int64_t context_length)
    : tok_(std::move(tok)),
      schedulers_(std::move(schedulers)),
      model_name_(std::move(model_name)),
      context_length_(context_length),
      rid_salt_(std::random_device{}()) {}

std::string TokenizerManager::new_rid() {
  const uint64_t n = rid_counter_.fetch_add(1);
  return fmt::format("{:016x}{:016x}", rid_salt_ ^ (n * 0x9E3779B97F4A7C15ULL), n);
}

size_t TokenizerManager::in_flight() const {
  std::lock_guard<std::mutex> lock(mu_);
  return by_rid_.size();
}

void TokenizerManager::submit(std::vector<PromptItem> items, ApiFormat format, bool is_batch, bool stream,
                              std::shared_ptr<ResponseChannel> ch, const OpenAIRequest* oa, bool return_text_in_logprobs) {
  auto g = std::make_shared<Group>();
  g->ch = ch;
  g->format = format;
  g->is_batch = is_batch;
  g->stream = stream;
  g->return_text_in_logprobs = return_text_in_logprobs;
  g->arrival = Clock::now();
  g->created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  g->model = oa && !oa->model.empty() ? oa->model : model_name_;
  if (oa) {
    g->include_usage = oa->include_usage;
    g->echo = oa->echo;
    g->logprobs = oa->logprobs;
  }
  g->id = (format == ApiFormat::kChat ? "chatcmpl-" : "cmpl-") + new_rid().substr(0, 24);

  // Tokenize and validate everything before scheduling anything: a bad item fails the request.
  g->items.resize(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    PromptItem& p = items[i];
    Item& it = g->items[i];
    if (p.text) {
      // Native /generate adds BOS as SGLang's tokenizer does; chat text already starts with it.
      const bool add_special = format != ApiFormat::kChat;
      auto ids = tok_->encode(*p.text, add_special);
      if (!ids) {
        ch->send_json(400, error_body(400, (is_batch ? "text[" + std::to_string(i) + "]: " : std::string("text: ")) +
                                               ids.error().message()));
        return;
      }
      it.input_ids = std::move(*ids);
      it.prompt_text = *p.text;
    } else {
      it.input_ids = std::move(p.input_ids);
    }
    if (it.input_ids.empty()) {
      ch->send_json(400, error_body(400, "the prompt is empty"));
      return;
    }
    if (static_cast<int64_t>(it.input_ids.size()) >= context_length_) {
      ch->send_json(400, error_body(400, fmt::format("the input ({} tokens) is longer than the model's context length "
                                                     "({} tokens)", it.input_ids.size(), context_length_)));
      return;
    }
    // As SGLang's _validate_one_request: an explicit max_new_tokens must fit in the context with the
    // prompt (null, INT32_MAX here, means "until the context is full" and is not checked).
    const int64_t max_new = p.sampling.max_new_tokens;
    const int64_t prompt_len = static_cast<int64_t>(it.input_ids.size());
    if (max_new != INT32_MAX && max_new >= context_length_ - prompt_len) {  // no sum: max_new may be near INT64_MAX
      const char* field = format == ApiFormat::kNative ? "max_new_tokens" : "max_tokens";
      ch->send_json(400, error_body(400, fmt::format("{} = {} with a prompt of {} tokens exceeds the model's context length "
                                                     "({} tokens): {} may be at most {}",
                                                     field, max_new, prompt_len, context_length_, field,
                                                     context_length_ - prompt_len - 1)));
      return;
    }
    if (disagg_mode_ != scheduler::DisaggMode::kNull && (!p.bootstrap_room || !p.bootstrap_host)) {
      ch->send_json(400, error_body(400, p.bootstrap_room ? "Disaggregated request received without bootstrap host"
                                                          : "Disaggregated request received without bootstrap room id"));
      return;
    }
    if (p.data_parallel_rank && *p.data_parallel_rank >= static_cast<int64_t>(schedulers_.size())) {
      ch->send_json(400, error_body(400, fmt::format("data_parallel_rank {} is out of range (dp size {})", *p.data_parallel_rank,
                                                     schedulers_.size())));
      return;
    }
    it.rid = p.rid.empty() ? new_rid() : p.rid;
    it.sampling = p.sampling;
    it.return_logprob = p.return_logprob;
    it.prompt_tokens = static_cast<int64_t>(it.input_ids.size());
    it.detok = std::make_unique<tokenizer::IncrementalDetokenizer>(tok_, p.sampling.skip_special_tokens);
    if (stream)
      for (const auto& s : p.sampling.stop) it.stop_holdback = std::max(it.stop_holdback, s.size() - 1);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < g->items.size(); ++i)
      if (by_rid_.count(g->items[i].rid)) {
        ch->send_json(400, error_body(400, "rid '" + g->items[i].rid + "' is already in use"));
        return;
      }
    for (size_t i = 0; i < g->items.size(); ++i) by_rid_[g->items[i].rid] = {g, i};
    by_channel_[ch.get()] = g;
    g->remaining = g->items.size();
  }
  for (size_t i = 0; i < g->items.size(); ++i) {
    Item& it = g->items[i];
    scheduler::GenerateInput in;
    in.rid = it.rid;
    in.input_ids = it.input_ids;
    in.sampling = it.sampling;
    in.stream = stream;
    in.return_logprob = items[i].return_logprob;
    in.logprob_start_len = items[i].logprob_start_len;
    in.top_logprobs_num = items[i].top_logprobs_num;
    // Round robin over DP ranks (SGLang's default load_balance_method); a request with a bootstrap
    // room goes to rank bootstrap_room % dp_size (the prefill must: decode servers look its KV up
    // there) unless --load-balance-method round_robin says otherwise.
    size_t rank = next_rr_.fetch_add(1) % schedulers_.size();
    if (items[i].bootstrap_room) {
      if (disagg_mode_ != scheduler::DisaggMode::kNull)
        in.bootstrap = scheduler::BootstrapInfo{items[i].bootstrap_host.value_or(""),
                                                static_cast<int>(items[i].bootstrap_port.value_or(bootstrap_port_)),
                                                static_cast<uint64_t>(*items[i].bootstrap_room)};
      if (follow_room_) rank = static_cast<size_t>(static_cast<uint64_t>(*items[i].bootstrap_room) % schedulers_.size());
    }
    if (items[i].data_parallel_rank) rank = static_cast<size_t>(*items[i].data_parallel_rank);
    auto* s = schedulers_[rank];
    s->submit(std::move(in));
  }
}

void TokenizerManager::on_output(scheduler::RequestOutput&& out) {
  std::shared_ptr<Group> g;
  size_t index = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = by_rid_.find(out.rid);
    if (it == by_rid_.end()) return;  // aborted and already answered
    g = it->second.first;
    index = it->second.second;
    if (out.finished) by_rid_.erase(it);
  }
  std::vector<std::string> events;
  bool done = false;
  {
    std::lock_guard<std::mutex> lock(g->mu);
    handle_output(*g, index, std::move(out), events, done);
    if (g->stream) {
      if (!g->started && !events.empty()) {
        g->ch->start_events();
        g->started = true;
      }
      for (auto& e : events) g->ch->send_event(e);
      if (done) {
        if (!g->started) g->ch->start_events();
        if (g->include_usage && g->format != ApiFormat::kNative) g->ch->send_event(usage_event(*g));
        g->ch->end_events();
      }
    } else if (done) {
      send_final(*g);
    }
  }
  if (done) {
    std::lock_guard<std::mutex> lock(mu_);
    by_channel_.erase(g->ch.get());
  }
}

void TokenizerManager::handle_output(Group& g, size_t i, scheduler::RequestOutput&& out, std::vector<std::string>& events,
                                     bool& group_done) {
  Item& it = g.items[i];
  const auto now = Clock::now();
  if (!out.new_ids.empty()) {
    if (it.output_ids.empty()) it.first_token = now;
    else if (metrics_) metrics_->observe_token_gap(std::chrono::duration<double>(now - it.last_token).count());
    it.last_token = now;
  }
  // Ids the tokenizer does not know (the embedding is larger than the vocabulary) produce no text.
  std::vector<int32_t> known;
  for (int32_t id : out.new_ids)
    if (tok_->token_bytes(id)) known.push_back(id);
  if (!known.empty()) {
    auto piece = it.detok->feed(known);
    if (piece) it.text += *piece;
  }
  it.output_ids.insert(it.output_ids.end(), out.new_ids.begin(), out.new_ids.end());
  for (auto& lp : out.output_logprobs) it.output_logprobs.push_back(std::move(lp));
  for (auto& lp : out.input_logprobs) it.input_logprobs.push_back(std::move(lp));
  it.prompt_tokens = out.prompt_tokens;
  it.completion_tokens = out.completion_tokens;
  it.cached_tokens = out.cached_tokens;
  it.retractions = out.total_retractions;
  if (out.finished) {
    it.text += it.detok->finish();
    it.finished = true;
    it.finish = out.finish_reason;
    --g.remaining;
    group_done = g.remaining == 0;
    if (metrics_) {
      const double e2e = std::chrono::duration<double>(now - g.arrival).count();
      const double ttft = it.output_ids.empty() ? e2e : std::chrono::duration<double>(it.first_token - g.arrival).count();
      metrics_->observe_finished(e2e, ttft, it.prompt_tokens, it.completion_tokens, it.cached_tokens,
                                 it.finish && it.finish->type == scheduler::FinishReason::Type::kAbort);
    }
  }
  if (!g.stream) return;
  if (g.format == ApiFormat::kNative) {
    if (!out.new_ids.empty() || out.finished) events.push_back(native_event(g, i, out.finished));
    return;
  }
  const std::string vis = visible_text(it.text, it.finished, it.finish, it.stop_holdback);
  const std::string delta = vis.size() > it.sent_text ? vis.substr(it.sent_text) : std::string();
  it.sent_text = std::max(it.sent_text, vis.size());
  if (!delta.empty() || out.finished) events.push_back(openai_event(g, i, delta, out.finished));
}

json TokenizerManager::native_item_json(Group& g, size_t i) {
  Item& it = g.items[i];
  json meta = {{"id", it.rid},
               {"finish_reason", finish_reason_json(it.finish)},
               {"prompt_tokens", it.prompt_tokens},
               {"weight_version", "default"},
               {"total_retractions", it.retractions},
               {"completion_tokens", it.completion_tokens},
               {"cached_tokens", it.cached_tokens}};
  if (it.finished) meta["e2e_latency"] = std::chrono::duration<double>(Clock::now() - g.arrival).count();
  if (it.return_logprob) {
    const bool wt = g.return_text_in_logprobs;
    meta["output_token_logprobs"] = logprob_triples(it.output_logprobs, tok_.get(), wt);
    meta["input_token_logprobs"] = logprob_triples(it.input_logprobs, tok_.get(), wt);
    meta["output_top_logprobs"] = top_logprob_lists(it.output_logprobs, tok_.get(), wt);
    meta["input_top_logprobs"] = top_logprob_lists(it.input_logprobs, tok_.get(), wt);
  }
  return {{"text", visible_text(it.text, it.finished, it.finish, it.stop_holdback)},
          {"output_ids", it.output_ids},
          {"meta_info", std::move(meta)}};
}

std::string TokenizerManager::native_event(Group& g, size_t i, bool /*final_event*/) {
  Item& it = g.items[i];
  json j = native_item_json(g, i);
  // Streaming: text is cumulative, output_ids the new ids since the last event (SGLang).
  j["output_ids"] = std::vector<int32_t>(it.output_ids.begin() + static_cast<std::ptrdiff_t>(it.streamed_ids), it.output_ids.end());
  it.streamed_ids = it.output_ids.size();
  if (g.is_batch) j["index"] = i;
  return sse_json(j);
}

json TokenizerManager::usage_json(const Group& g) const {
  int64_t prompt = 0, completion = 0, cached = 0;
  for (const auto& it : g.items) {
    prompt += it.prompt_tokens;
    completion += it.completion_tokens;
    cached += it.cached_tokens;
  }
  // n > 1 samples one prompt n times: OpenAI counts the prompt once per prompt, not per sample.
  return {{"prompt_tokens", prompt}, {"completion_tokens", completion}, {"total_tokens", prompt + completion},
          {"prompt_tokens_details", {{"cached_tokens", cached}}}};
}

std::string TokenizerManager::openai_event(Group& g, size_t i, const std::string& delta, bool final_event) {
  Item& it = g.items[i];
  json choice = {{"index", i}};
  if (g.format == ApiFormat::kChat) {
    json d = json::object();
    if (it.sent_text == delta.size() && !delta.empty()) d["role"] = "assistant";
    d["content"] = delta;
    choice["delta"] = d;
    choice["logprobs"] = nullptr;
  } else {
    choice["text"] = delta;
    choice["logprobs"] = nullptr;
  }
  choice["finish_reason"] = final_event ? openai_finish_reason(it.finish) : json(nullptr);
  choice["matched_stop"] = final_event ? matched_stop(it.finish) : json(nullptr);
  json j = {{"id", g.id},
            {"object", g.format == ApiFormat::kChat ? "chat.completion.chunk" : "text_completion"},
            {"created", g.created},
            {"model", g.model},
            {"choices", json::array({choice})}};
  if (g.include_usage) j["usage"] = nullptr;
  return sse_json(j);
}

std::string TokenizerManager::usage_event(Group& g) {
  json j = {{"id", g.id},
            {"object", g.format == ApiFormat::kChat ? "chat.completion.chunk" : "text_completion"},
            {"created", g.created},
            {"model", g.model},
            {"choices", json::array()},
            {"usage", usage_json(g)}};
  return sse_json(j);
}

void TokenizerManager::send_final(Group& g) {
  // One failed item of a single request answers with its error status, as SGLang does.
  if (!g.is_batch && g.items.size() == 1) {
    const auto& f = g.items[0].finish;
    if (f && f->type == scheduler::FinishReason::Type::kAbort && f->status_code >= 400) {
      g.ch->send_json(f->status_code, error_body(f->status_code, f->message));
      return;
    }
  }
  if (g.format == ApiFormat::kNative) {
    if (!g.is_batch) {
      g.ch->send_json(200, native_item_json(g, 0));
      return;
    }
    json arr = json::array();
    for (size_t i = 0; i < g.items.size(); ++i) arr.push_back(native_item_json(g, i));
    g.ch->send_json(200, arr);
    return;
  }
  json choices = json::array();
  for (size_t i = 0; i < g.items.size(); ++i) {
    Item& it = g.items[i];
    std::string text = visible_text(it.text, true, it.finish, 0);
    json c = {{"index", i}, {"finish_reason", openai_finish_reason(it.finish)}, {"matched_stop", matched_stop(it.finish)}};
    if (g.format == ApiFormat::kChat) {
      c["message"] = {{"role", "assistant"}, {"content", text}, {"reasoning_content", nullptr}, {"tool_calls", nullptr}};
      c["logprobs"] = g.logprobs ? chat_logprobs(it.output_logprobs, tok_.get()) : json(nullptr);
    } else {
      const size_t offset = g.echo ? it.prompt_text.size() : 0;
      if (g.echo) text = it.prompt_text + text;
      c["text"] = text;
      c["logprobs"] = g.logprobs ? completion_logprobs(it.output_logprobs, tok_.get(), offset) : json(nullptr);
    }
    choices.push_back(std::move(c));
  }
  g.ch->send_json(200, {{"id", g.id},
                        {"object", g.format == ApiFormat::kChat ? "chat.completion" : "text_completion"},
                        {"created", g.created},
                        {"model", g.model},
                        {"choices", choices},
                        {"usage", usage_json(g)}});
}

void TokenizerManager::client_gone(const std::shared_ptr<ResponseChannel>& ch) {
  std::shared_ptr<Group> g;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = by_channel_.find(ch.get());
    if (it == by_channel_.end()) return;
    g = it->second;
  }
  std::vector<std::string> rids;
  {
    std::lock_guard<std::mutex> lock(g->mu);
    for (const auto& it : g->items)
      if (!it.finished) rids.push_back(it.rid);
  }
  // The scheduler answers each abort with a final output, which cleans up the maps.
  for (const auto& rid : rids)
    for (auto* s : schedulers_) s->abort(rid, false, "the client disconnected");
}

void TokenizerManager::abort(const std::string& rid, bool all) {
  for (auto* s : schedulers_) s->abort(rid, all, "aborted by /abort_request");
}

}  // namespace pdserve::server
