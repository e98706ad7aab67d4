// The server's PD-disaggregation wiring: parses the --disaggregation-* flags and environment,
// starts the bootstrap server (prefill), makes one KV manager per DP rank over that rank's KV
// buffers and hands it to the rank's scheduler, and provides the PD warmup request and the
// transfer metrics. A server in mode null has none of this.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "disagg/bootstrap_server.h"
#include "disagg/decode_manager.h"
#include "disagg/options.h"
#include "disagg/prefill_manager.h"
#include "scheduler/scheduler.h"
#include "server/server_args.h"

namespace pdserve::server {

// Where this process's DP ranks sit in the server (multi-node: node r runs ranks
// [first_rank, first_rank + count) of dp_size; node 0 runs the bootstrap server, the others
// register their prefill ranks with it at bootstrap_host).
struct RankPlacement {
  int first_rank = 0;
  int dp_size = 0;             // 0: the number of local ranks (one process)
  std::string bootstrap_host;  // empty: this process's own address
  bool run_bootstrap = true;
  std::string advertise_host;  // empty: derived from the bind host (a wildcard advertises loopback)
};

class DisaggSetup {
 public:
  // Validates the flags and environment (clear errors at startup: unknown or unavailable backend,
  // bad timeouts). Returns nullptr for --disaggregation-mode null.
  static Result<std::unique_ptr<DisaggSetup>> create(const ServerArgs& args);
  ~DisaggSetup();

  scheduler::DisaggMode mode() const { return opts_.mode; }
  const disagg::DisaggOptions& options() const { return opts_; }

  // Binds the bootstrap server (prefill) and every rank's control socket, registers prefill ranks,
  // and gives each scheduler its endpoints. `kv[i]` are rank i's KV buffers.
  Status start(const std::string& host, const std::vector<scheduler::Scheduler*>& schedulers,
               const std::vector<scheduler::KvBufferView>& kv, const RankPlacement& where = {});
  void stop();

  // SGLang's PD warmup body: one fake-host request per DP rank (bootstrap_room picks the rank).
  std::string warmup_body(int64_t dp_size) const;
  // Transfer latency/speed observations since the last call (all ranks).
  std::vector<disagg::TransferSample> drain_samples();
  nlohmann::json info() const;  // for /server_info

 private:
  DisaggSetup() = default;
  disagg::DisaggOptions opts_;
  std::unique_ptr<disagg::BootstrapServer> bootstrap_;
  std::vector<std::shared_ptr<disagg::PrefillKvManager>> prefill_;
  std::vector<std::shared_ptr<disagg::DecodeKvManager>> decode_;
};

}  // namespace pdserve::server
