// PD-disaggregation settings: the server's --disaggregation-* flags plus SGLang's environment
// variables for timeouts and heartbeats (sglang-spec §1.3), resolved once into a value that is
// passed down (no global state).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "scheduler/disagg_hooks.h"

namespace pdserve::disagg {

enum class Backend { kTcp, kFake, kCudaIpc };

// The backends this build can run ("tcp", "fake", and "cuda-ipc" when built with CUDA).
std::vector<std::string> available_backends();
// "tcp" -> kTcp. mooncake/nixl/ascend/nccl and unknown names are an error that lists what this
// build has, so a copied SGLang command line fails at startup rather than at the first request.
Result<Backend> parse_backend(const std::string& name);
const char* backend_name(Backend b);

Result<scheduler::DisaggMode> parse_mode(const std::string& name);  // null | prefill | decode

struct DisaggOptions {
  scheduler::DisaggMode mode = scheduler::DisaggMode::kNull;
  Backend backend = Backend::kTcp;
  int bootstrap_port = 8998;
  std::string ib_device;           // accepted and reported (no RDMA backend in this build)
  std::string advertise_host;      // address peers use to reach this server's ranks
  // Environment (SGLANG_DISAGGREGATION_*; a PDSERVE_ spelling wins when both are set).
  double bootstrap_timeout_s = 300;   // sender in Bootstrapping, receiver handshake
  double waiting_timeout_s = 300;     // receiver after init, sender waiting for the decode's ack
  double heartbeat_interval_s = 5;    // decode -> prefill bootstrap /health (min 2, as SGLang)
  int heartbeat_max_failure = 2;      // consecutive failures that declare the prefill lost (min 1)
  double test_failure_prob = 0;       // DISAGGREGATION_TEST_FAILURE_PROB: fail this fraction of transfers
  int64_t max_chunk_bytes = 4 << 20;  // PDSERVE_DISAGGREGATION_CHUNK_BYTES: one transfer call at most
};

// Reads the environment variables into `o` (flags already set). Errors name the variable.
Status load_disagg_env(DisaggOptions& o);

// The host:port of a bootstrap server, for messages ("127.0.0.1:8998").
std::string bootstrap_addr(const std::string& host, int port);

// SGLang's FAKE_BOOTSTRAP_HOST: requests carrying it use fake endpoints (warmup, /health_generate).
inline constexpr const char* kFakeBootstrapHost = "2.2.2.2";

}  // namespace pdserve::disagg
