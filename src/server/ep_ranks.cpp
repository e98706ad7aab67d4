#include "server/ep_ranks.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <thread>
#include <functional>
#include <mutex>

#include "base/logging.h"
#include "moe/ep_model_experts.h"
#if defined(PDSERVE_HAVE_CUDA)
#include <cuda_runtime.h>

#include "moe/cuda/ep_gpu_experts.h"
#include "moe/cuda/ep_low_latency_gpu.h"
#include "moe/cuda/ep_normal_gpu.h"
#endif

namespace pdserve::server {

namespace {

// What the ranks of one group share for sleeping and waking (step_sync.h).
struct Doorbell {
  std::atomic<uint64_t> rung_upto{0};  // ring(e) makes it > e: "someone rang for epoch e"
  std::mutex mu;
  std::vector<std::function<void()>> wakers;
};

class CommStepSync final : public scheduler::StepSync {
 public:
  // `abort_all`: breaks every group of the ranks (the CPU world and, with GPU ranks, the kernels').
  CommStepSync(parallel::Communicator& comm, std::shared_ptr<Doorbell> bell,
               std::function<void(const std::string&)> abort_all, bool stall)
      : comm_(comm), bell_(std::move(bell)), abort_all_(std::move(abort_all)), stall_(stall) {}

  Result<scheduler::GroupStep> agree(int64_t tokens, bool extend, bool awake) override {
    if (stall_ && tokens > 0) {
      // Test hook (PDSERVE_EP_TEST_STALL_RANK): this rank hangs before its first pass with tokens,
      // as a stuck kernel would; its peers must turn that into an error, the watchdog into an exit.
      log::warning("PDSERVE_EP_TEST_STALL_RANK: this rank stalls");
      std::this_thread::sleep_for(std::chrono::hours(1));
    }
    Tensor mine = Tensor::empty({1, 3}, DType::kI64);
    mine.data<int64_t>()[0] = tokens;
    mine.data<int64_t>()[1] = extend ? 1 : 0;
    mine.data<int64_t>()[2] = awake ? 1 : 0;
    Tensor all = Tensor::empty({comm_.size(), 3}, DType::kI64);
    PDSERVE_RETURN_IF_ERROR(comm_.all_gather(mine, all));
    scheduler::GroupStep g;
    for (int64_t r = 0; r < comm_.size(); ++r) {
      const int64_t* row = all.data<int64_t>() + r * 3;
      g.max_tokens = std::max(g.max_tokens, row[0]);
      g.any_extend = g.any_extend || row[1] != 0;
      g.any_awake = g.any_awake || row[2] != 0;
    }
    return g;
  }

  void ring(uint64_t epoch) override {
    uint64_t cur = bell_->rung_upto.load();
    while (cur <= epoch && !bell_->rung_upto.compare_exchange_weak(cur, epoch + 1)) {
    }
    std::vector<std::function<void()>> wakers;
    {
      std::lock_guard<std::mutex> lock(bell_->mu);
      wakers = bell_->wakers;
    }
    for (auto& w : wakers) w();
  }
  bool rung(uint64_t epoch) const override { return bell_->rung_upto.load() > epoch; }
  void set_waker(std::function<void()> wake) override {
    std::lock_guard<std::mutex> lock(bell_->mu);
    bell_->wakers.push_back(std::move(wake));
  }
  void abort(const std::string& reason) override { abort_all_(reason); }

 private:
  parallel::Communicator& comm_;
  std::shared_ptr<Doorbell> bell_;
  std::function<void(const std::string&)> abort_all_;
  bool stall_ = false;
};

}  // namespace

Result<std::unique_ptr<EpRanks>> EpRanks::create(const parallel::RankLayout& layout,
                                                 std::shared_ptr<const model::DeepseekV3Model> model,
                                                 const EpRanksOptions& options) {
  auto e = std::unique_ptr<EpRanks>(new EpRanks());
  e->opts_ = options;
  PDSERVE_RETURN_IF_ERROR(moe::check_placement(options.placement, model->config(), layout.world_size()));
  parallel::CollectiveOptions opts;
  opts.timeout = options.timeout;
  e->world_ = std::make_unique<parallel::LocalWorld>(layout, opts);
  moe::EpMoeOptions mo;
  mo.max_dispatch_tokens_per_rank = options.max_dispatch_tokens_per_rank;
  // One doorbell per EP group; with --moe-a2a-backend deepep there is one group of all ranks.
  std::vector<std::shared_ptr<Doorbell>> bells(static_cast<size_t>(layout.world_size()));
  for (const auto& members : layout.ep_groups()) {
    auto bell = std::make_shared<Doorbell>();
    for (int m : members) bells[static_cast<size_t>(m)] = bell;
  }
  if (options.device == "cuda") PDSERVE_RETURN_IF_ERROR(e->create_gpu_group(layout, *model));
  const char* stall = std::getenv("PDSERVE_EP_TEST_STALL_RANK");
  const int stall_rank = stall ? std::atoi(stall) : -1;
  for (int r = 0; r < layout.world_size(); ++r) {
    auto& comms = e->world_->comms(r);
    Rank rank;
    if (e->on_gpu()) {
      PDSERVE_ASSIGN_OR_RETURN(rank.experts, e->gpu_experts(model, r, layout.config().deepep_mode));
    } else {
      PDSERVE_ASSIGN_OR_RETURN(auto experts, moe::EpModelExperts::create(model, *comms.ep, layout.config().deepep_mode,
                                                                         mo, options.placement));
      rank.experts = std::shared_ptr<model::RoutedExperts>(std::move(experts));
    }
    EpRanks* owner = e.get();
    rank.sync = std::make_shared<CommStepSync>(*comms.ep, bells[static_cast<size_t>(r)],
                                               [owner](const std::string& reason) { owner->abort(reason); }, r == stall_rank);
    e->ranks_.push_back(std::move(rank));
  }
  return e;
}

#if defined(PDSERVE_HAVE_CUDA)
Status EpRanks::create_gpu_group(const parallel::RankLayout& layout, const model::DeepseekV3Model& model) {
  const auto& c = model.config();
  const auto timeout = opts_.timeout;
  const int base_gpu_id = opts_.base_gpu_id;
  // With redundant experts the exchange addresses physical experts.
  const int64_t num_experts = opts_.placement.num_physical(c);
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0)
    return make_error(ErrorCode::kUnsupported, "--device cuda with --moe-a2a-backend deepep: no CUDA device is visible");
  if (base_gpu_id < 0 || base_gpu_id >= count)
    return make_error(ErrorCode::kInvalidArgument, "--base-gpu-id {} with {} GPUs visible", base_gpu_id, count);
  moe::gpu::LowLatencyGpuConfig cfg;
  cfg.num_experts = num_experts;
  cfg.hidden = c.hidden_size;
  cfg.max_tokens_per_rank = opts_.max_dispatch_tokens_per_rank;
  cfg.top_k = c.num_experts_per_tok;
  // FP8 models dispatch FP8 rows with 1x128 scales (half the bytes; DeepEP's low-latency default),
  // which the experts' GEMV reads as they are; bf16 models move bf16 rows, so that their output
  // equals one GPU's.
  cfg.fp8 = c.quantization.has_value();
  cfg.timeout = timeout;
  cfg.devices = moe::gpu::default_devices(layout.world_size(), count - base_gpu_id);
  for (int& d : cfg.devices) d += base_gpu_id;
  // Blocks per rank kernel (default: as many as fit with every rank's kernels resident at once, half
  // the GPU when ranks share it). A diagnostic knob (docs/parallelism.md §8): fewer blocks leave SMs
  // free for the ranks' other kernels.
  if (const char* b = std::getenv("PDSERVE_EP_GPU_BLOCKS")) {
    char* end = nullptr;
    const long v = std::strtol(b, &end, 10);
    if (end == b || *end != '\0' || v < 1 || v > 4096)
      return make_error(ErrorCode::kInvalidArgument, "PDSERVE_EP_GPU_BLOCKS must be a block count 1..4096, got '{}'", b);
    cfg.blocks = static_cast<int>(v);
  }
  PDSERVE_ASSIGN_OR_RETURN(auto group, moe::gpu::LowLatencyGpuGroup::create(cfg));
  log::info("EP low-latency GPU group: {} ranks on GPUs [{}], {} blocks per rank kernel, buffers for {} tokens per rank",
            group->size(), fmt::join(cfg.devices, ", "), group->blocks(), cfg.max_tokens_per_rank);
  gpus_ = cfg.devices;
  gpu_group_ = std::shared_ptr<moe::gpu::LowLatencyGpuGroup>(std::move(group));
  // Prefill passes (and, with --deepep-mode normal, every pass) go through the normal mode: sized
  // for the largest forward of one rank (max(--max-prefill-tokens, --chunked-prefill-size)).
  if (layout.config().deepep_mode != parallel::DeepEpMode::kLowLatency && opts_.max_forward_tokens > 0) {
    moe::gpu::NormalGpuConfig ncfg;
    ncfg.num_experts = num_experts;
    ncfg.hidden = c.hidden_size;
    ncfg.max_tokens_per_rank = opts_.max_forward_tokens;
    ncfg.top_k = c.num_experts_per_tok;
    ncfg.devices = cfg.devices;
    ncfg.blocks = cfg.blocks;
    ncfg.timeout = timeout;
    PDSERVE_ASSIGN_OR_RETURN(auto normal, moe::gpu::NormalGpuGroup::create(ncfg));
    log::info("EP normal-mode GPU group: {} blocks per rank kernel, buffers for {} tokens per rank", normal->blocks(),
              ncfg.max_tokens_per_rank);
    gpu_normal_group_ = std::shared_ptr<moe::gpu::NormalGpuGroup>(std::move(normal));
  }
  return ok_status();
}

Result<std::shared_ptr<model::RoutedExperts>> EpRanks::gpu_experts(std::shared_ptr<const model::DeepseekV3Model> model,
                                                                   int rank, parallel::DeepEpMode mode) {
  auto& group = *static_cast<moe::gpu::LowLatencyGpuGroup*>(gpu_group_.get());
  moe::gpu::GpuEpExpertsOptions opts;
  if (gpu_normal_group_) opts.normal = &static_cast<moe::gpu::NormalGpuGroup*>(gpu_normal_group_.get())->rank(rank);
  opts.mode = mode;
  opts.placement = opts_.placement;
  PDSERVE_ASSIGN_OR_RETURN(auto experts, moe::gpu::GpuEpExperts::create(std::move(model), group.rank(rank), group.size(), opts));
  return std::shared_ptr<model::RoutedExperts>(std::move(experts));
}
#else
Status EpRanks::create_gpu_group(const parallel::RankLayout&, const model::DeepseekV3Model&) {
  return make_error(ErrorCode::kUnsupported, "--device cuda: this build has no CUDA (configure with PDSERVE_CUDA=ON)");
}
Result<std::shared_ptr<model::RoutedExperts>> EpRanks::gpu_experts(std::shared_ptr<const model::DeepseekV3Model>, int,
                                                                   parallel::DeepEpMode) {
  return make_error(ErrorCode::kUnsupported, "no CUDA in this build");
}
#endif

EpRanks::~EpRanks() = default;

void EpRanks::abort(const std::string& reason) {
  if (world_) world_->abort_all(reason);
#if defined(PDSERVE_HAVE_CUDA)
  if (gpu_group_) static_cast<moe::gpu::LowLatencyGpuGroup*>(gpu_group_.get())->abort(reason);
  if (gpu_normal_group_) static_cast<moe::gpu::NormalGpuGroup*>(gpu_normal_group_.get())->abort(reason);
#endif
}

}  // namespace pdserve::server
