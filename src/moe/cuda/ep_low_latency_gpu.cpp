// Host side of the GPU low-latency EP exchange: buffers, peer access, argument checks, launches and
// the translation of the kernels' error reports into messages. Kernels: ep_ll_kernels.cu.
#if defined(PDSERVE_HAVE_CUDA)

#include "moe/cuda/ep_low_latency_gpu.h"

#include "moe/cuda/ep_gpu_common.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace pdserve::moe::gpu {

namespace {

using detail::cuda_status;
using detail::device_zeros;

bool aligned16(const Tensor& t) { return reinterpret_cast<uintptr_t>(t.raw_data()) % 16 == 0; }

}  // namespace

std::vector<int> default_devices(int ranks, int device_count) {
  std::vector<int> d(static_cast<size_t>(std::max(ranks, 0)), 0);
  if (device_count >= ranks)
    for (int r = 0; r < ranks; ++r) d[static_cast<size_t>(r)] = r;
  return d;
}

Result<std::unique_ptr<LowLatencyGpuGroup>> LowLatencyGpuGroup::create(const LowLatencyGpuConfig& cfg) {
  const int R = static_cast<int>(cfg.devices.size());
  auto bad = [](const std::string& why) { return Error(ErrorCode::kInvalidArgument, "EP low-latency GPU group: " + why); };
  if (R < 1 || R > detail::kMaxRanks) return bad(fmt::format("{} ranks (devices given); must be 1..{}", R, detail::kMaxRanks));
  if (cfg.num_experts < R || cfg.num_experts % R != 0)
    return bad(fmt::format("num_experts {} must be a positive multiple of the {} ranks", cfg.num_experts, R));
  if (cfg.num_experts > (1 << 20)) return bad(fmt::format("num_experts {} is too large", cfg.num_experts));
  if (cfg.hidden < detail::kQuantGroup || cfg.hidden % detail::kQuantGroup != 0)
    return bad(fmt::format("hidden {} must be a positive multiple of {}", cfg.hidden, detail::kQuantGroup));
  if (cfg.max_tokens_per_rank < 1 || cfg.max_tokens_per_rank > 1024)
    return bad(fmt::format("max_tokens_per_rank {} must be in [1, 1024]", cfg.max_tokens_per_rank));
  if (cfg.top_k < 1 || cfg.top_k > detail::kMaxTopK)
    return bad(fmt::format("top_k {} must be in [1, {}]", cfg.top_k, detail::kMaxTopK));
  if (cfg.timeout.count() < 1) return bad("timeout must be at least 1 ms");
  auto g = std::unique_ptr<LowLatencyGpuGroup>(new LowLatencyGpuGroup());
  g->config_ = cfg;
  const int64_t E = cfg.num_experts, G = E / R, H = cfg.hidden, M = cfg.max_tokens_per_rank, K = cfg.top_k;
  const int64_t slab = R * M;
  if (G * slab > (int64_t{1} << 31) / 2 || M * K * R > (int64_t{1} << 31) / 2)
    return bad("buffers too large for 32-bit row indices");
  const std::string who = "EP low-latency GPU group";
  PDSERVE_RETURN_IF_ERROR(detail::enable_peer_access(cfg.devices, who));

  // Grid size: every block of every rank on a GPU must be resident at once (they spin).
  const size_t smem = detail::ll_dispatch_smem_bytes(M, K, E);
  auto blocks = detail::pick_blocks(
      cfg.devices, cfg.blocks,
      [&](int d) -> Result<int> {
        int max_smem = 0, per_sm = 0;
        PDSERVE_RETURN_IF_ERROR(cuda_status(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, d), who));
        if (smem > static_cast<size_t>(max_smem))
          return bad(fmt::format("dispatch needs {} bytes of shared memory (max_tokens {} x top_k {}, {} experts); GPU {} allows {}",
                                 smem, M, K, E, d, max_smem));
        PDSERVE_RETURN_IF_ERROR(cuda_status(detail::ll_prepare_kernels(smem, &per_sm), who + ": preparing the kernels"));
        return per_sm;
      },
      who);
  if (!blocks) return blocks.error();
  g->blocks_ = *blocks;

  // Mapped host words: the group's abort flag, then one error report per rank.
  auto mapped = detail::alloc_mapped(64 + sizeof(detail::LlError) * static_cast<size_t>(R));
  if (!mapped) return mapped.error();
  void* host = *mapped;
  g->abort_flag_ = static_cast<int32_t*>(host);
  {
    auto* group = g.get();
    g->first_call_ = std::make_unique<detail::FirstCallRendezvous>(
        static_cast<int>(cfg.devices.size()),
        detail::FirstCallRendezvous::Group{cfg.timeout, g->abort_flag_, [group] { return group->abort_reason(); },
                                           [group](const std::string& why) { group->abort(why); }});
  }

  try {
    for (int r = 0; r < R; ++r) {
      auto rk = std::unique_ptr<LowLatencyGpuRank>(new LowLatencyGpuRank());
      rk->group_ = g.get();
      rk->rank_ = r;
      rk->device_ = cfg.devices[static_cast<size_t>(r)];
      PDSERVE_RETURN_IF_ERROR(cuda_status(cudaSetDevice(rk->device_), "cudaSetDevice"));
      rk->recv_x_ = Tensor::empty({G, slab, H}, cfg.fp8 ? DType::kF8E4M3 : DType::kBF16, Device::kCuda);
      if (cfg.fp8) {
        rk->recv_scales_ = Tensor::empty({G, H / detail::kQuantGroup, slab}, DType::kF32, Device::kCuda);
        rk->xq_ = Tensor::empty({M, H}, DType::kF8E4M3, Device::kCuda);
        rk->xs_ = Tensor::empty({M, H / detail::kQuantGroup}, DType::kF32, Device::kCuda);
      }
      rk->recv_src_ = Tensor::empty({G, slab}, DType::kI32, Device::kCuda);
      rk->recv_count_ = device_zeros({G}, DType::kI32);
      rk->counts_ = device_zeros({R, E}, DType::kI64);
      rk->dispatch_done_ = device_zeros({R}, DType::kI64);
      rk->combine_done_ = device_zeros({R}, DType::kI64);
      rk->combine_buf_ = Tensor::empty({M * K, H}, DType::kBF16, Device::kCuda);
      rk->dispatch_epochs_ = device_zeros({g->blocks_}, DType::kI64);
      rk->combine_epochs_ = device_zeros({g->blocks_}, DType::kI64);
      rk->dispatch_trace_ = device_zeros({g->blocks_, 4}, DType::kI64);
      rk->err_claim_ = device_zeros({1}, DType::kI32);
      rk->err_ = reinterpret_cast<detail::LlError*>(static_cast<char*>(host) + 64) + r;
      detail::LlPeer p;
      p.recv_x = rk->recv_x_.raw_data();
      p.recv_scales = cfg.fp8 ? rk->recv_scales_.data<float>() : nullptr;
      p.recv_src = rk->recv_src_.data<int32_t>();
      p.counts = reinterpret_cast<unsigned long long*>(rk->counts_.raw_data());
      p.dispatch_done = reinterpret_cast<unsigned long long*>(rk->dispatch_done_.raw_data());
      p.combine_buf = static_cast<uint16_t*>(rk->combine_buf_.raw_data());
      p.combine_done = reinterpret_cast<unsigned long long*>(rk->combine_done_.raw_data());
      g->peers_.push_back(p);
      g->ranks_.push_back(std::move(rk));
    }
    for (int d : cfg.devices) {
      PDSERVE_RETURN_IF_ERROR(cuda_status(cudaSetDevice(d), "cudaSetDevice"));
      PDSERVE_RETURN_IF_ERROR(cuda_status(cudaDeviceSynchronize(), "initialising the buffers"));
    }
  } catch (const std::exception& e) {
    return Error(ErrorCode::kInternal, std::string("EP low-latency GPU group: allocating buffers: ") + e.what());
  }
  return g;
}

LowLatencyGpuGroup::~LowLatencyGpuGroup() {
  defer_frees_.reset();
  ranks_.clear();  // device buffers first; the mapped words after
  if (abort_flag_ != nullptr) cudaFreeHost(abort_flag_);
}

void LowLatencyGpuGroup::abort(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  if (abort_reason_.empty()) abort_reason_ = reason;
  *reinterpret_cast<volatile int32_t*>(abort_flag_) = 1;
}

std::string LowLatencyGpuGroup::abort_reason() const {
  std::lock_guard<std::mutex> lock(mu_);
  return abort_reason_;
}

detail::LlCommon LowLatencyGpuRank::common() const {
  const LowLatencyGpuConfig& cfg = group_->config_;
  detail::LlCommon c;
  c.ranks = group_->size();
  c.rank = rank_;
  c.num_experts = cfg.num_experts;
  c.local_experts = group_->local_experts();
  c.hidden = cfg.hidden;
  c.max_tokens = cfg.max_tokens_per_rank;
  c.top_k = cfg.top_k;
  c.fp8 = cfg.fp8;
  c.blocks = group_->blocks_;
  c.timeout_ns = static_cast<unsigned long long>(cfg.timeout.count()) * 1000000ull;
  for (int r = 0; r < c.ranks; ++r) c.peers[r] = group_->peers_[static_cast<size_t>(r)];
  c.recv_count = recv_count_.data<int32_t>();
  c.err = err_;
  c.err_claim = err_claim_.data<int32_t>();
  c.abort_flag = group_->abort_flag_;
  return c;
}

Status LowLatencyGpuRank::status() const {
  if (err_->code == detail::kLlOk) return ok_status();
  const LowLatencyGpuConfig& cfg = group_->config_;
  detail::ReportContext ctx{fmt::format("EP low-latency GPU rank {}", rank_), device_, cfg.timeout, cfg.top_k, cfg.num_experts,
                            group_->size() * cfg.max_tokens_per_rank, group_->abort_reason()};
  return detail::report_status(*err_, ctx);
}

std::string LowLatencyGpuRank::exchange_state() const {
  auto host_u64 = [](const Tensor& t) {
    std::vector<unsigned long long> v(static_cast<size_t>(t.numel()));
    if (cudaMemcpy(v.data(), t.raw_data(), t.nbytes(), cudaMemcpyDeviceToHost) != cudaSuccess) v.clear();
    return v;
  };
  auto range = [](const std::vector<unsigned long long>& v) {
    if (v.empty()) return std::string("?");
    const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
    return *lo == *hi ? fmt::format("{}", *lo) : fmt::format("{}..{}", *lo, *hi);
  };
  const int R = group_->size();
  const int64_t E = group_->config_.num_experts;
  const auto counts = host_u64(counts_), dd = host_u64(dispatch_done_), cd = host_u64(combine_done_);
  std::string out = fmt::format("rank {} (counts at {}): count epochs from", rank_, counts_.raw_data());
  for (int s = 0; s < R && !counts.empty(); ++s) {
    std::vector<unsigned long long> ep;
    for (int64_t e = 0; e < E; ++e) ep.push_back(counts[static_cast<size_t>(s * E + e)] >> 32);
    out += fmt::format(" r{}:{}", s, range(ep));
  }
  out += fmt::format("; dispatch_done {}; combine_done {}; block epochs dispatch {} combine {}", fmt::join(dd, ","),
                     fmt::join(cd, ","), range(host_u64(dispatch_epochs_)), range(host_u64(combine_epochs_)));
  // The last dispatch's block timeline (globaltimer µs, 0 = not reached): entered, ranked, had all
  // counts, ended; one range over the blocks for each, block 0 (the counts' sender) apart.
  const auto tr = host_u64(dispatch_trace_);
  if (!tr.empty()) {
    const char* what[4] = {"entered", "ranked", "counts in", "ended"};
    out += "; dispatch blocks (µs):";
    for (int k = 0; k < 4; ++k) {
      std::vector<unsigned long long> v;
      for (size_t b = 0; b < tr.size() / 4; ++b) v.push_back(tr[b * 4 + k] / 1000);
      out += fmt::format(" {} b0 {} all {}", what[k], v[0], range(v));
    }
  }
  return out;
}

Status LowLatencyGpuRank::synchronize(cudaStream_t stream) {
  PDSERVE_RETURN_IF_ERROR(cuda_status(cudaSetDevice(device_), "cudaSetDevice"));
  const cudaError_t e = cudaStreamSynchronize(stream);
  Status kernel = status();  // the kernels' own report (mapped host memory): readable after a CUDA error too
  if (e != cudaSuccess)
    return make_error(ErrorCode::kInternal, "rank {}: cudaStreamSynchronize: {}{}", rank_, cudaGetErrorString(e),
                      kernel ? std::string() : "; the exchange reported before: " + kernel.error().message());
  return kernel;
}

Status LowLatencyGpuRank::fail_argument(const std::string& why) {
  const std::string msg = fmt::format("EP low-latency GPU rank {}: {}", rank_, why);
  group_->abort(msg);  // peers waiting for this rank fail now instead of at the timeout
  return Error(ErrorCode::kInvalidArgument, msg);
}

Status LowLatencyGpuRank::check_tokens(const Tensor& t, DType dtype, int64_t cols, const char* what) const {
  if (!t.defined() || t.device() != Device::kCuda || t.dtype() != dtype || t.dim() != 2 || !t.is_contiguous() ||
      t.size(1) != cols || t.size(0) > group_->config_.max_tokens_per_rank || !aligned16(t))
    return make_error(ErrorCode::kInvalidArgument,
                      "{} must be a contiguous 16-byte aligned device {} [T <= {}, {}] (T above the limit: raise "
                      "SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK or lower the decode batch), got {} {} {} on {}",
                      what, dtype_name(dtype), group_->config_.max_tokens_per_rank, cols, t.defined() ? dtype_name(t.dtype()) : "undefined",
                      t.defined() ? shape_to_string(t.shape()) : "", t.defined() && t.is_contiguous() ? "contiguous" : "strided",
                      t.defined() && t.device() == Device::kCuda ? "cuda" : "cpu");
  return ok_status();
}

void LowLatencyGpuRank::abort(const std::string& reason) { group_->abort(fmt::format("rank {}: {}", rank_, reason)); }

Status LowLatencyGpuRank::refuse_after_failure() {
  Status s = status();
  if (!s) group_->abort(s.error().message());  // peers must not wait for a call this rank will not make
  return s;
}

Status LowLatencyGpuRank::meet_peers(cudaStream_t stream) {
  if (met_) return ok_status();
  PDSERVE_RETURN_IF_ERROR(group_->first_call_->arrive(rank_, stream, fmt::format("EP low-latency GPU rank {} (GPU {})", rank_, device_)));
  met_ = true;
  return ok_status();
}

Status LowLatencyGpuRank::dispatch(const Tensor& x, const Tensor& topk_ids, cudaStream_t stream) {
  PDSERVE_RETURN_IF_ERROR(refuse_after_failure());
  const LowLatencyGpuConfig& cfg = group_->config_;
  if (auto s = check_tokens(x, DType::kBF16, cfg.hidden, "dispatch x"); !s) return fail_argument(s.error().message());
  if (auto s = check_tokens(topk_ids, DType::kI32, cfg.top_k, "dispatch topk_ids"); !s) return fail_argument(s.error().message());
  if (topk_ids.size(0) != x.size(0))
    return fail_argument(fmt::format("dispatch: topk_ids has {} tokens, x has {}", topk_ids.size(0), x.size(0)));
  PDSERVE_RETURN_IF_ERROR(cuda_status(cudaSetDevice(device_), "cudaSetDevice"));
  detail::LlDispatchArgs a;
  a.c = common();
  a.x = static_cast<const uint16_t*>(x.raw_data());
  a.topk_ids = topk_ids.data<int32_t>();
  a.tokens = x.size(0);
  a.xq = cfg.fp8 ? static_cast<uint8_t*>(xq_.raw_data()) : nullptr;
  a.xs = cfg.fp8 ? xs_.data<float>() : nullptr;
  a.epochs = reinterpret_cast<unsigned long long*>(dispatch_epochs_.raw_data());
  a.trace = reinterpret_cast<unsigned long long*>(dispatch_trace_.raw_data());
  if (!met_) {  // no rank spins before every rank has primed its stream (ep_gpu_common.h says why)
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    PDSERVE_RETURN_IF_ERROR(cuda_status(cudaStreamIsCapturing(stream, &capture), "cudaStreamIsCapturing"));
    if (capture == cudaStreamCaptureStatusNone) PDSERVE_RETURN_IF_ERROR(meet_peers(stream));
  }
  PDSERVE_RETURN_IF_ERROR(cuda_status(detail::ll_launch_dispatch(a, stream), fmt::format("rank {}: dispatch launch", rank_)));
  dispatched_ = true;
  last_tokens_ = x.size(0);
  return ok_status();
}

Status LowLatencyGpuRank::combine(const Tensor& expert_out, const Tensor& topk_ids, const Tensor& topk_weights,
                                  Tensor& out, cudaStream_t stream) {
  PDSERVE_RETURN_IF_ERROR(refuse_after_failure());
  const LowLatencyGpuConfig& cfg = group_->config_;
  const int64_t G = group_->local_experts(), slab = group_->size() * cfg.max_tokens_per_rank, H = cfg.hidden;
  if (!dispatched_) return fail_argument("combine: no dispatch to combine (call dispatch first)");
  if (!expert_out.defined() || expert_out.device() != Device::kCuda || expert_out.dtype() != DType::kBF16 ||
      !expert_out.is_contiguous() || expert_out.shape() != Shape{G, slab, H} || !aligned16(expert_out))
    return fail_argument(fmt::format("combine: expert_out must be a contiguous device bf16 [{}, {}, {}]", G, slab, H));
  if (auto s = check_tokens(topk_ids, DType::kI32, cfg.top_k, "combine topk_ids"); !s) return fail_argument(s.error().message());
  if (auto s = check_tokens(topk_weights, DType::kF32, cfg.top_k, "combine topk_weights"); !s)
    return fail_argument(s.error().message());
  const int64_t T = last_tokens_;
  if (topk_ids.size(0) != T || topk_weights.size(0) != T)
    return fail_argument(fmt::format("combine: topk_ids / topk_weights must have the {} tokens of the last dispatch", T));
  const bool out_bf16 = out.defined() && out.dtype() == DType::kBF16;
  if (!out.defined() || out.device() != Device::kCuda || (!out_bf16 && out.dtype() != DType::kF32) ||
      !out.is_contiguous() || out.shape() != Shape{T, H} || !aligned16(out))
    return fail_argument(fmt::format("combine: out must be a contiguous device f32 or bf16 [{}, {}]", T, H));
  PDSERVE_RETURN_IF_ERROR(cuda_status(cudaSetDevice(device_), "cudaSetDevice"));
  detail::LlCombineArgs a;
  a.c = common();
  a.expert_out = static_cast<const uint16_t*>(expert_out.raw_data());
  a.topk_ids = topk_ids.data<int32_t>();
  a.topk_weights = topk_weights.data<float>();
  a.tokens = T;
  a.out = out.raw_data();
  a.out_bf16 = out_bf16;
  a.epochs = reinterpret_cast<unsigned long long*>(combine_epochs_.raw_data());
  PDSERVE_RETURN_IF_ERROR(cuda_status(detail::ll_launch_combine(a, stream), fmt::format("rank {}: combine launch", rank_)));
  return ok_status();
}

}  // namespace pdserve::moe::gpu

#endif  // PDSERVE_HAVE_CUDA
