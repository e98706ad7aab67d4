// GPU low-latency EP dispatch/combine (moe/cuda/ep_low_latency_gpu.h) at DeepSeek-V3 decode shapes:
// hidden 7168, top-8 of 256 experts, FP8 dispatch, BF16 combine, 128 and 256 tokens per rank, beside
// device memcpys of the same bytes measured in the same run.
//
// R ranks are threads of this process, one GPU each when there are enough GPUs, else all sharing
// GPU 0 (then the figures measure one GPU's memory system, not NVLink: say so when quoting them).
// Each rank queues `iters` x (dispatch, combine) on its own stream with events between the kernels,
// so after the first iteration the kernels run back to back and host launch skew drops out; a
// kernel's time includes waiting for its peers, as in a real step. Reported: the median over
// iterations of the slowest rank. Bytes are logical, per rank: every (token, expert) row it sends
// (its own rank included): FP8 row + scales + source index for dispatch, bf16 row for combine.
// Baseline: each rank copies the same bytes per destination with cudaMemcpyAsync (peer copies across
// GPUs), all ranks at once, median of `iters`.
//
// Normal mode (prefill, bf16) for --normal-tokens (4096) per rank too: see run_normal_case.
//
// ./ep_gpu_bench [--ranks 4] [--tokens 128,256] [--normal-tokens 4096] [--iters 50] [--experts 256]
//                [--hidden 7168] [--topk 8]
#include <cuda_runtime.h>

#include <algorithm>
#include <barrier>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "moe/cuda/ep_low_latency_gpu.h"
#include "moe/cuda/ep_normal_gpu.h"
#include "tensor/dtype.h"
#include "tensor/tensor.h"

namespace {

using pdserve::DType;
using pdserve::Device;
using pdserve::Tensor;
namespace gpu = pdserve::moe::gpu;

void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

template <typename S>
void ok(const S& s, const char* what) {
  if (!s) throw std::runtime_error(std::string(what) + ": " + s.error().message());
}

struct Options {
  int ranks = 4;
  std::vector<int64_t> tokens = {128, 256};
  int64_t normal_tokens = 4096;  // 0: no normal-mode row
  int iters = 50;
  int64_t experts = 256, hidden = 7168, top_k = 8;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--ranks") o.ranks = std::stoi(next());
    else if (a == "--iters") o.iters = std::stoi(next());
    else if (a == "--experts") o.experts = std::stoll(next());
    else if (a == "--hidden") o.hidden = std::stoll(next());
    else if (a == "--topk") o.top_k = std::stoll(next());
    else if (a == "--normal-tokens") o.normal_tokens = std::stoll(next());
    else if (a == "--tokens") {
      o.tokens.clear();
      std::string v = next();
      for (size_t p = 0; p < v.size();) {
        const size_t q = v.find(',', p);
        o.tokens.push_back(std::stoll(v.substr(p, q - p)));
        p = q == std::string::npos ? v.size() : q + 1;
      }
    } else
      throw std::invalid_argument("unknown flag " + a + " (see the comment at the top of ep_gpu_bench.cpp)");
  }
  if (o.ranks < 1 || o.iters < 1 || o.tokens.empty()) throw std::invalid_argument("bad --ranks / --iters / --tokens");
  return o;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// The slowest rank per iteration, then the median over iterations.
double slowest_median(const std::vector<std::vector<double>>& v) {
  std::vector<double> worst(v[0].size(), 0.0);
  for (const auto& rank : v)
    for (size_t k = 0; k < worst.size() && k < rank.size(); ++k) worst[k] = std::max(worst[k], rank[k]);
  return median(worst);
}

// One rank's inputs: T tokens, each with top_k distinct uniform experts.
struct RankData {
  Tensor x, ids, weights, expert_out, out;
  std::vector<int64_t> rows_to;  // [R] (token, expert) rows sent to each rank
};

RankData make_rank_data(const Options& o, int R, int r, int64_t T, int64_t slab) {
  RankData d;
  std::mt19937_64 rng(1234 + static_cast<uint64_t>(r));
  Tensor x = Tensor::empty({T, o.hidden}, DType::kBF16), ids = Tensor::empty({T, o.top_k}, DType::kI32),
         w = Tensor::empty({T, o.top_k}, DType::kF32);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t i = 0; i < T * o.hidden; ++i) x.data<uint16_t>()[i] = pdserve::f32_to_bf16(nd(rng));
  d.rows_to.assign(static_cast<size_t>(R), 0);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int32_t> pick;
    while (static_cast<int64_t>(pick.size()) < o.top_k) {
      const auto e = static_cast<int32_t>(rng() % static_cast<uint64_t>(o.experts));
      if (std::find(pick.begin(), pick.end(), e) == pick.end()) pick.push_back(e);
    }
    for (int64_t j = 0; j < o.top_k; ++j) {
      ids.data<int32_t>()[t * o.top_k + j] = pick[static_cast<size_t>(j)];
      w.data<float>()[t * o.top_k + j] = 1.0f / static_cast<float>(o.top_k);
      ++d.rows_to[static_cast<size_t>(pick[static_cast<size_t>(j)] / (o.experts / R))];
    }
  }
  d.x = x.to(Device::kCuda);
  d.ids = ids.to(Device::kCuda);
  d.weights = w.to(Device::kCuda);
  d.expert_out = Tensor::empty({o.experts / R, slab, o.hidden}, DType::kBF16, Device::kCuda);
  ck(cudaMemset(d.expert_out.raw_data(), 0, d.expert_out.nbytes()), "memset");
  d.out = Tensor::empty({T, o.hidden}, DType::kBF16, Device::kCuda);
  return d;
}

struct Row {
  int64_t tokens;
  double dispatch_us, combine_us, dispatch_mb, combine_mb, copy_d_us, copy_c_us;
};

Row run_case(const Options& o, const std::vector<int>& devices, int64_t T) {
  const int R = static_cast<int>(devices.size());
  gpu::LowLatencyGpuConfig cfg;
  cfg.num_experts = o.experts;
  cfg.hidden = o.hidden;
  cfg.max_tokens_per_rank = T;
  cfg.top_k = o.top_k;
  cfg.fp8 = true;
  cfg.devices = devices;
  cfg.timeout = std::chrono::seconds(30);
  auto created = gpu::LowLatencyGpuGroup::create(cfg);
  ok(created, "creating the EP group");
  auto& group = **created;
  const int64_t slab = R * T;
  std::vector<RankData> data;
  std::vector<cudaStream_t> streams(static_cast<size_t>(R));
  for (int r = 0; r < R; ++r) {
    ck(cudaSetDevice(devices[static_cast<size_t>(r)]), "cudaSetDevice");
    data.push_back(make_rank_data(o, R, r, T, slab));
    ck(cudaStreamCreateWithFlags(&streams[static_cast<size_t>(r)], cudaStreamNonBlocking), "stream");
  }
  // Baseline destinations: per rank, a buffer as large as what it receives at most.
  const int64_t disp_row = o.hidden + 4 * (o.hidden / 128) + 4, comb_row = 2 * o.hidden;
  std::vector<Tensor> sink(static_cast<size_t>(R)), source(static_cast<size_t>(R));
  for (int r = 0; r < R; ++r) {
    ck(cudaSetDevice(devices[static_cast<size_t>(r)]), "cudaSetDevice");
    sink[static_cast<size_t>(r)] = Tensor::empty({slab * o.top_k * comb_row}, DType::kF8E4M3, Device::kCuda);
    source[static_cast<size_t>(r)] = Tensor::empty({T * o.top_k * comb_row}, DType::kF8E4M3, Device::kCuda);
  }
  ck(cudaDeviceSynchronize(), "setup");

  std::vector<std::vector<double>> disp(static_cast<size_t>(R)), comb(static_cast<size_t>(R)), cd(static_cast<size_t>(R)),
      cc(static_cast<size_t>(R));
  std::barrier sync(R);
  std::vector<std::string> errors(static_cast<size_t>(R));
  std::vector<std::thread> th;
  for (int r = 0; r < R; ++r)
    th.emplace_back([&, r] {
      try {
        const size_t i = static_cast<size_t>(r);
        ck(cudaSetDevice(devices[i]), "cudaSetDevice");
        cudaStream_t s = streams[i];
        auto& rk = group.rank(r);
        RankData& d = data[i];
        const int n = o.iters + 3;  // 3 warm-up pairs
        std::vector<cudaEvent_t> ev(static_cast<size_t>(3 * n));
        for (auto& e : ev) ck(cudaEventCreate(&e), "event");
        sync.arrive_and_wait();
        for (int it = 0; it < n; ++it) {
          ck(cudaEventRecord(ev[static_cast<size_t>(3 * it)], s), "record");
          ok(rk.dispatch(d.x, d.ids, s), "dispatch");
          ck(cudaEventRecord(ev[static_cast<size_t>(3 * it + 1)], s), "record");
          ok(rk.combine(d.expert_out, d.ids, d.weights, d.out, s), "combine");
          ck(cudaEventRecord(ev[static_cast<size_t>(3 * it + 2)], s), "record");
        }
        ok(rk.synchronize(s), "exchange");
        for (int it = 3; it < n; ++it) {
          float a = 0, b = 0;
          ck(cudaEventElapsedTime(&a, ev[static_cast<size_t>(3 * it)], ev[static_cast<size_t>(3 * it + 1)]), "elapsed");
          ck(cudaEventElapsedTime(&b, ev[static_cast<size_t>(3 * it + 1)], ev[static_cast<size_t>(3 * it + 2)]), "elapsed");
          disp[i].push_back(1000.0 * a);
          comb[i].push_back(1000.0 * b);
        }
        // Baseline: the same bytes per destination as plain copies, dispatch-sized then combine-sized.
        sync.arrive_and_wait();
        for (int it = 0; it < n; ++it) {
          ck(cudaEventRecord(ev[static_cast<size_t>(3 * it)], s), "record");
          for (int phase = 0; phase < 2; ++phase) {
            const int64_t row = phase == 0 ? disp_row : comb_row;
            int64_t off = 0;
            for (int dst = 0; dst < R; ++dst) {
              const int64_t bytes = d.rows_to[static_cast<size_t>(dst)] * row;
              ck(cudaMemcpyAsync(static_cast<char*>(sink[static_cast<size_t>(dst)].raw_data()) + r * T * o.top_k * row,
                                 static_cast<char*>(source[i].raw_data()) + off, static_cast<size_t>(bytes), cudaMemcpyDefault, s),
                 "memcpy");
              off += bytes;
            }
            ck(cudaEventRecord(ev[static_cast<size_t>(3 * it + 1 + phase)], s), "record");
          }
        }
        ck(cudaStreamSynchronize(s), "baseline");
        for (int it = 3; it < n; ++it) {
          float a = 0, b = 0;
          ck(cudaEventElapsedTime(&a, ev[static_cast<size_t>(3 * it)], ev[static_cast<size_t>(3 * it + 1)]), "elapsed");
          ck(cudaEventElapsedTime(&b, ev[static_cast<size_t>(3 * it + 1)], ev[static_cast<size_t>(3 * it + 2)]), "elapsed");
          cd[i].push_back(1000.0 * a);
          cc[i].push_back(1000.0 * b);
        }
        for (auto& e : ev) cudaEventDestroy(e);
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
        group.abort(std::string("rank ") + std::to_string(r) + " failed: " + e.what());
      }
    });
  for (auto& t : th) t.join();
  for (int r = 0; r < R; ++r)
    if (!errors[static_cast<size_t>(r)].empty()) throw std::runtime_error("rank " + std::to_string(r) + ": " + errors[static_cast<size_t>(r)]);
  for (cudaStream_t s : streams) cudaStreamDestroy(s);

  double rows = 0;
  for (const RankData& d : data)
    for (int64_t n : d.rows_to) rows += static_cast<double>(n);
  rows /= R;
  return Row{T, slowest_median(disp), slowest_median(comb), rows * disp_row / 1e6, rows * comb_row / 1e6, slowest_median(cd),
             slowest_median(cc)};
}

// Normal mode (prefill): bf16 rows, each token once per destination rank; received() (a host
// synchronisation, as in DeepEP) between dispatch and combine, so host gaps between ranks show up
// in the kernel times. Bytes per rank: dispatch (token, rank) rows x (bf16 row + K ids + K weights +
// source index), combine the same rows x bf16 row.
Row run_normal_case(const Options& o, const std::vector<int>& devices, int64_t T) {
  const int R = static_cast<int>(devices.size());
  gpu::NormalGpuConfig cfg;
  cfg.num_experts = o.experts;
  cfg.hidden = o.hidden;
  cfg.max_tokens_per_rank = T;
  cfg.top_k = o.top_k;
  cfg.devices = devices;
  cfg.timeout = std::chrono::seconds(30);
  auto created = gpu::NormalGpuGroup::create(cfg);
  ok(created, "creating the normal-mode EP group");
  auto& group = **created;
  const int64_t G = o.experts / R;
  std::vector<RankData> data;
  std::vector<std::vector<int64_t>> tokens_to(static_cast<size_t>(R), std::vector<int64_t>(static_cast<size_t>(R), 0));
  std::vector<Tensor> partial(static_cast<size_t>(R)), sink(static_cast<size_t>(R)), source(static_cast<size_t>(R));
  std::vector<cudaStream_t> streams(static_cast<size_t>(R));
  const int64_t disp_row = 2 * o.hidden + 8 * o.top_k + 4, comb_row = 2 * o.hidden;
  for (int r = 0; r < R; ++r) {
    const size_t i = static_cast<size_t>(r);
    ck(cudaSetDevice(devices[i]), "cudaSetDevice");
    data.push_back(make_rank_data(o, R, r, T, 1));
    Tensor ids = data.back().ids.to(Device::kCpu);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<bool> hit(static_cast<size_t>(R), false);
      for (int64_t j = 0; j < o.top_k; ++j) hit[static_cast<size_t>(ids.data<int32_t>()[t * o.top_k + j] / G)] = true;
      for (int d = 0; d < R; ++d) tokens_to[i][static_cast<size_t>(d)] += hit[static_cast<size_t>(d)] ? 1 : 0;
    }
    partial[i] = Tensor::empty({R * T, o.hidden}, DType::kBF16, Device::kCuda);
    ck(cudaMemset(partial[i].raw_data(), 0, partial[i].nbytes()), "memset");
    sink[i] = Tensor::empty({R * T * disp_row}, DType::kF8E4M3, Device::kCuda);
    // A token goes to every rank owning one of its experts: up to R rows of it leave this rank.
    source[i] = Tensor::empty({R * T * disp_row}, DType::kF8E4M3, Device::kCuda);
    ck(cudaStreamCreateWithFlags(&streams[i], cudaStreamNonBlocking), "stream");
  }
  ck(cudaDeviceSynchronize(), "setup");
  std::vector<std::vector<double>> disp(static_cast<size_t>(R)), comb(static_cast<size_t>(R)), cd(static_cast<size_t>(R)),
      cc(static_cast<size_t>(R));
  std::barrier sync(R);
  std::vector<std::string> errors(static_cast<size_t>(R));
  std::vector<std::thread> th;
  const int n = std::max(3, o.iters / 5) + 2;  // the big rows need fewer iterations; 2 warm-up
  for (int r = 0; r < R; ++r)
    th.emplace_back([&, r] {
      try {
        const size_t i = static_cast<size_t>(r);
        ck(cudaSetDevice(devices[i]), "cudaSetDevice");
        cudaStream_t s = streams[i];
        auto& rk = group.rank(r);
        RankData& d = data[i];
        cudaEvent_t e0, e1, e2, e3;
        for (cudaEvent_t* e : {&e0, &e1, &e2, &e3}) ck(cudaEventCreate(e), "event");
        sync.arrive_and_wait();
        for (int it = 0; it < n; ++it) {
          ck(cudaEventRecord(e0, s), "record");
          ok(rk.dispatch(d.x, d.ids, d.weights, s), "normal dispatch");
          ck(cudaEventRecord(e1, s), "record");
          ok(rk.received(s), "normal received");
          ck(cudaEventRecord(e2, s), "record");
          ok(rk.combine(partial[i], d.ids, d.out, s), "normal combine");
          ck(cudaEventRecord(e3, s), "record");
          ok(rk.synchronize(s), "normal exchange");
          if (it < 2) continue;
          float a = 0, b = 0;
          ck(cudaEventElapsedTime(&a, e0, e1), "elapsed");
          ck(cudaEventElapsedTime(&b, e2, e3), "elapsed");
          disp[i].push_back(1000.0 * a);
          comb[i].push_back(1000.0 * b);
        }
        sync.arrive_and_wait();
        for (int it = 0; it < n; ++it) {
          for (int phase = 0; phase < 2; ++phase) {
            const int64_t row = phase == 0 ? disp_row : comb_row;
            ck(cudaEventRecord(e0, s), "record");
            int64_t off = 0;
            for (int dst = 0; dst < R; ++dst) {
              const int64_t bytes = tokens_to[i][static_cast<size_t>(dst)] * row;
              ck(cudaMemcpyAsync(static_cast<char*>(sink[static_cast<size_t>(dst)].raw_data()) + r * T * row,
                                 static_cast<char*>(source[i].raw_data()) + off, static_cast<size_t>(bytes), cudaMemcpyDefault, s),
                 "memcpy");
              off += bytes;
            }
            ck(cudaEventRecord(e1, s), "record");
            ck(cudaStreamSynchronize(s), "baseline");
            float a = 0;
            ck(cudaEventElapsedTime(&a, e0, e1), "elapsed");
            if (it >= 2) (phase == 0 ? cd : cc)[i].push_back(1000.0 * a);
          }
        }
        for (cudaEvent_t e : {e0, e1, e2, e3}) cudaEventDestroy(e);
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
        group.abort(std::string("rank ") + std::to_string(r) + " failed: " + e.what());
      }
    });
  for (auto& t : th) t.join();
  for (int r = 0; r < R; ++r)
    if (!errors[static_cast<size_t>(r)].empty()) throw std::runtime_error("rank " + std::to_string(r) + ": " + errors[static_cast<size_t>(r)]);
  for (cudaStream_t s : streams) cudaStreamDestroy(s);
  double rows = 0;
  for (const auto& v : tokens_to)
    for (int64_t c : v) rows += static_cast<double>(c);
  rows /= R;
  return Row{T, slowest_median(disp), slowest_median(comb), rows * disp_row / 1e6, rows * comb_row / 1e6, slowest_median(cd),
             slowest_median(cc)};
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options o = parse(argc, argv);
    int n = 0;
    ck(cudaGetDeviceCount(&n), "cudaGetDeviceCount");
    if (n == 0) throw std::runtime_error("no CUDA device");
    const std::vector<int> devices = gpu::default_devices(o.ranks, n);
    cudaDeviceProp prop{};
    ck(cudaGetDeviceProperties(&prop, 0), "properties");
    std::printf("# ep_gpu_bench: %s x %d visible; %d ranks %s; hidden %lld, top-%lld of %lld experts; low-latency: FP8 dispatch, BF16 combine; normal: bf16; %d iterations\n",
                prop.name, n, o.ranks, n >= o.ranks ? "one per GPU (peer access)" : "sharing GPU 0 (no NVLink involved)",
                static_cast<long long>(o.hidden), static_cast<long long>(o.top_k), static_cast<long long>(o.experts), o.iters);
    std::printf("| mode | tokens/rank | dispatch µs | dispatch GB/s | combine µs | combine GB/s | dispatch MB/rank | combine MB/rank | memcpy of dispatch bytes µs (GB/s) | memcpy of combine bytes µs (GB/s) |\n");
    std::printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    auto print = [](const char* mode, const Row& w) {
      std::printf("| %s | %lld | %.1f | %.1f | %.1f | %.1f | %.2f | %.2f | %.1f (%.1f) | %.1f (%.1f) |\n", mode,
                  static_cast<long long>(w.tokens), w.dispatch_us, w.dispatch_mb * 1e6 / (w.dispatch_us * 1e3), w.combine_us,
                  w.combine_mb * 1e6 / (w.combine_us * 1e3), w.dispatch_mb, w.combine_mb, w.copy_d_us,
                  w.dispatch_mb * 1e6 / (w.copy_d_us * 1e3), w.copy_c_us, w.combine_mb * 1e6 / (w.copy_c_us * 1e3));
      std::fflush(stdout);
    };
    for (int64_t T : o.tokens) print("low_latency (fp8)", run_case(o, devices, T));
    if (o.normal_tokens > 0) print("normal (bf16)", run_normal_case(o, devices, o.normal_tokens));
    std::printf("# DeepEP published (H800, over NVLink): low-latency EP8, 128 tokens: 77 µs dispatch / 114 µs combine; "
                "normal intranode ~153 GB/s.\n");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ep_gpu_bench: %s\n", e.what());
    return 1;
  }
}
