#include "scheduler/scheduler.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "base/logging.h"
#include "scheduler/sampler.h"

namespace pdserve::scheduler {

using Clock = std::chrono::steady_clock;

namespace {

log::RankPrefix rank_prefix(const SchedulerConfig& cfg) {
  log::RankPrefix p;
  if (cfg.dp_size > 1) p.dp_rank = cfg.dp_rank;
  p.tp_rank = cfg.tp_rank;
  p.tp_size = cfg.tp_size;
  p.ep_rank = cfg.ep_rank;
  p.ep_size = cfg.ep_size;
  return p;
}

}  // namespace

Scheduler::Scheduler(SchedulerConfig cfg, std::shared_ptr<ModelRunner> runner, std::shared_ptr<const TextDecoder> decoder,
                     OutputSink sink)
    : cfg_(std::move(cfg)),
      runner_(std::move(runner)),
      decoder_(std::move(decoder)),
      sink_(std::move(sink)),
      new_token_ratio_(cfg_.init_new_token_ratio),
      last_log_time_(Clock::now()) {
  const int64_t page = runner_->page_size();
  const int64_t max_pages_per_req = (cfg_.context_length + page - 1) / page + 1;
  cache::KvCacheConfig kc;
  kc.num_pages = static_cast<int32_t>(runner_->num_pages());
  kc.page_size = static_cast<int32_t>(page);
  // + the chunked request; a PD decode also holds slots for requests whose KV is being received.
  const bool decode = cfg_.disagg_mode == DisaggMode::kDecode;
  kc.max_requests = static_cast<int32_t>(cfg_.max_running_requests * (decode ? 2 : 1) + 1);
  kc.max_pages_per_request = static_cast<int32_t>(max_pages_per_req);
  kc.enable_radix_cache = !cfg_.disable_radix_cache && !decode;  // as SGLang: decode is chunk cache only
  cache_ = std::make_unique<cache::KvCacheManager>(kc);
  // A runner whose KV lives on the GPU runs its forwards there: profiles record its kernels.
  profiler_.set_device_tracing(runner_->kv_buffers().on_device);
  update_stats();
}

Scheduler::~Scheduler() { stop(); }

void Scheduler::start() {
  thread_ = std::thread([this] {
    log::ScopedThreadRank rank(rank_prefix(cfg_));
    loop();
  });
}

void Scheduler::stop(const std::string& reason) {
  {
    std::lock_guard<std::mutex> lock(inbox_mu_);
    if (stopping_.exchange(true)) {
      if (thread_.joinable()) thread_.join();
      return;
    }
    stop_reason_ = reason;
  }
  // A peer blocked in an exchange with this rank would otherwise wait out the collective timeout.
  if (sync_) sync_->abort(reason);
  inbox_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  // Nothing is lost: everything still queued or running ends with a clear abort.
  drain_inbox();
  for (auto& r : waiting_) emit(*r, true, abort_reason(reason, 503));
  waiting_.clear();
  if (chunked_owner_) finish(chunked_owner_.get(), abort_reason(reason, 503), false);
  while (!running_.empty()) finish(running_.back().get(), abort_reason(reason, 503), false);
  disagg_stop(reason);
  update_stats();
}

void Scheduler::submit(GenerateInput in) {
  {
    std::lock_guard<std::mutex> lock(inbox_mu_);
    inbox_.emplace_back(std::move(in));
  }
  inbox_cv_.notify_one();
}

void Scheduler::abort(const std::string& rid_prefix, bool abort_all, const std::string& message) {
  {
    std::lock_guard<std::mutex> lock(inbox_mu_);
    inbox_.emplace_back(Abort{rid_prefix, abort_all, message});
  }
  inbox_cv_.notify_one();
}

std::future<nlohmann::json> Scheduler::control(const std::string& command, nlohmann::json args) {
  Control c{command, std::move(args), {}};
  auto fut = c.reply.get_future();
  {
    std::lock_guard<std::mutex> lock(inbox_mu_);
    if (stopping_ && !thread_.joinable()) {
      c.reply.set_value(nlohmann::json{{"error", "scheduler stopped"}});
      return fut;
    }
    inbox_.emplace_back(std::move(c));
  }
  inbox_cv_.notify_one();
  return fut;
}

void Scheduler::loop() {
  while (!stopping_) {
    if (sync_) {
      // Lockstep: every iteration of an awake group is one agreement (scheduler_group.cpp).
      if (!wait_for_group_work()) continue;
      if (!step() && !group_asleep_) {
        // Awake but nobody ran a pass (held decode, PD transfers only): poll again soon.
        std::unique_lock<std::mutex> lock(inbox_mu_);
        inbox_cv_.wait_for(lock, std::chrono::milliseconds(1), [&] { return !inbox_.empty() || stopping_.load(); });
      }
      continue;
    }
    // Idle: block until a message arrives (step() then takes it); busy: step() polls.
    if (waiting_.empty() && running_.empty() && !chunked_owner_ && !disagg_busy()) {
      std::unique_lock<std::mutex> lock(inbox_mu_);
      inbox_cv_.wait_for(lock, std::chrono::milliseconds(100), [&] { return !inbox_.empty() || stopping_; });
    }
    if (stopping_) break;
    if (!step() && disagg_busy()) {
      // Only PD transfers in flight: poll them again soon without spinning a core.
      std::unique_lock<std::mutex> lock(inbox_mu_);
      inbox_cv_.wait_for(lock, std::chrono::milliseconds(1), [&] { return !inbox_.empty() || stopping_; });
    }
  }
}

void Scheduler::drain_inbox() {
  std::vector<Message> msgs;
  {
    std::lock_guard<std::mutex> lock(inbox_mu_);
    msgs.swap(inbox_);
  }
  for (auto& m : msgs) std::visit([this](auto&& x) { handle(std::move(x)); }, std::move(m));
}

void Scheduler::handle(GenerateInput&& in) {
  auto r = std::make_unique<Request>();
  r->in = std::move(in);
  r->arrival = Clock::now();
  r->seed = r->in.sampling.sampling_seed.value_or(cfg_.random_seed ^ std::hash<std::string>{}(r->in.rid));
  r->rng.seed(r->seed);
  const int64_t len = static_cast<int64_t>(r->in.input_ids.size());
  std::lock_guard<std::mutex> lock(stats_mu_);
  ++stats_.num_requests_total;
  // The server validates first; these checks keep the scheduler safe on its own.
  std::string error;
  if (len == 0) {
    error = "the prompt is empty";
  } else if (len >= cfg_.context_length) {
    error = "the prompt has " + std::to_string(len) + " tokens, the context length is " + std::to_string(cfg_.context_length);
  } else if (len >= max_req_input_len()) {
    // A prompt the whole KV cache cannot hold would wait forever (SGLang's bound and words).
    error = fmt::format("Input length ({} tokens) exceeds the maximum allowed length ({} tokens): this rank's KV "
                        "cache holds {} tokens; raise --max-total-tokens or --mem-fraction-static",
                        len, max_req_input_len(), max_total_num_tokens());
  } else {
    for (int32_t id : r->in.input_ids)
      if (id < 0 || id >= runner_->vocab_size()) {
        error = "token id " + std::to_string(id) + " is outside the vocabulary";
        break;
      }
  }
  if (!error.empty()) {
    ++stats_.num_aborted_total;
    emit(*r, true, abort_reason(error, 400));
    return;
  }
  // As SGLang: the output is clipped so prompt + output fits the context.
  r->in.sampling.max_new_tokens = std::min(r->in.sampling.max_new_tokens, cfg_.context_length - len);
  if (cfg_.disagg_mode != DisaggMode::kNull && disagg_add(r)) return;
  waiting_.push_back(std::move(r));
}

void Scheduler::handle(Abort&& a) {
  auto match = [&](const Request& r) { return a.all || r.in.rid.rfind(a.rid_prefix, 0) == 0; };
  int64_t n = 0;
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if (match(**it)) {
      if ((*it)->slot >= 0) cache_->retract(static_cast<int32_t>((*it)->slot));
      emit(**it, true, abort_reason(a.message, 0));
      it = waiting_.erase(it);
      ++n;
    } else {
      ++it;
    }
  }
  if (chunked_owner_ && match(*chunked_owner_)) {
    finish(chunked_owner_.get(), abort_reason(a.message, 0), false);
    ++n;
  }
  for (size_t i = running_.size(); i-- > 0;)
    if (match(*running_[i])) {
      finish(running_[i].get(), abort_reason(a.message, 0), false);
      ++n;
    }
  n += disagg_abort(match, a.message);
  std::lock_guard<std::mutex> lock(stats_mu_);
  stats_.num_aborted_total += n;
}

bool Scheduler::step() { return sync_ ? group_step() : step_local(); }

bool Scheduler::step_local() {
  drain_inbox();
  if (cfg_.disagg_mode != DisaggMode::kNull) process_disagg_queues();
  if (waiting_.empty() && running_.empty() && !chunked_owner_) {
    update_stats();
    return false;
  }
  const bool held = decode_held();
  if (held && waiting_.empty() && !chunked_owner_) {
    // Nothing but held decode work: no batch (the profiler does not count one); wait briefly for
    // the inbox instead of spinning a core while PD transfers land.
    update_stats();
    std::unique_lock<std::mutex> lock(inbox_mu_);
    inbox_cv_.wait_for(lock, std::chrono::milliseconds(2), [&] { return !inbox_.empty() || stopping_.load(); });
    return false;
  }
  profiler_.batch_begin();  // before the sleep, as SGLang's profiler predicate
  if (forward_sleep_s_) {
    // As SGLang: every batch sleeps, blocking the loop; a new value applies after this sleep.
    log::info("Scheduler.run_batch sleep {}s", *forward_sleep_s_);
    const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(*forward_sleep_s_));
    std::unique_lock<std::mutex> lock(inbox_mu_);
    inbox_cv_.wait_until(lock, until, [&] { return stopping_.load(); });
    if (stopping_) return false;
  }
  // The watchdog measures the batch itself, not the slow_down sleep (which SGLang excludes too).
  batch_started_ns_ = Clock::now().time_since_epoch().count();
  bool worked = run_prefill();
  if (!worked && !held) worked = run_decode();
  batch_started_ns_ = 0;
  profiler_.batch_end(worked, static_cast<int64_t>(running_.size()), static_cast<int64_t>(waiting_.size()));
  if (worked) {
    std::lock_guard<std::mutex> lock(stats_mu_);
    ++stats_.forward_ct;
  }
  update_stats();
  return worked;
}

int64_t Scheduler::reserved_future_tokens() const {
  double reserve = 0;
  for (const auto& r : running_) {
    const int64_t left = r->in.sampling.max_new_tokens - static_cast<int64_t>(r->output_ids.size());
    reserve += static_cast<double>(std::max<int64_t>(left, 0)) * new_token_ratio_;
  }
  return static_cast<int64_t>(reserve);
}

bool Scheduler::run_prefill() {
  if (waiting_.empty() && !chunked_owner_) return false;
  const int64_t page = runner_->page_size();
  int64_t rem_prefill = cfg_.max_prefill_tokens;
  int64_t rem_chunk = cfg_.chunked_prefill_size > 0 ? cfg_.chunked_prefill_size : INT64_MAX;
  int64_t kv_budget = cache_->available_pages() * page - reserved_future_tokens();

  struct Item {
    Request* req;
    int64_t begin, count;  // token range computed in this batch
  };
  std::vector<Item> items;
  std::vector<std::unique_ptr<Request>> admitted;
  int64_t cached_in_batch = 0, new_seqs = 0;

  // A chunked request continues first (SGLang keeps it at the head of the next prefill).
  if (chunked_owner_) {
    Request* r = chunked_owner_.get();
    const int64_t left = r->total_tokens() - r->computed_tokens;
    const int64_t n = std::min({left, rem_chunk, rem_prefill});
    if (n <= 0 || !cache_->extend(static_cast<int32_t>(r->slot), n)) return false;
    items.push_back({r, r->computed_tokens, n});
    rem_chunk -= n;
    rem_prefill -= n;
    kv_budget -= n;
  }

  if (cfg_.schedule_policy == "lpm" && waiting_.size() > 1) {
    // Longest cached prefix first: those requests cost the least to prefill.
    std::vector<std::pair<int64_t, std::list<std::unique_ptr<Request>>::iterator>> order;
    for (auto it = waiting_.begin(); it != waiting_.end(); ++it)
      order.push_back({cache_->prefix_tokens((*it)->in.input_ids), it});
    std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    std::list<std::unique_ptr<Request>> sorted;
    for (auto& [len, it] : order) sorted.push_back(std::move(*it));
    waiting_.swap(sorted);
  }

  while (!waiting_.empty() && rem_chunk > 0 && rem_prefill > 0 && !chunked_owner_) {
    const int64_t running = static_cast<int64_t>(running_.size() + admitted.size());
    if (running >= cfg_.max_running_requests) break;
    Request* r = waiting_.front().get();
    // Tokens to compute: the prompt, plus outputs of a retracted request (its KV was dropped).
    std::vector<int32_t> tokens(static_cast<size_t>(r->total_tokens()));
    for (int64_t i = 0; i < r->total_tokens(); ++i) tokens[static_cast<size_t>(i)] = r->token_at(i);
    // admit() never matches the last token (logits need one computed token). Input logprobs need
    // every position computed, so such requests skip the prefix cache.
    const bool want_input_lp = r->in.return_logprob && r->in.logprob_start_len >= 0 && !r->input_logprobs_sent;
    auto adm = want_input_lp ? cache_->admit(tokens, 0) : cache_->admit(tokens);
    if (!adm) break;  // no request slot
    const int64_t extend = r->total_tokens() - adm->cached_tokens;
    const int64_t reserve = static_cast<int64_t>(
        static_cast<double>(r->in.sampling.max_new_tokens - static_cast<int64_t>(r->output_ids.size())) * new_token_ratio_);
    const int64_t n = std::min({extend, rem_chunk, rem_prefill});
    // With nothing else on this rank the reserve is not asked for: waiting for room that can never
    // come (prompt + reserved output larger than the whole cache) would stall forever, as SGLang
    // does; a request that then outgrows the cache ends with the single-request abort of decode.
    const bool alone = running_.empty() && admitted.empty() && items.empty();
    if (n + (n == extend && !alone ? reserve : 0) > kv_budget || !cache_->extend(adm->slot, n)) {
      cache_->retract(adm->slot);
      break;  // head of line waits for memory, as SGLang's FCFS does
    }
    r->slot = adm->slot;
    r->computed_tokens = adm->cached_tokens;
    if (r->retractions == 0) r->cached_tokens = adm->cached_tokens;
    cached_in_batch += adm->cached_tokens;
    ++new_seqs;
    items.push_back({r, r->computed_tokens, n});
    rem_chunk -= n;
    rem_prefill -= n;
    kv_budget -= n + reserve;
    auto owned = std::move(waiting_.front());
    waiting_.pop_front();
    if (n < extend) {
      chunked_owner_ = std::move(owned);  // the rest goes in the next prefill batches
    } else {
      admitted.push_back(std::move(owned));
    }
  }
  if (items.empty()) return false;

  bool all_logits = false;
  for (const auto& it : items)
    if (it.req->in.return_logprob && it.req->in.logprob_start_len >= 0 && !it.req->input_logprobs_sent) all_logits = true;
  std::vector<model::SequenceInput> batch;
  int64_t new_tokens = 0;
  for (const auto& it : items) {
    model::SequenceInput s;
    s.tokens.resize(static_cast<size_t>(it.count));
    for (int64_t i = 0; i < it.count; ++i) s.tokens[static_cast<size_t>(i)] = it.req->token_at(it.begin + i);
    s.prefix_len = it.begin;
    auto pages = cache_->page_table(static_cast<int32_t>(it.req->slot));
    s.page_table.assign(pages.begin(), pages.end());
    batch.push_back(std::move(s));
    new_tokens += it.count;
  }
  log_prefill(new_seqs, new_tokens, cached_in_batch);
  profiler_.forward_begin();
  const Status joined = join_group_pass(new_tokens, true);
  auto logits = joined.has_value() ? runner_->forward(batch, all_logits) : Result<Tensor>(joined.error());
  profiler_.forward_end("prefill", static_cast<int64_t>(batch.size()), new_tokens);
  if (!logits) {
    log::error("prefill forward failed: {}", logits.error().message());
    for (auto& r : admitted) running_.push_back(std::move(r));
    for (const auto& it : items) finish(it.req, abort_reason("model error: " + logits.error().message(), 500), false);
    return true;
  }
  // Rows: one per sequence, or one per new token with all_logits.
  std::vector<Request*> done;
  std::vector<int64_t> rows;
  int64_t row = 0;
  const int64_t V = runner_->vocab_size();
  for (const auto& it : items) {
    Request* r = it.req;
    if (all_logits && r->in.return_logprob && r->in.logprob_start_len >= 0 && !r->input_logprobs_sent) {
      // Logits at position p predict token p + 1.
      const int64_t L = static_cast<int64_t>(r->in.input_ids.size());
      for (int64_t p = it.begin; p < it.begin + it.count; ++p) {
        const int64_t target = p + 1;
        if (target < std::max<int64_t>(r->in.logprob_start_len, 1) || target >= L) continue;
        r->pending_input_logprobs.push_back(token_logprob(logits->data<float>() + (row + p - it.begin) * V, V,
                                                          r->in.input_ids[static_cast<size_t>(target)],
                                                          r->in.top_logprobs_num));
      }
    }
    const int64_t last_row = all_logits ? row + it.count - 1 : row;
    row += all_logits ? it.count : 1;
    r->computed_tokens = it.begin + it.count;
    // PD prefill: a chunk's full pages leave now, overlapping the transfer with the next chunk.
    if (r->sender && r->computed_tokens < r->total_tokens()) prefill_send(*r, false);
    if (r->computed_tokens == r->total_tokens()) {
      done.push_back(r);
      rows.push_back(last_row);
    }
  }
  for (auto& r : admitted) running_.push_back(std::move(r));
  if (chunked_owner_ && chunked_owner_->computed_tokens == chunked_owner_->total_tokens()) {
    running_.push_back(std::move(chunked_owner_));
  }
  process_logits(done, *logits, rows);
  return true;
}

void Scheduler::retract_for_decode() {
  // Victims: fewest outputs first, then longest prompt (SGLang's retract_decode order): they lose
  // the least work and free the most memory.
  std::stable_sort(running_.begin(), running_.end(), [](const auto& a, const auto& b) {
    if (a->output_ids.size() != b->output_ids.size()) return a->output_ids.size() > b->output_ids.size();
    return a->in.input_ids.size() < b->in.input_ids.size();
  });
  auto pages_needed = [&] {
    int64_t n = 0;
    for (const auto& r : running_) {
      const auto slot = static_cast<int32_t>(r->slot);
      const int64_t missing = r->computed_tokens + 1 - cache_->num_tokens(slot);
      if (missing > 0) n += cache_->pages_needed(slot, missing);
    }
    return n;
  };
  int64_t retracted = 0;
  while (running_.size() > 1 && pages_needed() > cache_->available_pages()) {
    std::unique_ptr<Request> r = std::move(running_.back());
    running_.pop_back();
    cache_->retract(static_cast<int32_t>(r->slot));
    r->slot = -1;
    r->computed_tokens = 0;
    ++r->retractions;
    ++retracted;
    waiting_.push_front(std::move(r));
  }
  if (retracted) {
    new_token_ratio_ = std::min(1.0, new_token_ratio_ + 0.3);
    log::info("KV cache is full: retract {} requests; #running-req: {}, new_token_ratio: {:.4f}", retracted,
              running_.size(), new_token_ratio_);
    std::lock_guard<std::mutex> lock(stats_mu_);
    stats_.num_retracted_total += retracted;
  }
}

bool Scheduler::run_decode() {
  if (running_.empty()) return false;
  // Every running request needs room for one more token. extend() counts tokens, so a retry after
  // a partial pass only extends the slots still short.
  for (;;) {
    bool ok = true;
    for (auto& r : running_) {
      const auto slot = static_cast<int32_t>(r->slot);
      if (cache_->num_tokens(slot) < r->computed_tokens + 1 && !cache_->extend(slot, 1)) {
        ok = false;
        break;
      }
    }
    if (ok) break;
    if (running_.size() == 1) {
      // SGLang's retract_decode: the last request is aborted (500) with these words.
      Request* last = running_.front().get();
      log::warning("retract_decode: aborted last request {} due to OOM", last->in.rid);
      finish(last,
             abort_reason(fmt::format("Out of memory even after retracting all other requests in the decode batch. "
                                      "Aborting the last request. (The KV cache holds {} tokens; it has {}.)",
                                      max_total_num_tokens(), last->computed_tokens + 1),
                          500),
             false);
      return true;
    }
    retract_for_decode();
  }
  std::vector<model::SequenceInput> batch;
  batch.reserve(running_.size());
  for (auto& r : running_) {
    model::SequenceInput s;
    s.tokens = {r->output_ids.back()};
    s.prefix_len = r->computed_tokens;
    auto pages = cache_->page_table(static_cast<int32_t>(r->slot));
    s.page_table.assign(pages.begin(), pages.end());
    batch.push_back(std::move(s));
  }
  // On a runner that samples on the device, a batch that needs nothing else from the logits gets
  // its tokens from there (only the ids cross to the host).
  const bool device_sampling =
      runner_->samples_on_device() && std::all_of(running_.begin(), running_.end(), [](const auto& r) {
        return !r->in.return_logprob && !r->in.sampling.has_penalties() && r->in.sampling.max_new_tokens > 0;
      });
  std::optional<Tensor> logits;
  std::vector<int32_t> sampled;
  std::optional<Error> forward_error;
  profiler_.forward_begin();
  if (Status joined = join_group_pass(static_cast<int64_t>(batch.size()), false); !joined.has_value()) {
    forward_error = joined.error();
  } else if (device_sampling) {
    std::vector<model::RowSampling> rows(running_.size());
    for (size_t i = 0; i < running_.size(); ++i) {
      const Request& r = *running_[i];
      rows[i].params = sampling_op_params(r.in.sampling);
      rows[i].seed = r.seed;
      rows[i].offset = static_cast<int64_t>(r.output_ids.size());
    }
    auto ids = runner_->forward_sample(batch, rows);
    if (ids) sampled = std::move(*ids);
    else forward_error = ids.error();
  } else {
    auto out = runner_->forward(batch, false);
    if (out) logits = std::move(*out);
    else forward_error = out.error();
  }
  profiler_.forward_end("decode", static_cast<int64_t>(batch.size()), static_cast<int64_t>(batch.size()));
  if (forward_error) {
    log::error("decode forward failed: {}", forward_error->message());
    while (!running_.empty()) finish(running_.back().get(), abort_reason("model error: " + forward_error->message(), 500), false);
    return true;
  }
  std::vector<Request*> reqs;
  std::vector<int64_t> rows;
  for (size_t i = 0; i < running_.size(); ++i) {
    ++running_[i]->computed_tokens;
    reqs.push_back(running_[i].get());
    rows.push_back(static_cast<int64_t>(i));
  }
  new_token_ratio_ = std::max(cfg_.min_new_token_ratio, new_token_ratio_ - cfg_.new_token_ratio_decay);
  if (device_sampling) process_tokens(reqs, sampled);
  else process_logits(reqs, *logits, rows);
  if (++decode_steps_since_log_ >= cfg_.decode_log_interval) log_decode();
  return true;
}

void Scheduler::process_logits(const std::vector<Request*>& reqs, const Tensor& logits,
                               const std::vector<int64_t>& rows) {
  const int64_t V = runner_->vocab_size();
  std::vector<Request*> finished;
  for (size_t i = 0; i < reqs.size(); ++i) {
    Request* r = reqs[i];
    const float* row = logits.data<float>() + rows[i] * V;
    if (r->in.sampling.max_new_tokens == 0) {
      // Prefill only (e.g. to score a prompt with input logprobs): nothing is sampled.
      FinishReason f;
      f.type = FinishReason::Type::kLength;
      r->pending_finish = f;
      finished.push_back(r);
      continue;
    }
    const int32_t tok = sample_next(row, V, *r, r->rng, sample_scratch_);
    if (r->in.return_logprob) r->pending_output_logprobs.push_back(token_logprob(row, V, tok, r->in.top_logprobs_num));
    accept_token(r, tok, finished);
  }
  for (Request* r : finished)
    if (!prefill_hand_off(r)) finish(r, *r->pending_finish, true);
}

void Scheduler::process_tokens(const std::vector<Request*>& reqs, const std::vector<int32_t>& tokens) {
  std::vector<Request*> finished;
  for (size_t i = 0; i < reqs.size(); ++i) accept_token(reqs[i], tokens[i], finished);
  for (Request* r : finished)
    if (!prefill_hand_off(r)) finish(r, *r->pending_finish, true);
}

void Scheduler::accept_token(Request* r, int32_t tok, std::vector<Request*>& finished) {
  r->output_ids.push_back(tok);
  ++generated_since_log_;
  if (check_finished(*r)) {
    finished.push_back(r);
  } else if (r->in.stream) {
    emit(*r, false, std::nullopt);
  }
}

bool Scheduler::check_finished(Request& r) {
  const auto& sp = r.in.sampling;
  const int32_t tok = r.output_ids.back();
  const int64_t out_len = static_cast<int64_t>(r.output_ids.size());
  FinishReason f;
  if (out_len >= sp.min_new_tokens) {
    if (!sp.ignore_eos && tok == cfg_.eos_token_id) {
      f.type = FinishReason::Type::kStop;
      f.matched_id = tok;
      r.pending_finish = f;
      return true;
    }
    if (std::find(sp.stop_token_ids.begin(), sp.stop_token_ids.end(), tok) != sp.stop_token_ids.end()) {
      f.type = FinishReason::Type::kStop;
      f.matched_id = tok;
      r.pending_finish = f;
      return true;
    }
    if (!sp.stop.empty() && decoder_) {
      size_t longest = 0;
      for (const auto& s : sp.stop) longest = std::max(longest, s.size());
      // A stop string of B bytes spans at most B + 1 tokens (each token has >= 1 byte, plus one
      // token that may straddle the start).
      const int64_t tail = std::min<int64_t>(out_len, static_cast<int64_t>(longest) + 1);
      const std::string text = decoder_->decode(
          std::span<const int32_t>(r.output_ids.data() + out_len - tail, static_cast<size_t>(tail)), sp.skip_special_tokens);
      for (const auto& s : sp.stop)
        if (text.find(s) != std::string::npos) {
          f.type = FinishReason::Type::kStop;
          f.matched_str = s;
          r.pending_finish = f;
          return true;
        }
    }
  }
  if (out_len >= sp.max_new_tokens || r.total_tokens() >= cfg_.context_length) {
    f.type = FinishReason::Type::kLength;
    f.length = out_len;
    r.pending_finish = f;
    return true;
  }
  return false;
}

void Scheduler::finish(Request* r, FinishReason reason, bool cache_kv) {
  if (r->slot >= 0) {
    // KV exists for the first computed_tokens tokens (the last sampled token has none yet).
    std::vector<int32_t> tokens(static_cast<size_t>(r->computed_tokens));
    for (int64_t i = 0; i < r->computed_tokens; ++i) tokens[static_cast<size_t>(i)] = r->token_at(i);
    cache_->finish(static_cast<int32_t>(r->slot), tokens, cache_kv);
    r->slot = -1;
  }
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    stats_.prompt_tokens_total += static_cast<int64_t>(r->in.input_ids.size());
    stats_.generation_tokens_total += static_cast<int64_t>(r->output_ids.size());
    stats_.cached_tokens_total += r->cached_tokens;
  }
  emit(*r, true, reason);
  if (chunked_owner_.get() == r) {
    chunked_owner_.reset();
    return;
  }
  auto it = std::find_if(running_.begin(), running_.end(), [&](const auto& p) { return p.get() == r; });
  if (it != running_.end()) running_.erase(it);
}

void Scheduler::emit(Request& r, bool finished, std::optional<FinishReason> reason) {
  RequestOutput out;
  out.rid = r.in.rid;
  out.new_ids.assign(r.output_ids.begin() + r.sent_ids, r.output_ids.end());
  r.sent_ids = static_cast<int64_t>(r.output_ids.size());
  out.output_logprobs = std::move(r.pending_output_logprobs);
  r.pending_output_logprobs.clear();
  if (!r.input_logprobs_sent && (finished || !r.pending_input_logprobs.empty())) {
    out.input_logprobs = std::move(r.pending_input_logprobs);
    r.pending_input_logprobs.clear();
    r.input_logprobs_sent = r.in.return_logprob && r.in.logprob_start_len >= 0;
  }
  out.finished = finished;
  out.finish_reason = std::move(reason);
  out.prompt_tokens = static_cast<int64_t>(r.in.input_ids.size());
  out.completion_tokens = static_cast<int64_t>(r.output_ids.size());
  out.cached_tokens = r.cached_tokens;
  out.total_retractions = r.retractions;
  out.dp_rank = cfg_.dp_rank;
  if (sink_) sink_(std::move(out));
}

void Scheduler::log_prefill(int64_t new_seqs, int64_t new_tokens, int64_t cached_tokens) {
  if (!cfg_.log_stats) return;
  const auto acc = cache_->accounting();
  const double usage = acc.total ? static_cast<double>(acc.in_requests + acc.cached - acc.evictable) / acc.total : 0.0;
  log::info("Prefill batch, #new-seq: {}, #new-token: {}, #cached-token: {}, token usage: {:.2f}, #running-req: {}, #queue-req: {}, {}",
            new_seqs, new_tokens, cached_tokens, usage, running_.size(), waiting_.size(), disagg_prefill_log());
}

void Scheduler::log_decode() {
  const auto now = Clock::now();
  const double dt = std::chrono::duration<double>(now - last_log_time_).count();
  const double tput = dt > 0 ? static_cast<double>(generated_since_log_) / dt : 0.0;
  last_log_time_ = now;
  generated_since_log_ = 0;
  decode_steps_since_log_ = 0;
  int64_t tokens = 0;
  for (const auto& r : running_) tokens += r->computed_tokens;
  const auto acc = cache_->accounting();
  const double usage = acc.total ? static_cast<double>(acc.in_requests + acc.cached - acc.evictable) / acc.total : 0.0;
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    stats_.last_gen_throughput = tput;
  }
  if (!cfg_.log_stats) return;
  log::info("Decode batch, #running-req: {}, #token: {}, token usage: {:.2f}, {}cuda graph: {}, gen throughput (token/s): {:.2f}, #queue-req: {}, ",
            running_.size(), tokens, usage, disagg_decode_log(), runner_->last_forward_used_graph() ? "True" : "False",
            tput, waiting_.size());
}

void Scheduler::update_stats() {
  SchedulerStats s;
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    s = stats_;
  }
  s.num_running = static_cast<int64_t>(running_.size()) + (chunked_owner_ ? 1 : 0);
  s.num_waiting = static_cast<int64_t>(waiting_.size());
  s.num_tokens = 0;
  for (const auto& r : running_) s.num_tokens += r->computed_tokens;
  s.kv = cache_->accounting();
  s.max_total_num_tokens = max_total_num_tokens();
  s.token_usage = s.kv.total ? static_cast<double>(s.kv.total - s.kv.free - s.kv.evictable) / s.kv.total : 0.0;
  s.new_token_ratio = new_token_ratio_;
  s.num_prealloc = static_cast<int64_t>(bootstrap_queue_.size() + prealloc_queue_.size());
  s.num_inflight = static_cast<int64_t>(inflight_queue_.size());
  s.num_transfer = static_cast<int64_t>(transfer_queue_.size());
  s.num_retracted_waiting = cfg_.disagg_mode == DisaggMode::kDecode ? static_cast<int64_t>(waiting_.size()) : 0;
  const int64_t prompt = s.prompt_tokens_total;
  s.cache_hit_rate = prompt ? static_cast<double>(s.cached_tokens_total) / prompt : 0.0;
  std::lock_guard<std::mutex> lock(stats_mu_);
  stats_ = s;
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard<std::mutex> lock(stats_mu_);
  return stats_;
}

}  // namespace pdserve::scheduler
