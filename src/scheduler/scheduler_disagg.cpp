// The PD-disaggregation queues of the scheduler (SGLang's prefill.py / decode.py), kept apart from
// scheduler.cpp so the normal path stays readable:
//   prefill: bootstrap queue (waiting for the decode's destination pages) -> waiting/running (normal
//            chunked prefill; every chunk's full pages are sent) -> inflight queue (last pages and the
//            metadata sent; KV held until the decode acknowledged) -> done, KV released.
//   decode:  prealloc queue (handshake, then admission by KV with reserved decode tokens) -> transfer
//            queue (pages allocated and handed to the receiver) -> running batch with the first
//            token from the metadata; retraction recomputes locally like a normal server.
// Every failure frees this side's KV and answers the client with a 500 abort and a message; the
// endpoint (disagg/) tells the peer, which frees its side.
#include <algorithm>

#include <fmt/format.h>

#include "base/logging.h"
#include "scheduler/scheduler.h"

namespace pdserve::scheduler {

const char* kv_poll_name(KvPoll p) {
  switch (p) {
    case KvPoll::kFailed: return "Failed";
    case KvPoll::kBootstrapping: return "Bootstrapping";
    case KvPoll::kWaitingForInput: return "WaitingForInput";
    case KvPoll::kTransferring: return "Transferring";
    case KvPoll::kSuccess: return "Success";
  }
  return "?";
}

namespace {

std::string describe(const Request& r) {
  return fmt::format("rid={} bootstrap_room={}", r.in.rid, r.in.bootstrap ? r.in.bootstrap->room : 0);
}

}  // namespace

// Called from handle(GenerateInput) with stats_mu_ held: must not take it again.
bool Scheduler::disagg_add(std::unique_ptr<Request>& r) {
  if (!r->in.bootstrap) {
    ++stats_.num_aborted_total;
    emit(*r, true, abort_reason("Disaggregated request received without bootstrap room id", 400));
    return true;
  }
  if (!disagg_) {
    ++stats_.num_aborted_total;
    emit(*r, true, abort_reason("this server has no KV transfer endpoints configured", 500));
    return true;
  }
  const int64_t page = runner_->page_size();
  const int64_t pages = (static_cast<int64_t>(r->in.input_ids.size()) + page - 1) / page;
  if (cfg_.disagg_mode == DisaggMode::kPrefill) {
    // As SGLang: the prefill samples exactly the first token; the decode generates the rest.
    r->in.sampling.max_new_tokens = std::min<int64_t>(r->in.sampling.max_new_tokens, 1);
    r->in.sampling.min_new_tokens = 0;
    r->sender = disagg_->make_sender(r->in.rid, *r->in.bootstrap, pages);
    bootstrap_queue_.push_back(std::move(r));
  } else {
    r->receiver = disagg_->make_receiver(r->in.rid, *r->in.bootstrap);
    prealloc_queue_.push_back(std::move(r));
  }
  return true;
}

bool Scheduler::disagg_busy() const {
  return !bootstrap_queue_.empty() || !inflight_queue_.empty() || !prealloc_queue_.empty() || !transfer_queue_.empty();
}

void Scheduler::process_disagg_queues() {
  if (!disagg_busy()) return;
  if (++disagg_loop_ct_ % std::max<int64_t>(cfg_.disagg_polling_interval, 1) != 0) return;
  if (cfg_.disagg_mode == DisaggMode::kPrefill) {
    process_prefill_bootstrap();
    process_prefill_inflight();
  } else {
    process_decode_prealloc();
    process_decode_transfer();
  }
}

void Scheduler::disagg_fail(std::unique_ptr<Request> r, const std::string& message, bool transfer_phase) {
  if (r->slot >= 0) {
    cache_->retract(static_cast<int32_t>(r->slot));
    r->slot = -1;
  }
  log::warning("{}", message);
  {
    std::lock_guard<std::mutex> lock(stats_mu_);
    ++(transfer_phase ? stats_.num_transfer_failed_total : stats_.num_bootstrap_failed_total);
    ++stats_.num_aborted_total;
  }
  emit(*r, true, abort_reason(message, 500));
}

void Scheduler::process_prefill_bootstrap() {
  for (auto it = bootstrap_queue_.begin(); it != bootstrap_queue_.end();) {
    Request& r = **it;
    const KvPoll p = r.sender->poll();
    if (p == KvPoll::kFailed) {
      auto owned = std::move(*it);
      it = bootstrap_queue_.erase(it);
      const std::string msg = fmt::format("Prefill bootstrap failed for request {} with exception {}", describe(r),
                                          r.sender->failure());
      disagg_fail(std::move(owned), msg, false);
    } else if (p == KvPoll::kWaitingForInput) {
      // The decode's pages are known: the request joins the normal prefill queue.
      waiting_.push_back(std::move(*it));
      it = bootstrap_queue_.erase(it);
    } else {
      ++it;
    }
  }
}

void Scheduler::prefill_send(Request& r, bool last) {
  const int64_t page = runner_->page_size();
  const int64_t prompt = static_cast<int64_t>(r.in.input_ids.size());
  // Non-final chunks send only full pages (the partial last page is still being filled); the final
  // hand-off sends the rest of the prompt's pages.
  const int64_t end = last ? (prompt + page - 1) / page : std::min(r.computed_tokens, prompt) / page;
  auto table = cache_->page_table(static_cast<int32_t>(r.slot));
  std::span<const int32_t> pages;
  if (end > r.sent_pages) pages = table.subspan(static_cast<size_t>(r.sent_pages), static_cast<size_t>(end - r.sent_pages));
  if (!last) {
    if (!pages.empty()) r.sender->send(pages, r.sent_pages, false, nullptr);
  } else {
    TransferMetadata meta;
    meta.first_token = r.output_ids.empty() ? 0 : r.output_ids.back();
    meta.cached_tokens = r.cached_tokens;
    if (r.in.return_logprob && !r.pending_output_logprobs.empty()) {
      const auto& lp = r.pending_output_logprobs.back();
      meta.has_logprob = true;
      meta.logprob = lp.logprob;
      meta.top_logprobs = lp.top;
    }
    r.sender->send(pages, r.sent_pages, true, &meta);
  }
  r.sent_pages = std::max(r.sent_pages, end);
}

bool Scheduler::prefill_hand_off(Request* r) {
  if (cfg_.disagg_mode != DisaggMode::kPrefill || !r->sender) return false;
  auto it = std::find_if(running_.begin(), running_.end(), [&](const auto& p) { return p.get() == r; });
  if (it == running_.end()) return false;
  prefill_send(*r, true);
  // The KV stays owned by the request until the decode acknowledged it (inflight queue).
  inflight_queue_.push_back(std::move(*it));
  running_.erase(it);
  return true;
}

void Scheduler::process_prefill_inflight() {
  for (auto it = inflight_queue_.begin(); it != inflight_queue_.end();) {
    Request& r = **it;
    const KvPoll p = r.sender->poll();
    if (p == KvPoll::kSuccess) {
      r.sender.reset();
      FinishReason f = r.pending_finish.value_or(FinishReason{});
      finish(&r, f, true);  // releases the KV (into the prefix cache); answers the prefill's client
      it = inflight_queue_.erase(it);
    } else if (p == KvPoll::kFailed) {
      auto owned = std::move(*it);
      it = inflight_queue_.erase(it);
      const std::string msg =
          fmt::format("Prefill transfer failed for request {} with exception {}", describe(r), r.sender->failure());
      disagg_fail(std::move(owned), msg, true);
    } else {
      ++it;
    }
  }
}

void Scheduler::process_decode_prealloc() {
  const int64_t page = runner_->page_size();
  bool blocked = false;  // FIFO: once one request does not fit, later ones wait too
  for (auto it = prealloc_queue_.begin(); it != prealloc_queue_.end();) {
    Request& r = **it;
    const KvPoll p = r.receiver->poll();
    if (p == KvPoll::kFailed) {
      auto owned = std::move(*it);
      it = prealloc_queue_.erase(it);
      const std::string msg =
          fmt::format("Decode handshake failed for request {} with exception {}", describe(r), r.receiver->failure());
      disagg_fail(std::move(owned), msg, false);
      continue;
    }
    if (p != KvPoll::kWaitingForInput || blocked) {
      ++it;
      continue;
    }
    // SGLang's admission: the prompt plus num_reserved_decode_tokens must fit in what is left
    // after reserving the same number of tokens for every request this rank already holds. A rank
    // holding nothing admits any prompt that fits: the reserve guards running requests' future
    // tokens, and with none, waiting for room the reserve asks would wait forever on a cache
    // smaller than prompt + reserve (SGLang stalls there; retraction covers a later shortage).
    const int64_t len = static_cast<int64_t>(r.in.input_ids.size());
    const int64_t held = static_cast<int64_t>(running_.size() + transfer_queue_.size() + waiting_.size());
    const int64_t allocatable = cache_->available_pages() * page - cfg_.num_reserved_decode_tokens * held;
    const bool room = static_cast<int64_t>(running_.size() + transfer_queue_.size()) < cfg_.max_running_requests;
    const int64_t reserve = held == 0 ? 0 : cfg_.num_reserved_decode_tokens;
    if (!room || len + reserve > allocatable) {
      blocked = true;
      ++it;
      continue;
    }
    auto adm = cache_->admit(r.in.input_ids, 0);
    if (!adm) {
      blocked = true;
      ++it;
      continue;
    }
    if (!cache_->extend(adm->slot, len)) {
      cache_->retract(adm->slot);
      blocked = true;
      ++it;
      continue;
    }
    r.slot = adm->slot;
    auto table = cache_->page_table(adm->slot);
    r.receiver->init(std::vector<int32_t>(table.begin(), table.end()));
    transfer_queue_.push_back(std::move(*it));
    it = prealloc_queue_.erase(it);
  }
}

void Scheduler::process_decode_transfer() {
  for (auto it = transfer_queue_.begin(); it != transfer_queue_.end();) {
    Request& r = **it;
    const KvPoll p = r.receiver->poll();
    if (p == KvPoll::kFailed) {
      auto owned = std::move(*it);
      it = transfer_queue_.erase(it);
      const std::string msg =
          fmt::format("Decode transfer failed for request {} with exception {}", describe(r), r.receiver->failure());
      disagg_fail(std::move(owned), msg, true);
      continue;
    }
    if (p != KvPoll::kSuccess) {
      ++it;
      continue;
    }
    const TransferMetadata meta = r.receiver->metadata();
    r.receiver.reset();
    auto owned = std::move(*it);
    it = transfer_queue_.erase(it);
    if (meta.first_token < 0 || meta.first_token >= runner_->vocab_size()) {
      disagg_fail(std::move(owned), fmt::format("Decode transfer failed for request {}: first token {} is outside the vocabulary",
                                                describe(r), meta.first_token), true);
      continue;
    }
    // The prebuilt state: prompt KV in place, the first token sampled by the prefill.
    r.output_ids = {meta.first_token};
    r.computed_tokens = static_cast<int64_t>(r.in.input_ids.size());
    r.cached_tokens = meta.cached_tokens;
    if (r.in.return_logprob && meta.has_logprob)
      r.pending_output_logprobs.push_back(TokenLogprob{meta.logprob, meta.first_token, meta.top_logprobs});
    ++generated_since_log_;
    Request* raw = owned.get();
    running_.push_back(std::move(owned));
    if (check_finished(*raw)) {
      finish(raw, *raw->pending_finish, false);
    } else if (raw->in.stream) {
      emit(*raw, false, std::nullopt);
    }
  }
}

int64_t Scheduler::disagg_abort(const std::function<bool(const Request&)>& match, const std::string& message) {
  int64_t n = 0;
  for (auto* q : {&bootstrap_queue_, &inflight_queue_, &prealloc_queue_, &transfer_queue_}) {
    for (auto it = q->begin(); it != q->end();) {
      Request& r = **it;
      if (!match(r)) {
        ++it;
        continue;
      }
      // The endpoint tells the peer, which frees its side of the KV.
      if (r.sender) r.sender->abort(message);
      if (r.receiver) r.receiver->abort(message);
      if (r.slot >= 0) {
        cache_->retract(static_cast<int32_t>(r.slot));
        r.slot = -1;
      }
      emit(r, true, abort_reason(message, 0));
      it = q->erase(it);
      ++n;
    }
  }
  return n;
}

void Scheduler::disagg_stop(const std::string& reason) {
  for (auto* q : {&bootstrap_queue_, &inflight_queue_, &prealloc_queue_, &transfer_queue_})
    for (auto& r : *q) {
      if (r->sender) r->sender->abort(reason);
      if (r->receiver) r->receiver->abort(reason);
      if (r->slot >= 0) {
        cache_->retract(static_cast<int32_t>(r->slot));
        r->slot = -1;
      }
      emit(*r, true, abort_reason(reason, 503));
    }
  bootstrap_queue_.clear();
  inflight_queue_.clear();
  prealloc_queue_.clear();
  transfer_queue_.clear();
}

std::string Scheduler::disagg_prefill_log() const {
  if (cfg_.disagg_mode != DisaggMode::kPrefill) return "";
  return fmt::format("#prealloc-req: {}, #inflight-req: {}, ", bootstrap_queue_.size(), inflight_queue_.size());
}

std::string Scheduler::disagg_decode_log() const {
  if (cfg_.disagg_mode != DisaggMode::kDecode) return "";
  int64_t pre = 0;
  for (const auto& r : transfer_queue_) pre += static_cast<int64_t>(r->in.input_ids.size());
  const int64_t total = std::max<int64_t>(max_total_num_tokens(), 1);
  return fmt::format("pre-allocated usage: {:.2f}, #prealloc-req: {}, #transfer-req: {}, #retracted-req: {}, ",
                     static_cast<double>(pre) / static_cast<double>(total), prealloc_queue_.size(),
                     transfer_queue_.size(), waiting_.size());
}

}  // namespace pdserve::scheduler
