// DeepseekV3GpuModel's decode CUDA graphs (SGLang's cuda_graph_runner): static input buffers for
// the largest captured batch, one graph per --cuda-graph-bs size captured on a side stream (with the
// EP hook when the experts live on EP ranks), and replay of a real batch padded to the next size.
#include "model/deepseek_v3_gpu_impl.h"

#ifdef PDSERVE_HAVE_CUDA

#include <chrono>

#include <fmt/ranges.h>

#include "base/logging.h"

namespace pdserve::model {

using ops::cuda::check;

void DeepseekV3GpuModel::Impl::static_decode(int64_t bs, DeviceArena& a) {
  HostInputs h;
  h.tokens = h.seqs = bs;
  h.decode = true;
  Inputs in;
  in.ids = st.ids.slice(0, 0, bs);
  in.positions = st.positions.slice(0, 0, bs);
  in.slots = st.slots.slice(0, 0, bs);
  in.seq_lens = st.seq_lens.slice(0, 0, bs);
  in.page_table = st.page_table.slice(0, 0, bs);
  Tensor logits = st.logits.slice(0, 0, bs);
  a.reset();
  body(in, h, a, true, true, false, nullptr, logits);
}

void DeepseekV3GpuModel::Impl::capture_graphs(RoutedExperts* hook) {
  NoExchange no_exchange;
  struct Unset {
    Impl* m;
    ~Unset() { m->routed = nullptr; }
  } unset{this};
  routed = hook ? &no_exchange : nullptr;
  const auto& bs_list = opts.cuda_graph_bs;
  const int64_t max_bs = bs_list.back();
  table_width = (opts.context_length + 1 + opts.page_size - 1) / opts.page_size + 1;
  st.ids = Tensor::empty({max_bs}, DType::kI32, Device::kCuda);
  st.positions = Tensor::empty({max_bs}, DType::kI32, Device::kCuda);
  st.slots = Tensor::empty({max_bs}, DType::kI32, Device::kCuda);
  st.seq_lens = Tensor::empty({max_bs}, DType::kI32, Device::kCuda);
  st.page_table = Tensor::empty({max_bs, table_width}, DType::kI32, Device::kCuda);
  st.logits = Tensor::empty({max_bs, cfg->vocab_size}, DType::kF32, Device::kCuda);
  for (int64_t bs : bs_list) {
    Tensor b = Tensor::empty({cfg->n_routed_experts}, DType::kI32);
    for (int64_t e = 0; e < cfg->n_routed_experts; ++e) b.data<int32_t>()[e] = static_cast<int32_t>(e * bs);
    masked_bases[bs] = b.to(Device::kCuda);
  }
  // Inputs of an empty batch: nothing is written to the cache, attention sees no context.
  std::vector<SequenceInput> none;
  fill_static(none, max_bs);
  check(cudaStreamSynchronize(stream), "graph inputs");  // the warm-up runs on the other stream
  ops::cuda::set_current_stream(capture_stream);
  // Eager runs first, largest batch first: the arena and the GEMM scratch of the capture stream
  // reach their final size before any capture sees their addresses.
  for (;;) {
    try {
      static_decode(max_bs, graph_arena);
      break;
    } catch (const ArenaFull& f) {
      check(cudaStreamSynchronize(capture_stream), "graph arena growth");
      graph_arena.reserve(std::max(f.needed * 5 / 4, graph_arena.capacity() * 2));
    }
  }
  for (auto it = bs_list.rbegin(); it != bs_list.rend(); ++it) static_decode(*it, graph_arena);
  check(cudaStreamSynchronize(capture_stream), "graph warmup");
  for (auto it = bs_list.rbegin(); it != bs_list.rend(); ++it) {
    if (hook) {
      hook->begin_capture(*it);  // a decode pass of one exchange round, as replays will be
      if (!hook->graph_safe_pass())
        throw std::runtime_error(fmt::format("decode batch {} does not fit one EP exchange (tokens per rank of "
                                             "SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK)", *it));
      routed = hook;
    }
    cudaGraph_t g = nullptr;
    check(cudaStreamBeginCapture(capture_stream, cudaStreamCaptureModeThreadLocal), "begin capture");
    try {
      static_decode(*it, graph_arena);
    } catch (...) {
      cudaStreamEndCapture(capture_stream, &g);
      if (g) cudaGraphDestroy(g);
      throw;
    }
    check(cudaStreamEndCapture(capture_stream, &g), "end capture");
    cudaGraphExec_t exec = nullptr;
    check(cudaGraphInstantiate(&exec, g, 0), "graph instantiate");
    cudaGraphDestroy(g);
    // Uploaded now rather than at the first launch, which under EP may come while peers spin.
    check(cudaGraphUpload(exec, capture_stream), "graph upload");
    graphs[*it] = exec;
  }
  check(cudaStreamSynchronize(capture_stream), "graph upload");
  ops::cuda::set_current_stream(stream);
}

void DeepseekV3GpuModel::Impl::fill_static(const std::vector<SequenceInput>& batch, int64_t bs) {
  const HostInputs h = flatten(batch, opts.page_size, bs, table_width);
  auto put = [&](Tensor& t, const std::vector<int32_t>& v) {
    check(cudaMemcpyAsync(t.raw_data(), v.data(), v.size() * 4, cudaMemcpyHostToDevice, stream), "graph inputs");
  };
  put(st.ids, h.ids);
  put(st.positions, h.positions);
  put(st.slots, h.slots);
  put(st.seq_lens, h.seq_lens);
  put(st.page_table, h.page_table);
}

int64_t DeepseekV3GpuModel::Impl::graph_bs(const std::vector<SequenceInput>& batch, const ForwardOptions& o) const {
  if (graphs.empty() || o.all_logits || o.routing || o.force_absorbed || (routed && !routed->graph_safe_pass())) return 0;
  const int64_t n = static_cast<int64_t>(batch.size());
  for (const auto& s : batch)
    if (s.tokens.size() != 1 || s.prefix_len == 0 || static_cast<int64_t>(s.page_table.size()) > table_width ||
        s.prefix_len + 1 > opts.context_length + 1)
      return 0;
  auto it = graphs.lower_bound(n);
  return it == graphs.end() ? 0 : it->first;
}

Tensor DeepseekV3GpuModel::Impl::run_graph(const std::vector<SequenceInput>& batch, int64_t bs) {
  ops::cuda::set_current_stream(stream);
  if (routed) throw_if_failed(routed->before_replay());
  fill_static(batch, bs);
  check(cudaGraphLaunch(graphs.at(bs), stream), "graph launch");
  // EP: wait for the replay before any copy into pageable host memory (download's). Such a copy
  // blocks inside the driver until the stream reaches it, and while it blocks a peer rank's
  // launches can wait on the driver too; the replay's exchange waits for those launches: a
  // deadlock until the exchange times out (seen on an H200 with two ranks replaying at once).
  // The eager path synchronises after its last exchange for the same reason (GpuEpExperts).
  if (routed) check(cudaStreamSynchronize(stream), "graph replay");
  Tensor out = download(st.logits, static_cast<int64_t>(batch.size()));
  if (routed) throw_if_failed(routed->after_replay());  // the stream is synchronised: the exchanges' report is final
  return out;
}

void DeepseekV3GpuModel::Impl::capture_logged(RoutedExperts* hook) {
  const double before = avail_gb();
  log::info("Capture cuda graph begin. This can take up to several minutes. avail mem={:.2f} GB", before);
  log::info("Capture cuda graph bs [{}]", fmt::join(opts.cuda_graph_bs, ", "));
  const auto t0 = std::chrono::steady_clock::now();
  capture_graphs(hook);
  const double after = avail_gb();
  mem.graph_gb = before - after;
  log::info("Capture cuda graph end. Time elapsed: {:.2f} s. mem usage={:.2f} GB. avail mem={:.2f} GB.",
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), mem.graph_gb, after);
  mem.avail_gb = after;
}

}  // namespace pdserve::model

#endif  // PDSERVE_HAVE_CUDA
