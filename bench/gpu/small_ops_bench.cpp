// Small fused kernels at DeepSeek-V3 decode shapes (one EP72 rank: 256 tokens; 4 local experts x
// 512 tokens for the expert activation; sampling over the 129280-token vocabulary), against the
// device copy bandwidth measured in the same run.
//
// Each op is timed two ways: "hot" = 200 back-to-back launches (inputs stay in L2, as they usually
// are in a real layer where the previous kernel just wrote them), and "cold" = the median of 50
// single launches each after a 256 MiB write that evicts L2 (DRAM-bound). Bytes are the minimum
// traffic of the op (each input read once, each output written once); GB/s = bytes / time; the
// last column is cold GB/s as a fraction of the copy bandwidth (read + write of a 1 GiB copy).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "ops/cuda/cuda_common.h"
#include "ops/cuda/elementwise.h"
#include "ops/cuda/norm.h"
#include "ops/cuda/rope.h"
#include "ops/elementwise.h"
#include "ops/moe_gate.h"
#include "ops/rope.h"
#include "ops/sampling.h"
#include "tensor/dtype.h"
#include "tensor/tensor.h"

namespace {

using pdserve::DType;
using pdserve::Device;
using pdserve::Tensor;
using pdserve::Weight;
namespace ops = pdserve::ops;

void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

cudaStream_t stream() { return ops::cuda::current_stream(); }

// Random values in dtype dt (f32 normal(0, scale) converted), uploaded.
Tensor random_device(const pdserve::Shape& shape, DType dt, uint32_t seed, float scale = 1.0f) {
  Tensor f = Tensor::empty(shape, DType::kF32);
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  for (int64_t i = 0; i < f.numel(); ++i) f.data<float>()[i] = nd(rng);
  if (dt == DType::kF32) return f.to(Device::kCuda);
  Tensor c = Tensor::empty(shape, dt);
  pdserve::convert_from_f32(dt, f.data<float>(), c.raw_data(), static_cast<size_t>(f.numel()));
  return c.to(Device::kCuda);
}

template <typename T>
Tensor filled_device(const pdserve::Shape& shape, DType dt, T value) {
  Tensor h = Tensor::empty(shape, dt);
  std::fill(h.data<T>(), h.data<T>() + h.numel(), value);
  return h.to(Device::kCuda);
}

struct Timing {
  double hot_us, cold_us;
};

class Bench {
 public:
  Bench() { ck(cudaMalloc(&flush_, kFlushBytes), "cudaMalloc flush buffer"); }
  ~Bench() { cudaFree(flush_); }
  Bench(const Bench&) = delete;
  Bench& operator=(const Bench&) = delete;

  Timing time(const std::function<void()>& f) {
    cudaEvent_t a, b;
    ck(cudaEventCreate(&a), "event");
    ck(cudaEventCreate(&b), "event");
    for (int i = 0; i < 5; ++i) f();
    ck(cudaEventRecord(a, stream()), "record");
    for (int i = 0; i < kHotIters; ++i) f();
    ck(cudaEventRecord(b, stream()), "record");
    ck(cudaEventSynchronize(b), "sync");
    float ms = 0;
    ck(cudaEventElapsedTime(&ms, a, b), "elapsed");
    const double hot = 1000.0 * ms / kHotIters;
    std::vector<cudaEvent_t> ev(2 * kColdIters);
    for (auto& e : ev) ck(cudaEventCreate(&e), "event");
    for (int i = 0; i < kColdIters; ++i) {
      ck(cudaMemsetAsync(flush_, i & 0xFF, kFlushBytes, stream()), "flush");
      ck(cudaEventRecord(ev[2 * i], stream()), "record");
      f();
      ck(cudaEventRecord(ev[2 * i + 1], stream()), "record");
    }
    ck(cudaStreamSynchronize(stream()), "sync");
    std::vector<double> cold(kColdIters);
    for (int i = 0; i < kColdIters; ++i) {
      ck(cudaEventElapsedTime(&ms, ev[2 * i], ev[2 * i + 1]), "elapsed");
      cold[i] = 1000.0 * ms;
    }
    for (auto& e : ev) cudaEventDestroy(e);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    std::nth_element(cold.begin(), cold.begin() + kColdIters / 2, cold.end());
    return {hot, cold[kColdIters / 2]};
  }

  // Device-to-device copy of 1 GiB: bytes read + written per second.
  double copy_gbps() {
    const size_t bytes = size_t{1} << 30;
    void *src = nullptr, *dst = nullptr;
    ck(cudaMalloc(&src, bytes), "cudaMalloc copy src");
    ck(cudaMalloc(&dst, bytes), "cudaMalloc copy dst");
    ck(cudaMemsetAsync(src, 1, bytes, stream()), "memset");
    const Timing t = time([&] { ck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()), "copy"); });
    cudaFree(src);
    cudaFree(dst);
    return 2.0 * bytes / (t.hot_us * 1e3);
  }

 private:
  static constexpr size_t kFlushBytes = size_t{256} << 20;
  static constexpr int kHotIters = 200, kColdIters = 50;
  void* flush_ = nullptr;
};

struct Row {
  std::string op, shape;
  double bytes;
  Timing t;
};

}  // namespace

int main() {
  try {
    int dev = 0;
    ck(cudaGetDevice(&dev), "cudaGetDevice");
    cudaDeviceProp prop{};
    ck(cudaGetDeviceProperties(&prop, dev), "cudaGetDeviceProperties");
    std::printf("device: %s, %d SMs, L2 %.0f MiB, %.1f GiB\n", prop.name, prop.multiProcessorCount,
                prop.l2CacheSize / 1048576.0, prop.totalGlobalMem / 1073741824.0);
    Bench bench;
    const double copy = bench.copy_gbps();
    std::printf("device copy (1 GiB D2D, read + write): %.0f GB/s\n\n", copy);

    const int64_t T = 256, H = 7168, heads = 128, V = 129280;
    std::vector<Row> rows;
    auto add = [&](std::string op, std::string shape, double bytes, const std::function<void()>& f) {
      rows.push_back({std::move(op), std::move(shape), bytes, bench.time(f)});
    };

    // RMSNorm (bf16 in/out, bf16 weight) and the fused FP8 variant.
    Tensor x = random_device({T, H}, DType::kBF16, 1), w = random_device({H}, DType::kBF16, 2);
    Tensor y = Tensor::empty({T, H}, DType::kBF16, Device::kCuda);
    add("rms_norm bf16", "256x7168", 2.0 * T * H * 2 + H * 2, [&] { ops::rms_norm(x, w, 1e-6f, y); });
    Tensor q8 = Tensor::empty({T, H}, DType::kF8E4M3, Device::kCuda);
    Tensor s8 = Tensor::empty({H / 128, T}, DType::kF32, Device::kCuda);
    add("rms_norm+fp8 quant", "256x7168", T * H * 2.0 + T * H + H / 128 * T * 4.0 + H * 2,
        [&] { ops::cuda::rms_norm_quant_fp8(x, w, 1e-6f, q8, s8); });
    Tensor r = random_device({T, H}, DType::kBF16, 3);
    add("add_inplace bf16", "256x7168", 3.0 * T * H * 2, [&] { ops::add_inplace(y, r); });

    // RoPE on q [T, 128, 192] (rope span at 128) and the fused rope + KV-pool write.
    ops::RopeParams rp;
    rp.type = "yarn", rp.factor = 40.0, rp.mscale = 1.0, rp.mscale_all_dim = 1.0;
    const ops::RopeTable table = ops::make_rope_table(rp);
    Tensor q = random_device({T, heads, 192}, DType::kBF16, 4);
    std::vector<int32_t> pos_h(T), slot_h(T);
    for (int64_t i = 0; i < T; ++i) pos_h[i] = static_cast<int32_t>(2000 + i), slot_h[i] = static_cast<int32_t>(i * 64 + 31);
    Tensor pos = Tensor::empty({T}, DType::kI32), slots = Tensor::empty({T}, DType::kI32);
    std::memcpy(pos.data<int32_t>(), pos_h.data(), T * 4);
    std::memcpy(slots.data<int32_t>(), slot_h.data(), T * 4);
    pos = pos.to(Device::kCuda), slots = slots.to(Device::kCuda);
    const double rope_bytes = 2.0 * T * heads * 64 * 2;
    add("rope q (128 heads)", "256x128x64 of 192", rope_bytes, [&] { ops::apply_rope_interleaved(q, 128, pos, table); });
    Tensor kv = random_device({T, 576}, DType::kBF16, 5);
    Tensor lat = kv.slice(1, 0, 512), kpe = kv.slice(1, 512, 576);
    Tensor pool = Tensor::empty({T, 64, 576}, DType::kBF16, Device::kCuda);
    add("rope q + k_pe + kv write", "256 tok, pool bf16", rope_bytes + 2.0 * T * 576 * 2,
        [&] { ops::cuda::rope_kv_write(q, 128, lat, kpe, pos, table, slots, pool); });

    // noaux_tc gate, V3 config.
    Tensor logits_g = random_device({T, 256}, DType::kF32, 6, 2.0f), bias = random_device({256}, DType::kF32, 7, 0.1f);
    Tensor ids = Tensor::empty({T, 8}, DType::kI32, Device::kCuda), wts = Tensor::empty({T, 8}, DType::kF32, Device::kCuda);
    ops::MoeGateParams gp;
    add("moe_gate noaux_tc", "256x256 -> top8", T * 256 * 4.0 + 256 * 4 + T * 8 * 8.0,
        [&] { ops::moe_gate(logits_g, bias, gp, ids, wts); });

    // Expert activation: 4 local experts x 512 tokens, intermediate 2048 (gate|up from one GEMM).
    const int64_t M = 4 * 512, N = 2048;
    Tensor gu = random_device({M, 2 * N}, DType::kBF16, 8);
    Tensor g = random_device({M, N}, DType::kBF16, 9), u = random_device({M, N}, DType::kBF16, 10);
    Tensor act = Tensor::empty({M, N}, DType::kBF16, Device::kCuda);
    add("silu_mul bf16", "2048x2048", 3.0 * M * N * 2, [&] { ops::silu_mul(g, u, act); });
    Tensor aq = Tensor::empty({M, N}, DType::kF8E4M3, Device::kCuda), as = Tensor::empty({N / 128, M}, DType::kF32, Device::kCuda);
    Tensor gv = gu.slice(1, 0, N), uv = gu.slice(1, N, 2 * N);
    add("silu_mul+fp8 quant", "2048x2048 (gate|up)", 2.0 * M * N * 2 + M * N + N / 128 * M * 4.0,
        [&] { ops::cuda::silu_mul_quant_fp8(gv, uv, aq, as); });

    // Embedding from the bf16 table.
    Weight emb;
    emb.weight = Tensor::empty({V, H}, DType::kBF16, Device::kCuda);
    ck(cudaMemsetAsync(emb.weight.raw_data(), 0x3F, emb.weight.nbytes(), stream()), "memset table");  // 0.746
    Tensor tok = Tensor::empty({T}, DType::kI32);
    for (int64_t i = 0; i < T; ++i) tok.data<int32_t>()[i] = static_cast<int32_t>((i * 7919) % V);
    tok = tok.to(Device::kCuda);
    Tensor hid = Tensor::empty({T, H}, DType::kBF16, Device::kCuda);
    add("embedding bf16", "256 of 129280x7168", 2.0 * T * H * 2, [&] { ops::embedding(tok, emb, hid); });

    // Sampling over the vocabulary (f32 logits, as the lm_head writes them).
    Tensor logits = random_device({T, V}, DType::kF32, 11, 3.0f);
    Tensor out_ids = Tensor::empty({T}, DType::kI32, Device::kCuda);
    auto batch = [&](float temp, float top_p, int32_t top_k) {
      ops::SamplingBatch sb;
      sb.temperature = filled_device<float>({T}, DType::kF32, temp);
      sb.top_p = filled_device<float>({T}, DType::kF32, top_p);
      sb.top_k = filled_device<int32_t>({T}, DType::kI32, top_k);
      sb.min_p = filled_device<float>({T}, DType::kF32, 0.0f);
      sb.seed = filled_device<int64_t>({T}, DType::kI64, 1234);
      sb.offset = filled_device<int64_t>({T}, DType::kI64, 7);
      return sb;
    };
    const double lbytes = static_cast<double>(T) * V * 4;
    const ops::SamplingBatch greedy = batch(0.0f, 1.0f, -1), temp = batch(0.7f, 1.0f, -1),
                             filt = batch(0.7f, 0.95f, 50);
    add("sample greedy (1 pass)", "256x129280 f32", lbytes, [&] { ops::sample_batch(logits, greedy, out_ids); });
    add("sample T=0.7 (2 passes)", "256x129280 f32", lbytes, [&] { ops::sample_batch(logits, temp, out_ids); });
    add("sample T=.7 k=50 p=.95 (4)", "256x129280 f32", lbytes, [&] { ops::sample_batch(logits, filt, out_ids); });
    ck(cudaStreamSynchronize(stream()), "final sync");

    std::printf("%-28s %-22s %9s %9s %9s %9s %9s %8s\n", "op", "shape", "MB", "hot us", "hot GB/s", "cold us",
                "cold GB/s", "of copy");
    for (const Row& row : rows) {
      const double hot_gbps = row.bytes / (row.t.hot_us * 1e3), cold_gbps = row.bytes / (row.t.cold_us * 1e3);
      std::printf("%-28s %-22s %9.2f %9.2f %9.0f %9.2f %9.0f %7.0f%%\n", row.op.c_str(), row.shape.c_str(),
                  row.bytes / 1e6, row.t.hot_us, hot_gbps, row.t.cold_us, cold_gbps, 100.0 * cold_gbps / copy);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "small_ops_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
