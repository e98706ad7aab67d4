// What the one-layer benchmarks (layer_bench: decode, prefill_layer_bench: prefill) share beyond
// bench_util.cuh: a captured graph with replay timing, the ceilings measured in the same run
// through pdserve's own GEMM engine, and the cost and label helpers of their op tables.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bench_util.cuh"
#include "ops/cuda/cuda_common.h"
#include "ops/cuda/linear.h"
#include "ops/quant.h"
#include "tensor/tensor.h"

namespace pdserve::bench {
namespace {  // each benchmark is one translation unit

using ops::cuda::check;

void fail(const std::string& what) { throw std::runtime_error(what); }

Tensor i32_device(const std::vector<int32_t>& v, const Shape& shape) {
  Tensor h = Tensor::empty(shape, DType::kI32);
  if (static_cast<int64_t>(v.size()) != h.numel()) fail("i32_device: size does not match the shape");
  std::copy(v.begin(), v.end(), h.data<int32_t>());
  return h.to(Device::kCuda);
}

// ---- timing (bench_util.cuh: median, Events, time_eager) ----

// A captured graph, destroyed with its owner (after the last replay: nothing is freed while one runs).
struct Graph {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  Graph() = default;
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  ~Graph() {
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
  }
  // `reps` calls of f captured from s. f must have run once eagerly with these shapes: the GEMM
  // scratch may only grow outside a capture (ops/cuda/linear.h), as a model warms up before capturing.
  void capture(cudaStream_t s, int reps, const std::function<void()>& f) {
    check(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
    try {
      for (int i = 0; i < reps; ++i) f();
    } catch (...) {
      cudaGraph_t g = nullptr;
      cudaStreamEndCapture(s, &g);
      if (g != nullptr) cudaGraphDestroy(g);
      throw;
    }
    check(cudaStreamEndCapture(s, &graph), "cudaStreamEndCapture");
    check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
  }
  void launch(cudaStream_t s) const { check(cudaGraphLaunch(exec, s), "cudaGraphLaunch"); }
  // Milliseconds per replay: events around each launch, median of `samples` after 3 warm-ups.
  double replay_ms(cudaStream_t s, int samples) const {
    Events ev;
    std::vector<double> t;
    for (int i = 0; i < samples + 3; ++i) {
      check(cudaEventRecord(ev.a, s), "cudaEventRecord");
      launch(s);
      check(cudaEventRecord(ev.b, s), "cudaEventRecord");
      const double ms = ev.ms();
      if (i >= 3) t.push_back(ms);
    }
    return median(t);
  }
  // (nodes, kernel nodes): how many launches one replay holds.
  std::pair<size_t, size_t> nodes() const {
    size_t n = 0;
    check(cudaGraphGetNodes(graph, nullptr, &n), "cudaGraphGetNodes");
    std::vector<cudaGraphNode_t> v(n);
    if (n > 0) check(cudaGraphGetNodes(graph, v.data(), &n), "cudaGraphGetNodes");
    size_t kernels = 0;
    for (cudaGraphNode_t node : v) {
      cudaGraphNodeType type{};
      check(cudaGraphNodeGetType(node, &type), "cudaGraphNodeGetType");
      kernels += type == cudaGraphNodeTypeKernel;
    }
    return {n, kernels};
  }
};

// ---- ceilings, measured in this run ----

struct Ceilings {
  double copy_tbs = 0, fp8_tflops = 0, bf16_tflops = 0;
};

Ceilings measure_ceilings(cudaStream_t s) {
  Ceilings c;
  c.copy_tbs = copy_tbs(s);
  // pdserve's own GEMM engine (ops/cuda/linear.h) at 8192^3: FP8 block-scaled on pre-quantized x
  // (the ceiling of the FP8 rows), and BF16 (the ceiling of the bf16 router and the MLA core).
  const int64_t m = 8192, n = 8192, k = 8192;
  const double flops = 2.0 * m * n * k;
  Tensor x = device_tensor({m, k}, DType::kBF16, 901), y = Tensor::empty({m, n}, DType::kBF16, Device::kCuda);
  {
    Tensor q = Tensor::empty({m, k}, DType::kF8E4M3, Device::kCuda), sc = Tensor::empty({k / 128, m}, DType::kF32, Device::kCuda);
    ops::quantize_fp8_per_token_group(x, q, sc);
    const Weight w = device_weight(n, k, DType::kF8E4M3, 902);
    const ops::cuda::detail::Fp8Operand a{q.data<uint8_t>(), sc.data<float>(), m, k};
    const double ms = time_eager(s, [&] { ops::cuda::detail::fp8_gemm(a, w, y.raw_data(), DType::kBF16, n); });
    c.fp8_tflops = flops / (ms * 1e-3) / 1e12;
  }
  {
    const Weight w = device_weight(n, k, DType::kBF16, 903);
    const double ms = time_eager(s, [&] { ops::cuda::detail::dense_gemm(x.raw_data(), m, w, y.raw_data(), DType::kBF16, n); });
    c.bf16_tflops = flops / (ms * 1e-3) / 1e12;
  }
  check(cudaStreamSynchronize(s), "ceilings");
  return c;
}

// FLOPs and minimum bytes of y[m, n] = x[m, k] W^T over `groups` weights of [n, k] (fp8 with
// their block scales, or bf16).
std::pair<double, double> gemm_cost(double m, double n, double k, double x_elem, double y_elem, bool fp8, double groups = 1) {
  const double w = fp8 ? n * k + std::ceil(n / 128) * std::ceil(k / 128) * 4 : 2 * n * k;
  return {2 * m * n * k, groups * w + m * k * x_elem + m * n * y_elem};
}

std::string dims(std::initializer_list<int64_t> v) {
  std::string s;
  for (int64_t x : v) s += (s.empty() ? "" : "x") + std::to_string(x);
  return s;
}

}  // namespace
}  // namespace pdserve::bench
