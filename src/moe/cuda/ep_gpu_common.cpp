#if defined(PDSERVE_HAVE_CUDA)

#include "moe/cuda/ep_gpu_common.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace pdserve::moe::gpu::detail {

Status cuda_status(cudaError_t e, const std::string& what) {
  if (e == cudaSuccess) return ok_status();
  return make_error(ErrorCode::kInternal, "{}: {}", what, cudaGetErrorString(e));
}

Status enable_peer_access(const std::vector<int>& devices, const std::string& who) {
  int count = 0;
  PDSERVE_RETURN_IF_ERROR(cuda_status(cudaGetDeviceCount(&count), who + ": cudaGetDeviceCount"));
  for (int d : devices)
    if (d < 0 || d >= count)
      return make_error(ErrorCode::kInvalidArgument, "{}: device {} does not exist ({} visible)", who, d, count);
  for (int a : devices)
    for (int b : devices) {
      if (a == b) continue;
      int can = 0;
      PDSERVE_RETURN_IF_ERROR(cuda_status(cudaDeviceCanAccessPeer(&can, a, b), who + ": cudaDeviceCanAccessPeer"));
      if (!can)
        return make_error(ErrorCode::kInvalidArgument, "{}: GPU {} cannot access GPU {} (no peer access between them)", who, a, b);
      PDSERVE_RETURN_IF_ERROR(cuda_status(cudaSetDevice(a), who + ": cudaSetDevice"));
      const cudaError_t e = cudaDeviceEnablePeerAccess(b, 0);
      if (e == cudaErrorPeerAccessAlreadyEnabled)
        (void)cudaGetLastError();  // not an error: clear it so later checks do not see it
      else
        PDSERVE_RETURN_IF_ERROR(cuda_status(e, fmt::format("{}: cudaDeviceEnablePeerAccess({} -> {})", who, a, b)));
    }
  return ok_status();
}

Result<int> pick_blocks(const std::vector<int>& devices, int wanted, const std::function<Result<int>(int device)>& prepare,
                        const std::string& who) {
  std::vector<int> used = devices;
  std::sort(used.begin(), used.end());
  used.erase(std::unique(used.begin(), used.end()), used.end());
  int fit = 1 << 30, share = 1 << 30;
  for (int d : used) {
    const int n = static_cast<int>(std::count(devices.begin(), devices.end(), d));
    PDSERVE_RETURN_IF_ERROR(cuda_status(cudaSetDevice(d), who + ": cudaSetDevice"));
    int sms = 0;
    PDSERVE_RETURN_IF_ERROR(cuda_status(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, d), who + ": attribute"));
    auto per_sm = prepare(d);
    if (!per_sm) return per_sm.error();
    fit = std::min(fit, *per_sm * sms / n);
    // Ranks sharing a GPU leave half of it free by default: their spinning blocks must never
    // keep a peer's GEMM (cuBLAS's Hopper kernels take a whole SM's registers) from every SM.
    share = std::min(share, std::max(1, n > 1 ? sms / (2 * n) : sms));
  }
  if (fit < 1) return make_error(ErrorCode::kInvalidArgument, "{}: the kernels do not fit on the GPU", who);
  if (wanted > fit)
    return make_error(ErrorCode::kInvalidArgument, "{}: blocks {} per rank: only {} fit with every rank's kernels resident at once",
                      who, wanted, fit);
  return wanted > 0 ? wanted : std::min(fit, share);
}

namespace {
// A no-op kernel on `stream`, waited for (FirstCallRendezvous says why); nothing while capturing.
Status prime_stream(cudaStream_t stream, const std::string& who) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  PDSERVE_RETURN_IF_ERROR(cuda_status(cudaStreamIsCapturing(stream, &capture), who + ": cudaStreamIsCapturing"));
  if (capture != cudaStreamCaptureStatusNone) return ok_status();
  PDSERVE_RETURN_IF_ERROR(cuda_status(launch_stream_prime(stream), who + ": priming the stream"));
  return cuda_status(cudaStreamSynchronize(stream), who + ": priming the stream");
}
}  // namespace

Status FirstCallRendezvous::arrive(int rank, cudaStream_t stream, const std::string& who) {
  const size_t r = static_cast<size_t>(rank);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!failure_.at(r)) return failure_[r];
  }
  Status st = prime_stream(stream, who);
  if (st) {
    std::unique_lock<std::mutex> lock(mu_);
    arrived_[r] = true;
    cv_.notify_all();
    st = wait_for_all(lock, who);
    if (st) return st;
    failure_[r] = st;
  }
  group_.abort(st.error().message());  // outside the lock: the group's abort takes its own
  return st;
}

Status FirstCallRendezvous::wait_for_all(std::unique_lock<std::mutex>& lock, const std::string& who) {
  const auto deadline = std::chrono::steady_clock::now() + group_.timeout;
  auto all = [&] { return std::all_of(arrived_.begin(), arrived_.end(), [](bool a) { return a; }); };
  Status st = ok_status();
  // Short slices: an abort raises a flag in mapped memory, which no condition variable hears.
  while (!all()) {
    if (*group_.abort_flag != 0) {
      st = make_error(ErrorCode::kInternal, "{}, call #1: dispatch aborted while waiting for every rank's first call: {}", who,
                      group_.abort_reason());
      break;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      std::vector<int> missing;
      for (size_t r = 0; r < arrived_.size(); ++r)
        if (!arrived_[r]) missing.push_back(static_cast<int>(r));
      st = make_error(ErrorCode::kInternal,
                      "{}, call #1: dispatch (waiting for every rank's first call) timed out after {} ms: rank {} did not "
                      "arrive (it never called dispatch); the EP group is unusable now",
                      who, group_.timeout.count(), fmt::join(missing, ", "));
      break;
    }
    cv_.wait_for(lock, std::chrono::milliseconds(5));
  }
  return st;
}

Result<void*> alloc_mapped(size_t bytes) {
  void* p = nullptr;
  PDSERVE_RETURN_IF_ERROR(cuda_status(cudaHostAlloc(&p, bytes, cudaHostAllocMapped | cudaHostAllocPortable), "cudaHostAlloc"));
  std::memset(p, 0, bytes);
  return p;
}

Tensor device_zeros(const Shape& shape, DType dtype) {
  Tensor t = Tensor::empty(shape, dtype, Device::kCuda);
  if (t.nbytes() > 0) {
    const cudaError_t e = cudaMemset(t.raw_data(), 0, t.nbytes());
    if (e != cudaSuccess) throw std::runtime_error(std::string("cudaMemset: ") + cudaGetErrorString(e));
  }
  return t;
}

namespace {
const char* phase_name(int32_t phase) {
  switch (phase) {
    case kLlPhaseCounts: return "dispatch (waiting for token counts)";
    case kLlPhaseDispatchData: return "dispatch (waiting for token rows)";
    case kLlPhaseCombineData: return "combine (waiting for expert outputs)";
    default: return "exchange";
  }
}
}  // namespace

Status report_status(const LlError& err, const ReportContext& ctx) {
  const int32_t code = err.code;
  if (code == kLlOk) return ok_status();
  const std::string who = fmt::format("{} (GPU {}), call #{}", ctx.who, ctx.device, static_cast<int64_t>(err.epoch));
  switch (code) {
    case kLlTimeout:
      return make_error(ErrorCode::kInternal,
                        "{}: {} timed out after {} ms: rank {} did not arrive (it never called, stalled, or failed before "
                        "launching); the EP group is unusable now",
                        who, phase_name(err.phase), ctx.timeout.count(), err.peer);
    case kLlAborted:
      return make_error(ErrorCode::kInternal, "{}: {} aborted while waiting for rank {}: {}", who, phase_name(err.phase),
                        err.peer, ctx.abort_reason.empty() ? "a rank's wait timed out first (its error names the rank it waited for)" : ctx.abort_reason);
    case kLlBadExpert:
      return make_error(ErrorCode::kInvalidArgument, "{}: topk_ids[{}, {}] = {} is outside [-1, {}) (skipped)", who,
                        err.peer / ctx.top_k, err.peer % ctx.top_k, static_cast<int64_t>(err.value), ctx.num_experts);
    case kLlOverflow:
      return make_error(ErrorCode::kInvalidArgument,
                        "{}: token {} overflowed an expert slab (row {} of {}): a token's expert ids must be distinct", who,
                        err.peer / ctx.top_k, static_cast<int64_t>(err.value), ctx.slab_rows);
    case kLlBadSource:
      return make_error(ErrorCode::kInternal,
                        "{}: combine found a receive row of local expert {} with source index {}, which no dispatch of "
                        "this call wrote (its rows were not sent back)",
                        who, err.peer, static_cast<int64_t>(err.value));
    default: return make_error(ErrorCode::kInternal, "{}: unknown kernel error code {}", who, code);
  }
}

}  // namespace pdserve::moe::gpu::detail

#endif  // PDSERVE_HAVE_CUDA
