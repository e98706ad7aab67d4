// SGLang's FakeKVSender / FakeKVReceiver: used for requests whose bootstrap_host is 2.2.2.2 (the
// startup warmup and /health_generate). No peer, no bytes: the sender succeeds once the last chunk
// is "sent", the receiver once it has pages, with token 0 as the first token.
#pragma once

#include "scheduler/disagg_hooks.h"

namespace pdserve::disagg {

class FakeSender final : public scheduler::KvSender {
 public:
  scheduler::KvPoll poll() override { return status_; }
  std::string failure() const override { return reason_; }
  void send(std::span<const int32_t>, int64_t, bool last, const scheduler::TransferMetadata*) override {
    if (status_ != scheduler::KvPoll::kFailed) status_ = last ? scheduler::KvPoll::kSuccess : scheduler::KvPoll::kTransferring;
  }
  void abort(const std::string& reason) override {
    status_ = scheduler::KvPoll::kFailed;
    reason_ = reason;
  }

 private:
  scheduler::KvPoll status_ = scheduler::KvPoll::kWaitingForInput;
  std::string reason_;
};

class FakeReceiver final : public scheduler::KvReceiver {
 public:
  scheduler::KvPoll poll() override { return status_; }
  std::string failure() const override { return reason_; }
  void init(std::vector<int32_t>) override {
    if (status_ != scheduler::KvPoll::kFailed) status_ = scheduler::KvPoll::kSuccess;
  }
  scheduler::TransferMetadata metadata() const override { return {}; }
  void abort(const std::string& reason) override {
    status_ = scheduler::KvPoll::kFailed;
    reason_ = reason;
  }

 private:
  scheduler::KvPoll status_ = scheduler::KvPoll::kWaitingForInput;
  std::string reason_;
};

}  // namespace pdserve::disagg
