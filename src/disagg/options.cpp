#include "disagg/options.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace pdserve::disagg {

std::vector<std::string> available_backends() {
#if defined(PDSERVE_HAVE_CUDA)
  return {"tcp", "fake", "cuda-ipc"};
#else
  return {"tcp", "fake"};
#endif
}

const char* backend_name(Backend b) {
  switch (b) {
    case Backend::kTcp: return "tcp";
    case Backend::kFake: return "fake";
    case Backend::kCudaIpc: return "cuda-ipc";
  }
  return "?";
}

Result<Backend> parse_backend(const std::string& name) {
  const auto have = available_backends();
  const std::string list = fmt::format("{}", fmt::join(have, ", "));
  if (name == "tcp") return Backend::kTcp;
  if (name == "fake") return Backend::kFake;
  if (name == "cuda-ipc") {
#if defined(PDSERVE_HAVE_CUDA)
    return Backend::kCudaIpc;
#else
    return make_error(ErrorCode::kUnsupported,
                      "--disaggregation-transfer-backend cuda-ipc needs a CUDA build; this build has: {}", list);
#endif
  }
  if (name == "mooncake" || name == "nixl" || name == "ascend" || name == "nccl")
    return make_error(ErrorCode::kUnsupported,
                      "--disaggregation-transfer-backend {} is not available in pdserve; this build has: {}", name, list);
  return make_error(ErrorCode::kInvalidArgument, "unknown --disaggregation-transfer-backend '{}'; this build has: {}",
                    name, list);
}

Result<scheduler::DisaggMode> parse_mode(const std::string& name) {
  if (name == "null") return scheduler::DisaggMode::kNull;
  if (name == "prefill") return scheduler::DisaggMode::kPrefill;
  if (name == "decode") return scheduler::DisaggMode::kDecode;
  return make_error(ErrorCode::kInvalidArgument, "--disaggregation-mode must be null, prefill or decode (got '{}')", name);
}

namespace {

// PDSERVE_X, else SGLANG_X, else SGL_X (SGLang's deprecated spelling).
const char* env_value(const std::string& sglang_name, std::string& used) {
  const std::string base = sglang_name.rfind("SGLANG_", 0) == 0 ? sglang_name.substr(7) : sglang_name;
  for (const std::string& n : {"PDSERVE_" + base, sglang_name, "SGL_" + base}) {
    if (const char* v = std::getenv(n.c_str()); v && *v) {
      used = n;
      return v;
    }
  }
  return nullptr;
}

Status read_double(const std::string& name, double& out, double min_value) {
  std::string used;
  const char* v = env_value(name, used);
  if (!v) return ok_status();
  char* end = nullptr;
  const double d = std::strtod(v, &end);
  if (end == v || *end != '\0' || !(d >= 0))
    return make_error(ErrorCode::kInvalidArgument, "{}={} is not a non-negative number", used, v);
  out = std::max(d, min_value);
  return ok_status();
}

}  // namespace

Status load_disagg_env(DisaggOptions& o) {
  PDSERVE_RETURN_IF_ERROR(read_double("SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT", o.bootstrap_timeout_s, 0.1));
  PDSERVE_RETURN_IF_ERROR(read_double("SGLANG_DISAGGREGATION_WAITING_TIMEOUT", o.waiting_timeout_s, 0.1));
  PDSERVE_RETURN_IF_ERROR(read_double("SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL", o.heartbeat_interval_s, 2.0));
  double failures = o.heartbeat_max_failure;
  PDSERVE_RETURN_IF_ERROR(read_double("SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE", failures, 1.0));
  o.heartbeat_max_failure = static_cast<int>(failures);
  PDSERVE_RETURN_IF_ERROR(read_double("DISAGGREGATION_TEST_FAILURE_PROB", o.test_failure_prob, 0.0));
  if (o.test_failure_prob > 1) return make_error(ErrorCode::kInvalidArgument, "DISAGGREGATION_TEST_FAILURE_PROB must be in [0, 1]");
  double chunk = static_cast<double>(o.max_chunk_bytes);
  PDSERVE_RETURN_IF_ERROR(read_double("PDSERVE_DISAGGREGATION_CHUNK_BYTES", chunk, 4096.0));
  o.max_chunk_bytes = static_cast<int64_t>(chunk);
  double drop = 0;
  PDSERVE_RETURN_IF_ERROR(read_double("PDSERVE_DISAGGREGATION_TEST_DROP_REGISTRATIONS", drop, 0.0));
  o.test_drop_registrations = static_cast<int>(std::min(drop, 1e6));
  drop = 0;
  PDSERVE_RETURN_IF_ERROR(read_double("PDSERVE_DISAGGREGATION_TEST_DROP_ACKS", drop, 0.0));
  o.test_drop_acks = static_cast<int>(std::min(drop, 1e6));
  if (const char* hold = std::getenv("PDSERVE_DISAGGREGATION_TEST_HOLD_RID_PREFIX"); hold && *hold) o.test_hold_rid_prefix = hold;
  if (const char* tp = std::getenv("PDSERVE_DISAGGREGATION_TEST_ATTN_TP"); tp && *tp) {
    int size = 0, rank = -1;
    char extra = 0;
    if (std::sscanf(tp, "%d:%d%c", &size, &rank, &extra) != 2 || size < 1 || size > 64 || rank < 0 || rank >= size)
      return make_error(ErrorCode::kInvalidArgument,
                        "PDSERVE_DISAGGREGATION_TEST_ATTN_TP={} must be SIZE:RANK with 1 <= SIZE <= 64 and 0 <= RANK < SIZE", tp);
    o.test_attn_tp_size = size;
    o.test_attn_tp_rank = rank;
  }
  return ok_status();
}

std::string bootstrap_addr(const std::string& host, int port) {
  return host.find(':') != std::string::npos ? fmt::format("[{}]:{}", host, port) : fmt::format("{}:{}", host, port);
}

}  // namespace pdserve::disagg
