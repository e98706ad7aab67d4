// Prometheus metrics with SGLang's names and labels (sglang:*), so existing dashboards work.
// Scheduler gauges are read at scrape time; request counters and latency histograms are fed by
// the tokenizer manager as requests finish.
#pragma once

#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "disagg/transfer_stats.h"
#include "scheduler/scheduler.h"
#include "server/rank_handle.h"
#include "server/tokenizer_manager.h"

namespace pdserve::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}
  void observe(double v);
  // Appends the _bucket/_sum/_count lines for `name` with `labels` ("a=\"b\",c=\"d\"").
  void render(std::string& out, const std::string& name, const std::string& labels) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket (not cumulative); last = +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

class Metrics final : public RequestMetricsSink {
 public:
  Metrics(std::string model_name, std::vector<const RankHandle*> schedulers);
  void observe_finished(double e2e_s, double ttft_s, int64_t prompt_tokens, int64_t completion_tokens,
                        int64_t cached_tokens, bool aborted) override;
  void observe_token_gap(double seconds) override;
  // The text exposition format (version 0.0.4).
  std::string render() const;
  // PD: where the KV transfer observations come from (drained at each scrape).
  void set_transfer_source(std::function<std::vector<disagg::TransferSample>()> f) { transfer_source_ = std::move(f); }
  // More series rendered at scrape time (online EPLB's gauge and counter), given the model's labels.
  void set_extra_source(std::function<std::string(const std::string& labels)> f) { extra_source_ = std::move(f); }

 private:
  std::string model_name_;
  std::vector<const RankHandle*> schedulers_;
  mutable std::mutex mu_;
  Histogram ttft_, itl_, e2e_;
  std::function<std::vector<disagg::TransferSample>()> transfer_source_;
  std::function<std::string(const std::string&)> extra_source_;
  mutable Histogram kv_latency_ms_, kv_speed_gb_s_;  // fed from transfer_source_ at render time
  uint64_t finished_ = 0, aborted_ = 0;
};

}  // namespace pdserve::server
