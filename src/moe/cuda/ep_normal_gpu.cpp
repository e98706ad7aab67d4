// Host side of the GPU normal-mode EP exchange. Kernels: ep_normal_kernels.cu.
#if defined(PDSERVE_HAVE_CUDA)

#include "moe/cuda/ep_normal_gpu.h"

#include <algorithm>

#include <fmt/format.h>

#include "moe/cuda/ep_gpu_common.h"

namespace pdserve::moe::gpu {

namespace {

using detail::cuda_status;
using detail::device_zeros;

bool aligned16(const Tensor& t) { return reinterpret_cast<uintptr_t>(t.raw_data()) % 16 == 0; }

bool device_matrix(const Tensor& t, DType dtype, int64_t cols) {
  return t.defined() && t.device() == Device::kCuda && t.dtype() == dtype && t.dim() == 2 && t.is_contiguous() &&
         t.size(1) == cols && aligned16(t);
}

}  // namespace

Result<std::unique_ptr<NormalGpuGroup>> NormalGpuGroup::create(const NormalGpuConfig& cfg) {
  const int R = static_cast<int>(cfg.devices.size());
  const std::string who = "EP normal GPU group";
  auto bad = [&](const std::string& why) { return Error(ErrorCode::kInvalidArgument, who + ": " + why); };
  if (R < 1 || R > detail::kMaxRanks) return bad(fmt::format("{} ranks (devices given); must be 1..{}", R, detail::kMaxRanks));
  if (cfg.num_experts < R || cfg.num_experts % R != 0 || cfg.num_experts > (1 << 20))
    return bad(fmt::format("num_experts {} must be a multiple of the {} ranks (at most 2^20)", cfg.num_experts, R));
  if (cfg.hidden < 8 || cfg.hidden % 8 != 0) return bad(fmt::format("hidden {} must be a positive multiple of 8", cfg.hidden));
  if (cfg.max_tokens_per_rank < 1 || cfg.max_tokens_per_rank > 8192)
    return bad(fmt::format("max_tokens_per_rank {} must be in [1, 8192]", cfg.max_tokens_per_rank));
  if (cfg.top_k < 1 || cfg.top_k > detail::kMaxTopK) return bad(fmt::format("top_k {} must be in [1, {}]", cfg.top_k, detail::kMaxTopK));
  if (cfg.timeout.count() < 1) return bad("timeout must be at least 1 ms");
  PDSERVE_RETURN_IF_ERROR(detail::enable_peer_access(cfg.devices, who));

  auto g = std::unique_ptr<NormalGpuGroup>(new NormalGpuGroup());
  g->config_ = cfg;
  const int64_t E = cfg.num_experts, G = E / R, H = cfg.hidden, M = cfg.max_tokens_per_rank, K = cfg.top_k;
  const size_t smem = detail::nm_dispatch_smem_bytes(M, R, E);
  auto blocks = detail::pick_blocks(
      cfg.devices, cfg.blocks,
      [&](int d) -> Result<int> {
        int max_smem = 0, per_sm = 0;
        PDSERVE_RETURN_IF_ERROR(cuda_status(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, d), who));
        if (smem > static_cast<size_t>(max_smem))
          return bad(fmt::format("dispatch needs {} bytes of shared memory (max_tokens {} x {} ranks, {} experts); GPU {} allows {}",
                                 smem, M, R, E, d, max_smem));
        PDSERVE_RETURN_IF_ERROR(cuda_status(detail::nm_prepare_kernels(smem, &per_sm), who + ": preparing the kernels"));
        return per_sm;
      },
      who);
  if (!blocks) return blocks.error();
  g->blocks_ = *blocks;

  auto mapped = detail::alloc_mapped(64 + sizeof(detail::LlError) * static_cast<size_t>(R));
  if (!mapped) return mapped.error();
  g->abort_flag_ = static_cast<int32_t*>(*mapped);
  {
    auto* group = g.get();
    g->first_call_ = std::make_unique<detail::FirstCallRendezvous>(
        static_cast<int>(cfg.devices.size()),
        detail::FirstCallRendezvous::Group{cfg.timeout, g->abort_flag_, [group] { return group->abort_reason(); },
                                           [group](const std::string& why) { group->abort(why); }});
  }
  try {
    for (int r = 0; r < R; ++r) {
      auto rk = std::unique_ptr<NormalGpuRank>(new NormalGpuRank());
      rk->group_ = g.get();
      rk->rank_ = r;
      rk->device_ = cfg.devices[static_cast<size_t>(r)];
      PDSERVE_RETURN_IF_ERROR(cuda_status(cudaSetDevice(rk->device_), "cudaSetDevice"));
      rk->recv_x_ = Tensor::empty({R * M, H}, DType::kBF16, Device::kCuda);
      rk->recv_idx_ = Tensor::empty({R * M, K}, DType::kI32, Device::kCuda);
      rk->recv_w_ = Tensor::empty({R * M, K}, DType::kF32, Device::kCuda);
      rk->recv_src_ = Tensor::empty({R * M}, DType::kI32, Device::kCuda);
      rk->recv_info_ = device_zeros({2 + R + G}, DType::kI32);
      rk->meta_ = device_zeros({R, R + E}, DType::kI64);
      rk->dispatch_done_ = device_zeros({R}, DType::kI64);
      rk->combine_done_ = device_zeros({R}, DType::kI64);
      rk->combine_buf_ = Tensor::empty({R, M, H}, DType::kBF16, Device::kCuda);
      rk->dispatch_epochs_ = device_zeros({g->blocks_}, DType::kI64);
      rk->combine_epochs_ = device_zeros({g->blocks_}, DType::kI64);
      rk->err_claim_ = device_zeros({1}, DType::kI32);
      rk->err_ = reinterpret_cast<detail::LlError*>(static_cast<char*>(*mapped) + 64) + r;
      detail::NmPeer p;
      p.recv_x = static_cast<uint16_t*>(rk->recv_x_.raw_data());
      p.recv_idx = rk->recv_idx_.data<int32_t>();
      p.recv_w = rk->recv_w_.data<float>();
      p.recv_src = rk->recv_src_.data<int32_t>();
      p.meta = reinterpret_cast<unsigned long long*>(rk->meta_.raw_data());
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
    return Error(ErrorCode::kInternal, who + ": allocating buffers: " + e.what());
  }
  return g;
}

NormalGpuGroup::~NormalGpuGroup() {
  defer_frees_.reset();
  ranks_.clear();
  if (abort_flag_ != nullptr) cudaFreeHost(abort_flag_);
}

void NormalGpuGroup::abort(const std::string& reason) {
  std::lock_guard<std::mutex> lock(mu_);
  if (abort_reason_.empty()) abort_reason_ = reason;
  *reinterpret_cast<volatile int32_t*>(abort_flag_) = 1;
}

std::string NormalGpuGroup::abort_reason() const {
  std::lock_guard<std::mutex> lock(mu_);
  return abort_reason_;
}

detail::NmCommon NormalGpuRank::common() const {
  const NormalGpuConfig& cfg = group_->config_;
  detail::NmCommon c;
  c.ranks = group_->size();
  c.rank = rank_;
  c.num_experts = cfg.num_experts;
  c.local_experts = group_->local_experts();
  c.hidden = cfg.hidden;
  c.max_tokens = cfg.max_tokens_per_rank;
  c.top_k = cfg.top_k;
  c.blocks = group_->blocks_;
  c.timeout_ns = static_cast<unsigned long long>(cfg.timeout.count()) * 1000000ull;
  for (int r = 0; r < c.ranks; ++r) c.peers[r] = group_->peers_[static_cast<size_t>(r)];
  c.recv_info = recv_info_.data<int32_t>();
  c.err = err_;
  c.err_claim = err_claim_.data<int32_t>();
  c.abort_flag = group_->abort_flag_;
  return c;
}

Status NormalGpuRank::status() const {
  if (err_->code == detail::kLlOk) return ok_status();
  const NormalGpuConfig& cfg = group_->config_;
  detail::ReportContext ctx{fmt::format("EP normal GPU rank {}", rank_), device_, cfg.timeout, cfg.top_k, cfg.num_experts,
                            group_->size() * cfg.max_tokens_per_rank, group_->abort_reason()};
  return detail::report_status(*err_, ctx);
}

Status NormalGpuRank::refuse_after_failure() {
  Status s = status();
  if (!s) group_->abort(s.error().message());
  return s;
}

Status NormalGpuRank::fail_argument(const std::string& why) {
  const std::string msg = fmt::format("EP normal GPU rank {}: {}", rank_, why);
  group_->abort(msg);
  return Error(ErrorCode::kInvalidArgument, msg);
}

int NormalGpuRank::ranks() const { return group_->size(); }
const NormalGpuConfig& NormalGpuRank::config() const { return group_->config_; }

void NormalGpuRank::abort(const std::string& reason) { group_->abort(fmt::format("rank {}: {}", rank_, reason)); }

Status NormalGpuRank::synchronize(cudaStream_t stream) {
  PDSERVE_RETURN_IF_ERROR(cuda_status(cudaSetDevice(device_), "cudaSetDevice"));
  PDSERVE_RETURN_IF_ERROR(cuda_status(cudaStreamSynchronize(stream), fmt::format("rank {}: cudaStreamSynchronize", rank_)));
  return status();
}

Status NormalGpuRank::dispatch(const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights, cudaStream_t stream) {
  PDSERVE_RETURN_IF_ERROR(refuse_after_failure());
  const NormalGpuConfig& cfg = group_->config_;
  const int64_t M = cfg.max_tokens_per_rank;
  if (!device_matrix(x, DType::kBF16, cfg.hidden) || x.size(0) > M)
    return fail_argument(fmt::format("dispatch x must be a contiguous 16-byte aligned device bf16 [T <= {}, {}]", M, cfg.hidden));
  if (!device_matrix(topk_ids, DType::kI32, cfg.top_k) || topk_ids.size(0) != x.size(0))
    return fail_argument(fmt::format("dispatch topk_ids must be a contiguous device i32 [{}, {}]", x.size(0), cfg.top_k));
  if (!device_matrix(topk_weights, DType::kF32, cfg.top_k) || topk_weights.size(0) != x.size(0))
    return fail_argument(fmt::format("dispatch topk_weights must be a contiguous device f32 [{}, {}]", x.size(0), cfg.top_k));
  PDSERVE_RETURN_IF_ERROR(cuda_status(cudaSetDevice(device_), "cudaSetDevice"));
  detail::NmDispatchArgs a;
  a.c = common();
  a.x = static_cast<const uint16_t*>(x.raw_data());
  a.topk_ids = topk_ids.data<int32_t>();
  a.topk_weights = topk_weights.data<float>();
  a.tokens = x.size(0);
  a.epochs = reinterpret_cast<unsigned long long*>(dispatch_epochs_.raw_data());
  if (!met_) {  // no rank spins before every rank has primed its stream (ep_gpu_common.h says why)
    PDSERVE_RETURN_IF_ERROR(group_->first_call_->arrive(rank_, stream, fmt::format("EP normal GPU rank {} (GPU {})", rank_, device_)));
    met_ = true;
  }
  PDSERVE_RETURN_IF_ERROR(cuda_status(detail::nm_launch_dispatch(a, stream), fmt::format("rank {}: normal dispatch launch", rank_)));
  dispatched_ = true;
  last_tokens_ = x.size(0);
  received_rows_ = -1;
  return ok_status();
}

Result<NormalGpuReceived> NormalGpuRank::received(cudaStream_t stream) {
  if (!dispatched_) return fail_argument("received: no dispatch (call dispatch first)").error();
  PDSERVE_RETURN_IF_ERROR(synchronize(stream));
  const int R = group_->size();
  const int64_t G = group_->local_experts();
  std::vector<int32_t> info(static_cast<size_t>(2 + R + G));
  PDSERVE_RETURN_IF_ERROR(cuda_status(cudaMemcpy(info.data(), recv_info_.raw_data(), sizeof(int32_t) * info.size(), cudaMemcpyDeviceToHost),
                                      "reading the received counts"));
  NormalGpuReceived out;
  out.rows = info[0];
  received_rows_ = out.rows;
  out.rows_from.assign(info.begin() + 2, info.begin() + 2 + R);
  out.tokens_per_expert.assign(info.begin() + 2 + R, info.end());
  out.recv_x = recv_x_.slice(0, 0, out.rows);
  out.recv_topk_idx = recv_idx_.slice(0, 0, out.rows);
  out.recv_topk_weights = recv_w_.slice(0, 0, out.rows);
  return out;
}

Status NormalGpuRank::combine(const Tensor& partial, const Tensor& topk_ids, Tensor& out, cudaStream_t stream) {
  PDSERVE_RETURN_IF_ERROR(refuse_after_failure());
  const NormalGpuConfig& cfg = group_->config_;
  const int64_t H = cfg.hidden, T = last_tokens_;
  if (!dispatched_) return fail_argument("combine: no dispatch to combine (call dispatch first)");
  // Rows past the received count are never read, so partial may be the whole [R * max, H] buffer.
  if (!device_matrix(partial, DType::kBF16, H))
    return fail_argument(fmt::format("combine: partial must be a contiguous 16-byte aligned device bf16 [rows received, {}]", H));
  if (!device_matrix(topk_ids, DType::kI32, cfg.top_k) || topk_ids.size(0) != T)
    return fail_argument(fmt::format("combine: topk_ids must be the dispatched i32 [{}, {}]", T, cfg.top_k));
  const bool out_bf16 = out.defined() && out.dtype() == DType::kBF16;
  if (!device_matrix(out, out_bf16 ? DType::kBF16 : DType::kF32, H) || out.size(0) != T)
    return fail_argument(fmt::format("combine: out must be a contiguous device f32 or bf16 [{}, {}]", T, H));
  PDSERVE_RETURN_IF_ERROR(cuda_status(cudaSetDevice(device_), "cudaSetDevice"));
  // The kernel reads the received count on the device; the host checks partial against it (known
  // when received() was called for this dispatch, else read now: one more synchronisation).
  int64_t rows = received_rows_;
  if (rows < 0) {
    int32_t r32 = 0;
    PDSERVE_RETURN_IF_ERROR(cuda_status(cudaMemcpyAsync(&r32, recv_info_.raw_data(), sizeof(r32), cudaMemcpyDeviceToHost, stream),
                                        "reading the received count"));
    PDSERVE_RETURN_IF_ERROR(cuda_status(cudaStreamSynchronize(stream), "reading the received count"));
    rows = r32;
  }
  if (partial.size(0) < rows)
    return fail_argument(fmt::format("combine: partial has {} rows, {} were received", partial.size(0), rows));
  detail::NmCombineArgs a;
  a.c = common();
  a.partial = static_cast<const uint16_t*>(partial.raw_data());
  a.topk_ids = topk_ids.data<int32_t>();
  a.tokens = T;
  a.out = out.raw_data();
  a.out_bf16 = out_bf16;
  a.epochs = reinterpret_cast<unsigned long long*>(combine_epochs_.raw_data());
  PDSERVE_RETURN_IF_ERROR(cuda_status(detail::nm_launch_combine(a, stream), fmt::format("rank {}: normal combine launch", rank_)));
  return ok_status();
}

}  // namespace pdserve::moe::gpu

#endif  // PDSERVE_HAVE_CUDA
