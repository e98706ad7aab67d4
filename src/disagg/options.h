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
  // The server's --api-key: the prefill's bootstrap server requires it on /route, and this side
  // sends it there (prefill registration PUT /route, decode GET /route). Empty: no key.
  std::string api_key;
  // Environment (SGLANG_DISAGGREGATION_*; a PDSERVE_ spelling wins when both are set).
  double bootstrap_timeout_s = 300;   // sender in Bootstrapping, receiver handshake
  double waiting_timeout_s = 300;     // receiver after init, sender waiting for the decode's ack
  double heartbeat_interval_s = 5;    // decode -> prefill bootstrap /health (min 2, as SGLang)
  int heartbeat_max_failure = 2;      // consecutive failures that declare the prefill lost (min 1)
  double test_failure_prob = 0;       // DISAGGREGATION_TEST_FAILURE_PROB: fail this fraction of transfers
  int64_t max_chunk_bytes = 4 << 20;  // PDSERVE_DISAGGREGATION_CHUNK_BYTES: one transfer call at most
  // PDSERVE_DISAGGREGATION_TEST_HOLD_RID_PREFIX (test hook, prefill): requests whose rid starts with
  // it never send their KV, so they stay in the inflight queue (Transferring) until aborted or the
  // acknowledgement deadline passes. Lets tests catch that state without racing the transfer.
  std::string test_hold_rid_prefix;
  // PDSERVE_DISAGGREGATION_TEST_ATTN_TP=SIZE:RANK (test hook; servers with --dp-size 1): this
  // server acts as attention-TP rank RANK of SIZE. Servers of this build compute attention whole
  // (attention TP 1), and with MLA every attention-TP rank holds the whole latent cache, so SIZE
  // such servers given the same requests are, to the KV transfer, one attention-TP group: how the
  // e2e tests pair different attention-TP sizes. A prefill of rank > 0 starts no bootstrap server
  // and registers with the one at --disaggregation-bootstrap-port (rank 0's).
  int test_attn_tp_size = 1, test_attn_tp_rank = 0;
  // PDSERVE_DISAGGREGATION_TEST_DROP_REGISTRATIONS=N (test hook, prefill): the first N
  // registrations from decodes are ignored, as if lost on the way, to show they are sent again.
  int test_drop_registrations = 0;
  // PDSERVE_DISAGGREGATION_TEST_DROP_ACKS=N (test hook, decode): the first N acknowledgements of
  // received KV are not sent, as if lost, to show the prefill asks again (a re-sent DONE).
  int test_drop_acks = 0;
};

// Reads the environment variables into `o` (flags already set). Errors name the variable.
Status load_disagg_env(DisaggOptions& o);

// The host:port of a bootstrap server, for messages ("127.0.0.1:8998").
std::string bootstrap_addr(const std::string& host, int port);

// SGLang's FAKE_BOOTSTRAP_HOST: requests carrying it use fake endpoints (warmup, /health_generate).
inline constexpr const char* kFakeBootstrapHost = "2.2.2.2";

}  // namespace pdserve::disagg
