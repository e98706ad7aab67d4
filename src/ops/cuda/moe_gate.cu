#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "ops/cuda/cuda_common.h"
#include "ops/cuda/moe_gate.h"

namespace pdserve::ops::cuda {

namespace {

constexpr int kWarps = 4;  // tokens per block
constexpr int kMaxExperts = 1024;

// Butterfly arg-max over the warp: larger value first, ties to the lower index. Every lane ends with
// the same (v, i) because the order is total (indices are distinct).
__device__ __forceinline__ void warp_best(float& v, int& i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (ov > v || (ov == v && oi < i)) v = ov, i = oi;
  }
}

// One warp per token; per warp 2 * e floats of shared memory: s (sigmoid) and sc (selection score).
__global__ void __launch_bounds__(kWarps * 32) moe_gate_kernel(const float* logits, long long ld, const float* bias,
                                                               int n, int e, int n_group, int topk_group, int top_k,
                                                               bool norm, float scaling, int* ids, float* weights) {
  extern __shared__ float smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const long long t = static_cast<long long>(blockIdx.x) * kWarps + warp;
  if (t >= n) return;  // whole warp; no block-wide barrier follows
  float* s = smem + warp * 2 * e;
  float* sc = s + e;
  const float* lr = logits + t * ld;
  for (int j = lane; j < e; j += 32) {
    const float sv = 1.0f / (1.0f + expf(-lr[j]));
    const float v = bias ? sv + bias[j] : sv;
    s[j] = sv;
    sc[j] = isnan(v) ? -INFINITY : v;
  }
  __syncwarp();

  // Group score = sum of the two largest sc in the group, found in the CPU op's scan order.
  const int per = e / n_group;
  float gscore = -INFINITY;
  if (lane < n_group) {
    float a = -INFINITY, b = -INFINITY;
    const float* g = sc + lane * per;
    for (int j = 0; j < per; ++j) {
      const float v = g[j];
      if (v > a) {
        b = a;
        a = v;
      } else if (v > b) {
        b = v;
      }
    }
    gscore = a + b;
    if (isnan(gscore)) gscore = -INFINITY;
  }
  unsigned keep = 0;
  for (int r = 0; r < topk_group; ++r) {
    const bool cand = lane < n_group && !((keep >> lane) & 1u);
    float v = cand ? gscore : -INFINITY;
    int i = cand ? lane : INT_MAX;
    warp_best(v, i);
    keep |= 1u << i;  // i < n_group: a candidate lane always beats a non-candidate
  }
  for (int j = lane; j < e; j += 32)
    if (!((keep >> (j / per)) & 1u)) sc[j] = -INFINITY;
  __syncwarp();

  // Top-k experts by repeated arg-max; a taken expert is marked NaN so it never wins again, while
  // -inf (dropped groups) still can once nothing finite is left.
  int my_id = 0;
  for (int r = 0; r < top_k; ++r) {
    float v = -INFINITY;
    int i = INT_MAX;
    for (int j = lane; j < e; j += 32) {
      const float x = sc[j];
      if (!isnan(x) && (i == INT_MAX || x > v)) v = x, i = j;
    }
    warp_best(v, i);
    if (lane == r) my_id = i;
    __syncwarp();
    if (lane == 0) sc[i] = NAN;
    __syncwarp();
  }

  const float my_w = lane < top_k ? s[my_id] : 0.0f;
  float sum = 0.0f;  // in selection order, as the CPU op sums
  for (int r = 0; r < top_k; ++r) sum += __shfl_sync(0xffffffffu, my_w, r);
  if (lane < top_k) {
    float w = my_w;
    if (norm) w = w / (sum + 1e-20f);
    w = w * scaling;
    ids[t * top_k + lane] = my_id;
    weights[t * top_k + lane] = w;
  }
}

void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument("moe_gate: " + msg);
}

}  // namespace

void moe_gate(const Tensor& router_logits, const Tensor& correction_bias, const MoeGateParams& p, Tensor& topk_ids,
              Tensor& topk_weights) {
  const int64_t e = p.n_routed_experts;
  require(e > 0 && e <= kMaxExperts, "the device gate supports up to " + std::to_string(kMaxExperts) + " experts");
  require(p.n_group > 0 && p.n_group <= 32 && e % p.n_group == 0 && e / p.n_group >= 2,
          "the device gate needs 1..32 groups of >= 2 experts");
  require(p.topk_group > 0 && p.topk_group <= p.n_group, "topk_group must be in [1, n_group]");
  require(p.top_k > 0 && p.top_k <= 32 && p.top_k <= p.topk_group * (e / p.n_group),
          "the device gate supports top_k in [1, min(32, topk_group * experts_per_group)]");
  require(router_logits.defined() && router_logits.device() == Device::kCuda && router_logits.dtype() == DType::kF32 &&
              router_logits.dim() == 2 && router_logits.size(1) == e && (e == 1 || router_logits.strides()[1] == 1),
          "router_logits must be a device f32 [n, E] with a unit-stride last dim");
  if (correction_bias.defined())
    require(correction_bias.device() == Device::kCuda && correction_bias.dtype() == DType::kF32 &&
                correction_bias.numel() == e && correction_bias.is_contiguous(),
            "correction_bias must be a contiguous device f32 [E]");
  const int64_t n = router_logits.size(0);
  require(n < (1LL << 31), "too many tokens");
  require(topk_ids.defined() && topk_ids.device() == Device::kCuda && topk_ids.dtype() == DType::kI32 &&
              topk_ids.numel() == n * p.top_k && topk_ids.is_contiguous(),
          "topk_ids must be a contiguous device i32 [n, top_k]");
  require(topk_weights.defined() && topk_weights.device() == Device::kCuda && topk_weights.dtype() == DType::kF32 &&
              topk_weights.numel() == n * p.top_k && topk_weights.is_contiguous(),
          "topk_weights must be a contiguous device f32 [n, top_k]");
  if (n == 0) return;
  const size_t smem = kWarps * 2 * static_cast<size_t>(e) * sizeof(float);
  moe_gate_kernel<<<ceil_div(n, kWarps), kWarps * 32, smem, current_stream()>>>(
      router_logits.data<float>(), router_logits.strides()[0],
      correction_bias.defined() ? correction_bias.data<float>() : nullptr, static_cast<int>(n), static_cast<int>(e),
      static_cast<int>(p.n_group), static_cast<int>(p.topk_group), static_cast<int>(p.top_k), p.norm_topk_prob,
      p.routed_scaling_factor, topk_ids.data<int>(), topk_weights.data<float>());
  check_launch("moe_gate");
}

}  // namespace pdserve::ops::cuda
