#include "moe/cuda/ep_gpu_experts.h"

#if defined(PDSERVE_HAVE_CUDA)

#include <algorithm>
#include <vector>

#include "base/logging.h"
#include "model/dummy_weights.h"
#include "moe/cuda/ep_gpu_common.h"
#include "moe/eplb_manager.h"
#include "moe/ep_dispatch.h"
#include "ops/cuda/cuda_common.h"
#include "ops/elementwise.h"
#include "ops/grouped_gemm.h"
#include "ops/moe_dispatch.h"

namespace pdserve::moe::gpu {

using detail::cuda_status;

namespace {

// A host i32 tensor of `v` (a rank's static dispatch map of one layer).
Tensor i32_host(const std::vector<int>& v) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, DType::kI32);
  std::copy(v.begin(), v.end(), t.data<int32_t>());
  return t;
}

}  // namespace

Result<std::unique_ptr<GpuEpExperts>> GpuEpExperts::create(std::shared_ptr<const model::DeepseekV3Model> model,
                                                           LowLatencyGpuRank& rank, int ranks, GpuEpExpertsOptions opts) {
  const model::ModelConfig& c = model->config();
  auto e = std::unique_ptr<GpuEpExperts>(new GpuEpExperts());
  e->rank_ = &rank;
  e->normal_ = opts.normal;
  e->mode_ = opts.mode;
  e->ranks_ = ranks;
  if (ranks < 1) return make_error(ErrorCode::kInvalidArgument, "GPU EP: {} ranks", ranks);
  if (auto st = check_placement(opts.placement, c, ranks); !st) return st.error().with_context("GPU EP");
  if (opts.placement.rebalancer && !opts.placement.location)
    return make_error(ErrorCode::kInvalidArgument, "GPU EP: a rebalancer needs the placement it starts from");
  const ExpertLocation* loc = opts.placement.location.get();
  // check_placement refused fake: with a location the algorithm is static or dynamic.
  const bool dynamic = loc && opts.placement.algorithm == DispatchAlgorithm::kDynamic;
  e->model_ = model;
  if (opts.placement.rebalancer) e->lockstep_.emplace(opts.placement.rebalancer, opts.placement.location);
  e->dynamic_ = dynamic;
  // A rebalanced placement is written into these tables in place (captured graphs read them), so
  // they are sized for any placement of the layout.
  if (dynamic) e->replica_columns_ = opts.placement.rebalancer ? max_replica_columns(loc->layout()) : 0;
  const int64_t physical = opts.placement.num_physical(c);
  if (opts.normal && (opts.normal->ranks() != ranks || opts.normal->rank() != rank.rank()))
    return make_error(ErrorCode::kInvalidArgument, "GPU EP: the normal-mode rank ({} of {}) is not low-latency rank {} of {}",
                      opts.normal->rank(), opts.normal->ranks(), rank.rank(), ranks);
  e->local_ = physical / ranks;
  e->hidden_ = c.hidden_size;
  e->inter_ = c.moe_intermediate_size;
  try {
    PDSERVE_RETURN_IF_ERROR(cuda_status(cudaSetDevice(rank.device()), "cudaSetDevice"));
    const int64_t begin = rank.rank() * e->local_;
    const auto& w = model->weights();
    const std::vector<std::vector<int>> dispatch_map =
        loc && !dynamic ? loc->static_dispatch_map(rank.rank()) : std::vector<std::vector<int>>{};
    for (size_t l = 0; l < w.layers.size(); ++l) {
      if (!w.layers[l].is_moe) continue;
      // The logical expert of each local slot.
      std::vector<int64_t> logical;
      for (int64_t p = begin; p < begin + e->local_; ++p)
        logical.push_back(loc ? loc->logical_of(static_cast<int>(l), static_cast<int>(p)) : p);
      model::MoeWeights slice;
      for (int64_t id : logical) {
        PDSERVE_ASSIGN_OR_RETURN(model::MlpWeights x, e->host_expert(static_cast<int64_t>(l), id));
        slice.experts.push_back(std::move(x));
      }
      Layer& layer = e->layers_[static_cast<int64_t>(l)];
      layer.experts = model::upload_experts(slice, 0, e->local_);
      if (dynamic) {
        const ReplicaTables tables = replica_tables(*loc, static_cast<int>(l), e->replica_columns_);
        layer.replicas = tables.replicas.to(Device::kCuda);
        layer.copies = tables.copies.to(Device::kCuda);
      } else if (loc) {
        layer.id_map = i32_host(dispatch_map.at(l)).to(Device::kCuda);
      }
      e->last_moe_layer_ = static_cast<int64_t>(l);
    }
    // The received slab of each local expert: R ranks x the buffer's tokens per rank.
    e->max_tokens_ = rank.recv_x().size(1) / ranks;
    if (loc) {
      // One exchange call carries at most one round (low-latency) or one normal pass.
      const int64_t most = std::max(e->max_tokens_, e->normal_ ? e->normal_->config().max_tokens_per_rank : 0);
      e->mapped_ids_ = Tensor::empty({std::max<int64_t>(most, 1), c.num_experts_per_tok}, DType::kI32, Device::kCuda);
      if (dynamic) e->draw_ = detail::device_zeros({1}, DType::kI64);
      e->dispatch_seed_ = kDispatchSeed + static_cast<uint64_t>(rank.rank());
    }
    const int64_t slab = ranks * e->max_tokens_;
    e->gate_up_ = Tensor::empty({e->local_, slab, 2 * e->inter_}, DType::kBF16, Device::kCuda);
    e->act_ = Tensor::empty({e->local_, slab, e->inter_}, DType::kBF16, Device::kCuda);
    e->y_ = Tensor::empty({e->local_, slab, e->hidden_}, DType::kBF16, Device::kCuda);
    e->combined_ = Tensor::empty({std::max<int64_t>(e->max_tokens_, 1), e->hidden_}, DType::kF32, Device::kCuda);
    if (e->normal_) {
      // Everything a normal pass needs, made now: an EP rank allocates nothing while serving.
      e->normal_tokens_ = e->normal_->config().max_tokens_per_rank;
      const int64_t recv = ranks * e->normal_tokens_;
      e->contiguous_rows_ = opts.contiguous_rows > 0 ? opts.contiguous_rows : recv;
      e->xc_ = detail::device_zeros({e->contiguous_rows_, e->hidden_}, DType::kBF16);  // zeros: the warm-up reads them
      e->guc_ = Tensor::empty({e->contiguous_rows_, 2 * e->inter_}, DType::kBF16, Device::kCuda);
      e->hc_ = detail::device_zeros({e->contiguous_rows_, e->inter_}, DType::kBF16);  // zeros: the warm-up reads them
      e->yc_ = Tensor::empty(e->xc_.shape(), DType::kBF16, Device::kCuda);
      e->slots_ = Tensor::empty({recv, c.num_experts_per_tok}, DType::kI32, Device::kCuda);
      e->partial_ = Tensor::empty({recv, e->hidden_}, DType::kF32, Device::kCuda);
      // The bf16 partials go into xc_ once the experts have run (free by then; the combine pushes
      // them to their owners before the next layer's scatter), unless xc_ is the smaller.
      if (e->contiguous_rows_ < recv) e->partial_bf16_ = Tensor::empty({recv, e->hidden_}, DType::kBF16, Device::kCuda);
      e->row_base_ = Tensor::empty({e->local_}, DType::kI32, Device::kCuda);
      e->counts_ = Tensor::empty({e->local_}, DType::kI32, Device::kCuda);
      e->normal_out_ = Tensor::empty({std::max<int64_t>(e->normal_tokens_, 1), e->hidden_}, DType::kF32, Device::kCuda);
    }
    // Both low-latency expert paths once (on the zero counts the group starts with), so their
    // kernels are loaded before any EP pass: a kernel's first launch waits for every kernel on the
    // GPU, including peers spinning in an exchange with this rank.
    if (!e->layers_.empty()) {
      PDSERVE_RETURN_IF_ERROR(e->run_experts(e->layers_.begin()->second.experts, true));
      PDSERVE_RETURN_IF_ERROR(e->run_experts(e->layers_.begin()->second.experts, false));
      if (e->normal_) e->warm_normal_gemms(e->layers_.begin()->second.experts);
      PDSERVE_RETURN_IF_ERROR(cuda_status(cudaStreamSynchronize(ops::cuda::current_stream()), "GPU EP warm-up"));
    }
  } catch (const std::exception& ex) {
    return make_error(ErrorCode::kInternal, "GPU EP rank {}: setup failed: {}", rank.rank(), ex.what());
  }
  return e;
}

Result<model::MlpWeights> GpuEpExperts::host_expert(int64_t layer, int64_t logical) const {
  const auto& w = model_->weights();
  const auto& experts = w.layers.at(static_cast<size_t>(layer)).moe.experts;
  if (!experts.empty()) return experts.at(static_cast<size_t>(logical));
  // Dummy weights without the routed experts on the host: this rank makes each expert it holds
  // (host memory: one expert at a time, not the model's experts).
  if (w.dummy_experts_seed)
    return model::make_dummy_experts(model_->config(), *w.dummy_experts_seed, layer, logical, logical + 1).front();
  return make_error(ErrorCode::kInternal, "GPU EP rank {}: layer {} has no routed experts", rank_->rank(), layer);
}

Status GpuEpExperts::follow_rebalancer() {
  const auto sw = lockstep_->begin_step();
  if (!sw) return ok_status();
  const ExpertLocation &from = *sw->from, &to = *sw->to;
  // This rank's stream is idle here (every pass synchronises it before its outputs are read), so
  // its previous pass no longer reads the slots or the tables. The peers may already spin in this
  // step's first exchange, waiting for us: the copies below allocate and free nothing on the
  // device (which would wait for their kernels) and take what a few experts' bytes take.
  const int64_t begin = rank_->rank() * local_;
  const std::vector<std::vector<int>> dispatch_map =
      dynamic_ ? std::vector<std::vector<int>>{} : to.static_dispatch_map(rank_->rank());
  int moved = 0;
  for (auto& [l, layer] : layers_) {
    const int li = static_cast<int>(l);
    for (int64_t i = 0; i < local_; ++i) {
      const int p = static_cast<int>(begin + i);
      const int now = to.logical_of(li, p);
      if (now == from.logical_of(li, p)) continue;
      PDSERVE_ASSIGN_OR_RETURN(model::MlpWeights x, host_expert(l, now));
      PDSERVE_RETURN_IF_ERROR(model::overwrite_expert(layer.experts, i, x));
      ++moved;
    }
    if (dynamic_) {
      const ReplicaTables t = replica_tables(to, li, replica_columns_);
      PDSERVE_RETURN_IF_ERROR(model::copy_to_device(t.replicas, layer.replicas, "replica table"));
      PDSERVE_RETURN_IF_ERROR(model::copy_to_device(t.copies, layer.copies, "replica counts"));
    } else {
      PDSERVE_RETURN_IF_ERROR(
          model::copy_to_device(i32_host(dispatch_map.at(static_cast<size_t>(l))), layer.id_map, "dispatch map"));
    }
  }
  log::debug("GPU EP rank {}: a new placement is in effect ({} slots loaded)", rank_->rank(), moved);
  return ok_status();
}

void GpuEpExperts::begin_capture(int64_t tokens) {
  // Not a group step: the rebalancer is not told, and the mode is set as for a decode pass.
  set_pass_mode(tokens, false);
}

void GpuEpExperts::begin_step(int64_t group_max_tokens, bool group_extends) {
  if (lockstep_ && !rebalance_error_) {
    // Every rank makes this call once per group step, so every rank switches at the same step.
    if (Status st = follow_rebalancer(); !st.has_value()) {
      log::error("GPU EP rank {}: the rebalanced placement could not be applied: {}", rank_->rank(),
                 st.error().message());
      rebalance_error_ = st;
    }
  }
  set_pass_mode(group_max_tokens, group_extends);
}

void GpuEpExperts::set_pass_mode(int64_t group_max_tokens, bool group_extends) {
  const parallel::DeepEpMode mode = parallel::resolve_deepep_mode(mode_, group_extends);
  // Every rank sees the same facts, so every rank picks the same exchange.
  normal_pass_ = normal_ && (mode == parallel::DeepEpMode::kNormal || group_max_tokens > max_tokens_);
  rounds_ = normal_pass_ ? 1 : std::max<int64_t>(1, (group_max_tokens + max_tokens_ - 1) / max_tokens_);
  decode_ = !group_extends;
}

Status GpuEpExperts::run_experts(const model::GpuExperts& e, bool decode) {
  const Tensor& x = rank_->recv_x();  // bf16, or fp8 with recv_scales, [local, R * max, hidden]
  const Tensor& counts = rank_->recv_count();
  const bool fp8_rows = x.dtype() == DType::kF8E4M3;
  // SiLU over the received rows only: a slab has R x max rows per expert (1,024 at EP8 with 128
  // tokens per rank), a decode step fills a few of them.
  const int64_t inter = e.inter();
  const Tensor gate = gate_up_.slice(2, 0, inter), up = gate_up_.slice(2, inter, 2 * inter);
  if (decode || fp8_rows) {
    // A few rows per expert: the masked kernels compute (and read the weights of) only the rows
    // received; rows past the counts stay stale, and combine reads none of them. FP8 rows go this
    // way in every pass (the kernels apply their scales as they read them; the masked GEMMs take
    // bf16): the low-latency exchange carries prefill passes only under --deepep-mode low_latency
    // or without a normal group, and its rounds then compute the received rows only.
    const Tensor scales = fp8_rows ? rank_->recv_scales() : Tensor();
    ops::grouped_masked_experts(x, counts, e.gate_up, e.gate_up_table, gate_up_, scales);
    ops::grouped_masked_silu_down(gate_up_, counts, e.down, e.down_table, act_, y_);
  } else {
    ops::grouped_linear_masked(x, counts, e.gate_up, gate_up_);
    ops::silu_mul_masked(gate, up, counts, act_);
    ops::grouped_linear_masked(act_, counts, e.down, y_);
  }
  return ok_status();
}

void GpuEpExperts::warm_normal_gemms(const model::GpuExperts& e) {
  // linear.cu picks a GEMM's algorithm per row bucket (m rounded up to a power of two), so one
  // expert GEMM of each bucket up to the buffer loads every kernel a normal pass can launch (the
  // fused gate|up shape and the down shape).
  for (int64_t b = 1;; b *= 2) {
    const int64_t rows = std::min(b, contiguous_rows_);
    const std::vector<int64_t> offsets = {0, rows};
    Tensor xr = xc_.slice(0, 0, rows), gur = guc_.slice(0, 0, rows), hr = hc_.slice(0, 0, rows), yr = yc_.slice(0, 0, rows);
    ops::grouped_linear_contiguous(xr, offsets, {e.gate_up.front()}, gur);
    ops::grouped_linear_contiguous(hr, offsets, {e.down.front()}, yr);
    if (rows == contiguous_rows_) break;
  }
}

Status GpuEpExperts::forward_low_latency(const Layer& layer, const Tensor& x, const Tensor& ids, const Tensor& w,
                                         Tensor& out, cudaStream_t stream) {
  const int64_t T = x.size(0);
  for (int64_t round = 0; round < rounds_; ++round) {
    const int64_t r0 = std::min(T, round * max_tokens_), r1 = std::min(T, r0 + max_tokens_);
    const Tensor xs = x.slice(0, r0, r1), is = physical_ids(layer, ids.slice(0, r0, r1)), ws = w.slice(0, r0, r1);
    PDSERVE_RETURN_IF_ERROR(rank_->dispatch(xs, is, stream));
    PDSERVE_RETURN_IF_ERROR(run_experts(layer.experts, decode_));
    Tensor sums = combined_.slice(0, 0, r1 - r0);
    PDSERVE_RETURN_IF_ERROR(rank_->combine(y_, is, ws, sums, stream));
    if (r1 > r0) {
      Tensor rows = out.slice(0, r0, r1);
      ops::add_inplace(rows, sums);
    }
  }
  return ok_status();
}

Status GpuEpExperts::forward_normal(const Layer& layer, const Tensor& x, const Tensor& ids, const Tensor& w,
                                    Tensor& out, cudaStream_t stream) {
  const model::GpuExperts& e = layer.experts;
  const Tensor pids = physical_ids(layer, ids);  // dispatch and combine take the same ids
  PDSERVE_RETURN_IF_ERROR(normal_->dispatch(x, pids, w, stream));
  PDSERVE_ASSIGN_OR_RETURN(NormalGpuReceived d, normal_->received(stream));
  const int64_t n = d.rows;
  const std::vector<int64_t> offsets = contiguous_layout(d.tokens_per_expert).offsets;  // [local + 1]
  Tensor partial = partial_.slice(0, 0, n);
  if (n > 0) PDSERVE_RETURN_IF_ERROR(cuda_status(cudaMemsetAsync(partial.raw_data(), 0, partial.nbytes(), stream), "partial"));
  Tensor slots = slots_.slice(0, 0, n);
  // The contiguous rows in windows the buffers hold (one window unless this rank received far more
  // than the balanced load). Each expert's first row is placed at offsets[g] - w0: moe_scatter
  // drops entries whose row falls outside [0, window), so a window takes exactly its rows, even
  // when it cuts an expert in two.
  const int64_t M = offsets.back();
  std::vector<int32_t> base(static_cast<size_t>(local_));
  for (int64_t w0 = 0; w0 < M; w0 += contiguous_rows_) {
    const int64_t rows = std::min(contiguous_rows_, M - w0);
    for (int64_t g = 0; g < local_; ++g) base[static_cast<size_t>(g)] = static_cast<int32_t>(offsets[g] - w0);
    PDSERVE_RETURN_IF_ERROR(cuda_status(
        cudaMemcpyAsync(row_base_.raw_data(), base.data(), base.size() * 4, cudaMemcpyHostToDevice, stream), "row bases"));
    ops::moe_scatter(d.recv_x, d.recv_topk_idx, row_base_, xc_, slots, counts_);
    // The experts with rows in this window, and where each one's rows start in it.
    int64_t e0 = 0;
    while (offsets[e0 + 1] <= w0) ++e0;
    int64_t e1 = e0 + 1;
    while (e1 < local_ && offsets[e1] < w0 + rows) ++e1;
    std::vector<int64_t> starts;
    for (int64_t g = e0; g < e1; ++g) starts.push_back(std::clamp<int64_t>(offsets[g] - w0, 0, rows));
    starts.push_back(rows);
    auto part = [&](const std::vector<Weight>& all) { return std::vector<Weight>(all.begin() + e0, all.begin() + e1); };
    Tensor xr = xc_.slice(0, 0, rows), gur = guc_.slice(0, 0, rows), hr = hc_.slice(0, 0, rows), yr = yc_.slice(0, 0, rows);
    const int64_t inter = e.inter();
    ops::grouped_linear_contiguous(xr, starts, part(e.gate_up), gur);
    ops::silu_mul(gur.slice(1, 0, inter), gur.slice(1, inter, 2 * inter), hr);
    ops::grouped_linear_contiguous(hr, starts, part(e.down), yr);
    ops::moe_combine(yr, slots, d.recv_topk_weights, partial);
  }
  Tensor partial_bf16 = (partial_bf16_.defined() ? partial_bf16_ : xc_).slice(0, 0, std::max<int64_t>(n, 1));
  if (n > 0) {
    Tensor rows = partial_bf16.slice(0, 0, n);
    ops::cast(partial, rows);
  }
  Tensor sums = normal_out_.slice(0, 0, x.size(0));
  PDSERVE_RETURN_IF_ERROR(normal_->combine(partial_bf16, pids, sums, stream));
  if (x.size(0) > 0) ops::add_inplace(out, sums);
  return ok_status();
}

void GpuEpExperts::abort(const std::string& why) {
  // The peers would wait for this rank's next dispatch or combine until the timeout.
  rank_->abort(why);
  if (normal_) normal_->abort(why);
}

Status GpuEpExperts::forward(int64_t layer, const Tensor& x, const Tensor& topk_ids, const Tensor& topk_weights,
                             Tensor& out) {
  if (rebalance_error_) return *rebalance_error_;
  auto it = layers_.find(layer);
  if (it == layers_.end()) return make_error(ErrorCode::kInternal, "GPU EP: layer {} has no routed experts", layer);
  const int64_t T = x.size(0);
  if (normal_pass_ ? T > normal_tokens_ : T > rounds_ * max_tokens_)
    return make_error(ErrorCode::kInternal, "GPU EP: {} tokens on this rank, more than begin_step's group maximum", T);
  cudaStream_t stream = ops::cuda::current_stream();
  Status st = ok_status();
  try {
    st = normal_pass_ ? forward_normal(it->second, x, topk_ids, topk_weights, out, stream)
                      : forward_low_latency(it->second, x, topk_ids, topk_weights, out, stream);
  } catch (const std::exception& ex) {
    st = Error(ErrorCode::kInternal, ex.what());
  }
  if (!st) {
    const std::string why = fmt::format("layer {}: {}", layer, st.error().message());
    abort(why);
    return make_error(ErrorCode::kInternal, "GPU EP rank {} {}", rank_->rank(), why);
  }
  // A peer that never arrives shows as a kernel report, not a launch error: read it once a pass
  // (after a graph replay: after_replay).
  if (layer != last_moe_layer_) return ok_status();
  if (normal_pass_) return normal_->synchronize(stream);
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  PDSERVE_RETURN_IF_ERROR(cuda_status(cudaStreamIsCapturing(stream, &capture), "cudaStreamIsCapturing"));
  return capture == cudaStreamCaptureStatusNone ? with_exchange_state(rank_->synchronize(stream)) : ok_status();
}

Status GpuEpExperts::with_exchange_state(Status st) const {
  // A failed exchange (a peer that never arrived): its synchronisation words say which side of
  // which call each block stopped at. The kernels have ended (they reported), so copying is safe.
  if (!st) {
    try {
      log::error("GPU EP rank {} exchange state after the failure: {}", rank_->rank(), rank_->exchange_state());
    } catch (const std::exception& e) {
      log::error("GPU EP rank {}: the exchange state could not be read: {}", rank_->rank(), e.what());
    }
  }
  return st;
}

Tensor GpuEpExperts::physical_ids(const Layer& layer, const Tensor& topk_ids) {
  if (!layer.id_map.defined() && !layer.replicas.defined()) return topk_ids;
  // forward checked T against begin_step's group maximum; a round or a normal pass fits.
  Tensor mapped = mapped_ids_.slice(0, 0, topk_ids.size(0));
  if (layer.replicas.defined())
    ops::moe_pick_expert_replicas(topk_ids, layer.replicas, layer.copies, dispatch_seed_, draw_, mapped);
  else
    ops::moe_map_expert_ids(topk_ids, layer.id_map, mapped);
  return mapped;
}

Status GpuEpExperts::before_replay() {
  if (rebalance_error_) return *rebalance_error_;
  return rank_->meet_peers(ops::cuda::current_stream());
}

Status GpuEpExperts::after_replay() { return with_exchange_state(rank_->status()); }

}  // namespace pdserve::moe::gpu

#endif  // PDSERVE_HAVE_CUDA
