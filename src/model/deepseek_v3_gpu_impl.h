// The CUDA model's state and its member functions, shared by the files that implement them:
// deepseek_v3_gpu.cpp (set-up, the layers, eager passes) and deepseek_v3_gpu_graphs.cpp (decode
// CUDA graphs: capture and replay). Private to those files; users include deepseek_v3_gpu.h.
#pragma once

#ifdef PDSERVE_HAVE_CUDA

#include <cuda_runtime.h>

#include <map>
#include <memory>
#include <vector>

#include "model/deepseek_v3_gpu.h"
#include "model/device_arena.h"
#include "model/gpu_host_inputs.h"
#include "model/gpu_row_sampler.h"
#include "model/gpu_weights.h"
#include "ops/attention.h"
#include "ops/cuda/cuda_common.h"
#include "ops/cuda/rope.h"

namespace pdserve::model {

inline constexpr double kGiB = 1073741824.0;

inline double avail_gb() {
  size_t free_b = 0, total_b = 0;
  cudaMemGetInfo(&free_b, &total_b);
  return static_cast<double>(free_b) / kGiB;
}

// Inside the model's forward, failures travel as exceptions (caught at the public entry points).
inline void throw_if_failed(const Status& s) {
  if (!s.has_value()) throw std::runtime_error(s.error().message());
}

// An EP model's warm-up hook: sends nothing (the peers are not exchanging while ranks capture).
struct NoExchange final : RoutedExperts {
  Status forward(int64_t, const Tensor&, const Tensor&, const Tensor&, Tensor&) override { return ok_status(); }
  void begin_step(int64_t, bool) override {}
};

// The ops run on the calling thread's current stream; a forward sets the model's and restores the
// caller's on the way out, so no thread keeps a handle the model may destroy.
class StreamScope {
 public:
  StreamScope() : saved_(ops::cuda::current_stream()) {}
  ~StreamScope() { ops::cuda::set_current_stream(saved_); }
  StreamScope(const StreamScope&) = delete;
  StreamScope& operator=(const StreamScope&) = delete;

 private:
  cudaStream_t saved_;
};

struct DeepseekV3GpuModel::Impl {
  std::shared_ptr<const DeepseekV3Model> host;
  const ModelConfig* cfg = nullptr;
  GpuModelOptions opts;
  GpuWeights w;
  ops::RopeTable rope;
  ops::MlaDims dims;
  float scale = 1.0f;
  const DType act = DType::kBF16;  // activations between ops and the cache
  int64_t num_pages = 0;
  Tensor kv;  // [layers, pages, page_size, latent] bf16
  cudaStream_t stream = nullptr, capture_stream = nullptr;
  DeviceArena arena, graph_arena;
  GpuMemoryReport mem;
  bool used_graph = false;
  // Expert parallelism: the hook of every forward without its own (set_routed_experts), and the
  // one of the forward under way (nullptr: every expert is local).
  std::shared_ptr<RoutedExperts> routed_default;
  RoutedExperts* routed = nullptr;
  Tensor idle_x, idle_out, idle_ids, idle_w;  // one-row device buffers; idle passes use zero rows
  // Set by forward_sample for one call: the forward ends in ops::sample_batch on the device instead
  // of copying the logits to the host.
  const std::vector<RowSampling>* sampling = nullptr;
  GpuRowSampler sampler;  // forward_sample's device buffers
  // count_experts: [layers, n_routed_experts] i32, each MoE layer's row rewritten by every pass
  // (dense layers' rows stay 0); at fixed addresses, so the graphs write it too.
  Tensor expert_counts;
  ExpertCounts* counts_out = nullptr;  // the forward under way reports its counts here (download)

  // Graph state: static inputs for the largest batch, one executable graph per captured size.
  struct Static {
    Tensor ids, positions, slots, seq_lens, page_table, logits;
  } st;
  int64_t table_width = 0;
  std::map<int64_t, cudaGraphExec_t> graphs;
  // Masked MoE layout per captured size: expert e's rows start at e * bs. Device constants made
  // before capture (a capture cannot copy from pageable host memory).
  std::map<int64_t, Tensor> masked_bases;

  // Device views of one forward's inputs.
  struct Inputs {
    Tensor ids, positions, slots, seq_lens, page_table, cu_q, cu_kv, kv_batch, kv_pos, last_rows;
  };

  Tensor pool(int64_t l) const { return kv.select(l); }

  Inputs upload(const HostInputs& h, DeviceArena& a);

  // ---- the layers --------------------------------------------------------------------------------

  void attention(int64_t l, const Tensor& x, const Inputs& in, const HostInputs& h, DeviceArena& a, bool decode,
                 Tensor& residual);

  static bool experts_fp8(const GpuLayerWeights& lw);

  void mlp(const GpuMlp& m, const Tensor& x, DeviceArena& a, Tensor& residual);

  // Routed experts. masked (graphs): every expert gets a block of T rows and the expert products
  // read the counts on the device; otherwise the counts come to the host and the rows are packed.
  // masked: a graph-shaped decode batch, whose padding rows (seq_lens 0) are routed nowhere.
  void moe(int64_t l, const Tensor& x, const Tensor& x_bf16, DeviceArena& a, bool masked, const Tensor& seq_lens,
           RoutingTrace* trace, Tensor& residual);

  void record_routing(int64_t l, const Tensor& ids, int64_t T, int64_t k, RoutingTrace& trace);

  // The whole network over uploaded inputs; logits [rows, vocab] f32 into `logits`.
  void body(const Inputs& in, const HostInputs& h, DeviceArena& a, bool decode, bool masked, bool all_logits,
            RoutingTrace* trace, Tensor& logits);

  // The forward's result from the device logits of its first `rows` rows: the host f32 logits, or,
  // for forward_sample, the sampled ids ([rows] i32 on the host).
  // Then the pass's expert counts, if the forward asked for them.
  Tensor download(const Tensor& dev_logits, int64_t rows);

  // The last pass's counts into `out` (MoE layers only). After the pass's outputs, which
  // synchronised the stream: the copy does not wait behind a replay (see run_graph).
  void report_counts(ExpertCounts& out);

  // EP ranks: one decode-shaped forward (b one-token sequences) per power of two b below
  // `largest`, so every row bucket's GEMM kernels are loaded before the first EP pass (a kernel's
  // first launch waits for all kernels on the GPU, the peers' spinning exchange included; linear.cu
  // picks one algorithm per bucket). Against the one-page warm-up cache.
  void warm_gemm_buckets(int64_t largest);

  // An EP rank allocates nothing while serving: a device allocation issued while a peer's
  // dispatch spins may wait for it (CUDA lists allocations among the implicit synchronisations),
  // and that peer waits for this rank. So the idle-pass rows and the sampling buffers for the
  // largest forward are made at creation.
  void reserve_ep_buffers();

  Tensor run_eager(const std::vector<SequenceInput>& batch, const ForwardOptions& o);

  // Decode with bs rows (a real batch padded) on the static buffers; eager when capturing is false.
  void static_decode(int64_t bs, DeviceArena& a);

  // The decode graphs of opts.cuda_graph_bs; `hook`: EP's routed experts, captured into them.
  void capture_graphs(RoutedExperts* hook);

  void fill_static(const std::vector<SequenceInput>& batch, int64_t bs);

  // The captured size for this batch, or 0 when it must run eagerly.
  int64_t graph_bs(const std::vector<SequenceInput>& batch, const ForwardOptions& o) const;

  Tensor run_graph(const std::vector<SequenceInput>& batch, int64_t bs);

  // capture_graphs between SGLang's log lines.
  void capture_logged(RoutedExperts* hook);

  ~Impl();
};

}  // namespace pdserve::model

#endif  // PDSERVE_HAVE_CUDA
