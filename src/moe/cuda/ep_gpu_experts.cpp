#include "moe/cuda/ep_gpu_experts.h"

#if defined(PDSERVE_HAVE_CUDA)

#include <algorithm>

#include "model/dummy_weights.h"
#include "moe/cuda/ep_gpu_common.h"
#include "ops/cuda/cuda_common.h"
#include "ops/elementwise.h"
#include "ops/grouped_gemm.h"

namespace pdserve::moe::gpu {

Result<std::unique_ptr<GpuEpExperts>> GpuEpExperts::create(std::shared_ptr<const model::DeepseekV3Model> model,
                                                           LowLatencyGpuRank& rank, int ranks) {
  const model::ModelConfig& c = model->config();
  auto e = std::unique_ptr<GpuEpExperts>(new GpuEpExperts());
  e->rank_ = &rank;
  e->ranks_ = ranks;
  if (ranks < 1 || c.n_routed_experts % ranks != 0)
    return make_error(ErrorCode::kInvalidArgument, "GPU EP: {} routed experts do not divide over {} ranks",
                      c.n_routed_experts, ranks);
  e->local_ = c.n_routed_experts / ranks;
  e->hidden_ = c.hidden_size;
  e->inter_ = c.moe_intermediate_size;
  try {
    PDSERVE_RETURN_IF_ERROR(detail::cuda_status(cudaSetDevice(rank.device()), "cudaSetDevice"));
    const int64_t begin = rank.rank() * e->local_;
    const auto& w = model->weights();
    for (size_t l = 0; l < w.layers.size(); ++l) {
      if (!w.layers[l].is_moe) continue;
      if (!w.layers[l].moe.experts.empty()) {
        e->layers_[static_cast<int64_t>(l)] = model::upload_experts(w.layers[l].moe, begin, begin + e->local_);
      } else if (w.dummy_experts_seed) {
        // Dummy weights without the routed experts on the host: this rank makes its slice, one
        // layer at a time (host memory: one layer's slice, not the model's experts).
        model::MoeWeights slice;
        slice.experts = model::make_dummy_experts(c, *w.dummy_experts_seed, static_cast<int64_t>(l), begin, begin + e->local_);
        e->layers_[static_cast<int64_t>(l)] = model::upload_experts(slice, 0, e->local_);
      } else {
        return make_error(ErrorCode::kInternal, "GPU EP rank {}: layer {} has no routed experts", rank.rank(), l);
      }
      e->last_moe_layer_ = static_cast<int64_t>(l);
    }
    // The received slab of each local expert: R ranks x the buffer's tokens per rank.
    e->max_tokens_ = rank.recv_x().size(1) / ranks;
    const int64_t slab = ranks * e->max_tokens_;
    e->gate_ = Tensor::empty({e->local_, slab, e->inter_}, DType::kBF16, Device::kCuda);
    e->up_ = Tensor::empty(e->gate_.shape(), DType::kBF16, Device::kCuda);
    e->y_ = Tensor::empty({e->local_, slab, e->hidden_}, DType::kBF16, Device::kCuda);
    e->combined_ = Tensor::empty({std::max<int64_t>(e->max_tokens_, 1), e->hidden_}, DType::kF32, Device::kCuda);
    // Both expert paths once (on the zero counts the group starts with), so their kernels are
    // loaded before any EP pass: a kernel's first launch waits for every kernel on the GPU,
    // including peers spinning in an exchange with this rank.
    if (!e->layers_.empty()) {
      PDSERVE_RETURN_IF_ERROR(e->run_experts(e->layers_.begin()->second, true));
      PDSERVE_RETURN_IF_ERROR(e->run_experts(e->layers_.begin()->second, false));
      PDSERVE_RETURN_IF_ERROR(detail::cuda_status(cudaStreamSynchronize(ops::cuda::current_stream()), "GPU EP warm-up"));
    }
  } catch (const std::exception& ex) {
    return make_error(ErrorCode::kInternal, "GPU EP rank {}: setup failed: {}", rank.rank(), ex.what());
  }
  return e;
}

void GpuEpExperts::begin_step(int64_t group_max_tokens, bool group_extends) {
  rounds_ = std::max<int64_t>(1, (group_max_tokens + max_tokens_ - 1) / max_tokens_);
  decode_ = !group_extends;
}

Status GpuEpExperts::run_experts(const model::GpuExperts& e, bool decode) {
  const Tensor& x = rank_->recv_x();  // bf16 [local, R * max, hidden]
  const Tensor& counts = rank_->recv_count();
  // SiLU over the received rows only: a slab has R x max rows per expert (1,024 at EP8 with 128
  // tokens per rank), a decode step fills a few of them.
  if (decode) {
    // A few rows per expert: the GEMV computes (and reads the weights of) only the rows received;
    // rows past the counts stay stale, and combine reads none of them.
    ops::grouped_gemv_masked(x, counts, e.gate, e.gate_table, gate_);
    ops::grouped_gemv_masked(x, counts, e.up, e.up_table, up_);
    ops::silu_mul_masked(gate_, up_, counts, gate_);
    ops::grouped_gemv_masked(gate_, counts, e.down, e.down_table, y_);
  } else {
    ops::grouped_linear_masked(x, counts, e.gate, gate_);
    ops::grouped_linear_masked(x, counts, e.up, up_);
    ops::silu_mul_masked(gate_, up_, counts, gate_);
    ops::grouped_linear_masked(gate_, counts, e.down, y_);
  }
  return ok_status();
}

Status GpuEpExperts::forward(int64_t layer, const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights,
                             Tensor& out) {
  auto it = layers_.find(layer);
  if (it == layers_.end()) return make_error(ErrorCode::kInternal, "GPU EP: layer {} has no routed experts", layer);
  const int64_t T = x.size(0);
  if (T > rounds_ * max_tokens_)
    return make_error(ErrorCode::kInternal, "GPU EP: {} tokens on this rank, more than begin_step's group maximum", T);
  cudaStream_t stream = ops::cuda::current_stream();
  try {
    for (int64_t round = 0; round < rounds_; ++round) {
      const int64_t r0 = std::min(T, round * max_tokens_), r1 = std::min(T, r0 + max_tokens_);
      const Tensor xs = x.slice(0, r0, r1), ids = topk_ids.slice(0, r0, r1), ws = topk_weights.slice(0, r0, r1);
      PDSERVE_RETURN_IF_ERROR(rank_->dispatch(xs, ids, stream));
      PDSERVE_RETURN_IF_ERROR(run_experts(it->second, decode_));
      Tensor sums = combined_.slice(0, 0, r1 - r0);
      PDSERVE_RETURN_IF_ERROR(rank_->combine(y_, ids, ws, sums, stream));
      if (r1 > r0) {
        Tensor rows = out.slice(0, r0, r1);
        ops::add_inplace(rows, sums);
      }
    }
  } catch (const std::exception& ex) {
    // The peers would wait for this rank's next dispatch or combine until the timeout.
    const std::string why = fmt::format("layer {}: {}", layer, ex.what());
    rank_->abort(why);
    return make_error(ErrorCode::kInternal, "GPU EP rank {} {}", rank_->rank(), why);
  }
  // A peer that never arrives shows as a kernel report, not a launch error: read it once a pass
  // (after a graph replay: after_replay).
  if (layer != last_moe_layer_) return ok_status();
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  PDSERVE_RETURN_IF_ERROR(detail::cuda_status(cudaStreamIsCapturing(stream, &capture), "cudaStreamIsCapturing"));
  return capture == cudaStreamCaptureStatusNone ? rank_->synchronize(stream) : ok_status();
}

Status GpuEpExperts::before_replay() { return rank_->meet_peers(ops::cuda::current_stream()); }

Status GpuEpExperts::after_replay() { return rank_->status(); }

}  // namespace pdserve::moe::gpu

#endif  // PDSERVE_HAVE_CUDA
