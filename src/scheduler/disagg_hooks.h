// The small interfaces a scheduler calls in PD-disaggregation mode (SGLang's KVSender/KVReceiver,
// base/conn.py). They live here because the scheduler may not include disagg/ (module order,
// DESIGN.md §2): disagg/ implements them over its bootstrap server, ZeroMQ control channel and
// transfer backends, and the server hands the implementation to each scheduler.
//
// Every call is made from the scheduler thread and must not block: the transfer work happens on
// the implementation's own threads, the scheduler only polls.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace pdserve::scheduler {

enum class DisaggMode { kNull, kPrefill, kDecode };

// SGLang's KVPoll values (the numbers are part of its wire protocol; we keep them).
enum class KvPoll : int { kFailed = 0, kBootstrapping = 1, kWaitingForInput = 2, kTransferring = 3, kSuccess = 4 };
const char* kv_poll_name(KvPoll p);

// The request's PD fields (GenerateReqInput.bootstrap_*), as the router sets them on both sides.
struct BootstrapInfo {
  std::string host;
  int port = 0;
  uint64_t room = 0;
};

// The metadata slot: what the decode side needs besides the KV to continue the request.
struct TransferMetadata {
  int32_t first_token = 0;
  int64_t cached_tokens = 0;
  bool has_logprob = false;
  float logprob = 0;
  std::vector<std::pair<float, int32_t>> top_logprobs;
};

// Prefill side, one per request. Bootstrapping until the decode's destination pages arrive
// (WaitingForInput), Transferring while chunks are sent, Success once the decode acknowledged.
class KvSender {
 public:
  virtual ~KvSender() = default;
  virtual KvPoll poll() = 0;
  virtual std::string failure() const = 0;  // why it failed (after kFailed)
  // Sends the KV of the request's pages [first_page, first_page + src_pages.size()) (the pages of
  // the prompt in order; src_pages are this side's page ids). `meta` goes with the last chunk.
  virtual void send(std::span<const int32_t> src_pages, int64_t first_page, bool last,
                    const TransferMetadata* meta) = 0;
  virtual void abort(const std::string& reason) = 0;
};

// Decode side, one per request. Bootstrapping during the handshake with the prefill rank,
// WaitingForInput once it can take destination pages, Transferring after init(), Success when the
// KV and metadata are in place.
class KvReceiver {
 public:
  virtual ~KvReceiver() = default;
  virtual KvPoll poll() = 0;
  virtual std::string failure() const = 0;
  virtual void init(std::vector<int32_t> dst_pages) = 0;
  virtual TransferMetadata metadata() const = 0;  // valid after kSuccess
  virtual void abort(const std::string& reason) = 0;
};

// One per scheduler (DP rank): makes the per-request endpoints. A failure to even start (bad
// bootstrap address syntax) is reported by the endpoint's first poll, never thrown.
class DisaggEndpoints {
 public:
  virtual ~DisaggEndpoints() = default;
  virtual std::unique_ptr<KvSender> make_sender(const std::string& rid, const BootstrapInfo& b, int64_t num_pages) = 0;
  virtual std::unique_ptr<KvReceiver> make_receiver(const std::string& rid, const BootstrapInfo& b) = 0;
};

}  // namespace pdserve::scheduler
