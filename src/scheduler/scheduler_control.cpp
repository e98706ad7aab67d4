// The scheduler's control commands, run on its own thread between batches (Scheduler::control):
// flush_cache, slow_down, hold_decode / release_decode, get_load, internal_state and the
// profiler's start/stop; and the decode hold's deadline.
#include "base/logging.h"
#include "scheduler/scheduler.h"

namespace pdserve::scheduler {

using Clock = std::chrono::steady_clock;

void Scheduler::handle(Control&& c) {
  nlohmann::json reply;
  if (c.command == "flush_cache") {
    const int64_t queued = static_cast<int64_t>(waiting_.size()) + (chunked_owner_ ? 1 : 0);
    if (queued > 0 || !running_.empty()) {
      log::warning("Cache not flushed because there are pending requests. #queue-req: {}, #running-req: {}", queued,
                   running_.size());
      reply = {{"success", false}};
    } else {
      auto st = cache_->flush();
      if (st.has_value()) {
        log::info("Cache flushed successfully!");
        reply = {{"success", true}};
      } else {
        reply = {{"success", false}, {"message", st.error().message()}};
      }
    }
  } else if (c.command == "slow_down") {
    const auto& t = c.args.contains("forward_sleep_time") ? c.args["forward_sleep_time"] : nlohmann::json();
    if (t.is_number() && t.get<double>() > 0) {
      forward_sleep_s_ = t.get<double>();
    } else {
      forward_sleep_s_.reset();
    }
    reply = nullptr;
  } else if (c.command == "hold_decode") {
    const auto& t = c.args.contains("timeout_s") ? c.args["timeout_s"] : nlohmann::json();
    if (!t.is_number() || t.get<double>() <= 0) {
      reply = {{"success", false}, {"message", "hold_decode needs a positive 'timeout_s'"}};
    } else {
      // The deadline makes a hold end even if whoever asked for it never releases it.
      decode_hold_since_ = Clock::now();
      decode_hold_until_ = decode_hold_since_ + std::chrono::duration_cast<Clock::duration>(
                                                    std::chrono::duration<double>(t.get<double>()));
      log::info("Decode hold: no decode batches until released (timeout {}s). #running-req: {}", t.get<double>(),
                running_.size());
      reply = {{"success", true}, {"running", static_cast<int64_t>(running_.size())}};
    }
  } else if (c.command == "release_decode") {
    const bool was = decode_hold_until_.has_value();
    if (was) end_decode_hold(c.args.value("reason", "released"));
    reply = {{"success", true}, {"was_holding", was}, {"running", static_cast<int64_t>(running_.size())}};
  } else if (c.command == "get_load") {
    int64_t tokens = 0;
    for (const auto& r : running_) tokens += r->total_tokens();
    reply = {{"dp_rank", cfg_.dp_rank},
             {"num_reqs", static_cast<int64_t>(running_.size() + waiting_.size()) + (chunked_owner_ ? 1 : 0)},
             {"num_waiting_reqs", static_cast<int64_t>(waiting_.size())},
             {"num_tokens", tokens}};
  } else if (c.command == "internal_state") {
    const auto s = stats();
    reply = {{"dp_rank", cfg_.dp_rank},
             {"last_gen_throughput", s.last_gen_throughput},
             {"num_running_reqs", s.num_running},
             {"num_queue_reqs", s.num_waiting},
             {"num_prealloc_reqs", s.num_prealloc},
             {"num_inflight_reqs", s.num_inflight},
             {"num_transfer_reqs", s.num_transfer},
             {"new_token_ratio", s.new_token_ratio},
             {"memory_usage", {{"kvcache_pages_total", s.kv.total},
                               {"kvcache_pages_free", s.kv.free},
                               {"kvcache_pages_in_requests", s.kv.in_requests},
                               {"kvcache_pages_cached", s.kv.cached},
                               {"token_capacity", s.max_total_num_tokens}}},
             {"kv_accounting_consistent", cache::check_accounting(s.kv).has_value()}};
  } else if (c.command == "start_profile" || c.command == "stop_profile") {
    reply = profiler_.control(c.command, c.args);
  } else {
    reply = {{"error", "unknown control command '" + c.command + "'"}};
  }
  c.reply.set_value(std::move(reply));
}

bool Scheduler::decode_held() {
  if (!decode_hold_until_) return false;
  if (Clock::now() < *decode_hold_until_) return true;
  end_decode_hold("timeout");
  return false;
}

void Scheduler::end_decode_hold(const std::string& reason) {
  log::info("Decode hold released ({}) after {:.2f}s. #running-req: {}", reason,
            std::chrono::duration<double>(Clock::now() - decode_hold_since_).count(), running_.size());
  decode_hold_until_.reset();
}

}  // namespace pdserve::scheduler
