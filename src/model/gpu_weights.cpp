#include "model/gpu_weights.h"

#include <cstring>
#include <stdexcept>
#include <string>

#if defined(PDSERVE_HAVE_CUDA)
#include <cuda_runtime.h>

#include "ops/cuda/cuda_common.h"
#endif

#include "ops/grouped_gemm.h"

namespace pdserve::model {
namespace {

Weight to_bf16(const Weight& w) {
  Tensor f = w.to_f32();
  Tensor b = Tensor::empty(f.shape(), DType::kBF16);
  convert_from_f32(DType::kBF16, f.data<float>(), b.raw_data(), static_cast<size_t>(f.numel()));
  return Weight{b, Tensor()};
}

// The host form of a weight as the device keeps it: cuBLASLt's block-scaled FP8 GEMM needs whole
// 128-wide K blocks and N % 16 == 0 (real DeepSeek shapes always are); other fp8 weights (tiny
// test models) run as bf16.
Weight device_form(const Weight& w) {
  if (w.is_block_fp8() && (w.cols() % 128 != 0 || w.rows() % 16 != 0)) return to_bf16(w);
  return w;
}

// [a; b] by rows (host tensors of one dtype and width).
Tensor cat_rows(const Tensor& a, const Tensor& b) {
  const Tensor ac = a.is_contiguous() ? a : a.clone(), bc = b.is_contiguous() ? b : b.clone();
  Tensor out = Tensor::empty({a.size(0) + b.size(0), a.size(1)}, a.dtype());
  std::memcpy(out.raw_data(), ac.raw_data(), ac.nbytes());
  std::memcpy(static_cast<char*>(out.raw_data()) + ac.nbytes(), bc.raw_data(), bc.nbytes());
  return out;
}

struct Uploader {
  size_t bytes = 0;
  Tensor up(const Tensor& t) {
    if (!t.defined()) return t;
    bytes += t.nbytes();
    return t.to(Device::kCuda);
  }
  Weight up(const Weight& w) {
    const Weight d = device_form(w);
    return Weight{up(d.weight), up(d.scale_inv)};
  }
  GpuMlp up(const MlpWeights& m) {
    if (!m.gate_proj.weight.defined()) return GpuMlp{};
    const GpuMlp h = fused_host_mlp(m);
    return GpuMlp{up(h.gate_up), up(h.down)};
  }
};

}  // namespace

Weight fused_rows(const Weight& top, const Weight& bottom, const char* what) {
  Weight a = device_form(top), b = device_form(bottom);
  const bool whole_blocks = a.rows() % Weight::kBlock == 0;
  if (a.is_block_fp8() != b.is_block_fp8() || (a.is_block_fp8() && !whole_blocks)) {
    a = a.is_block_fp8() ? to_bf16(a) : a;
    b = b.is_block_fp8() ? to_bf16(b) : b;
  }
  if (a.weight.dtype() != b.weight.dtype() || a.cols() != b.cols())
    throw std::invalid_argument(std::string(what) + ": the two weights differ in dtype or width");
  return Weight{cat_rows(a.weight, b.weight), a.scale_inv.defined() ? cat_rows(a.scale_inv, b.scale_inv) : Tensor()};
}

GpuMlp fused_host_mlp(const MlpWeights& m) {
  return GpuMlp{fused_rows(m.gate_proj, m.up_proj, "fused_host_mlp: gate_proj and up_proj"), device_form(m.down_proj)};
}

GpuExperts upload_experts(const MoeWeights& m, int64_t begin, int64_t end, size_t* bytes) {
  Uploader u;
  GpuExperts g;
  for (int64_t e = begin; e < end; ++e) {
    GpuMlp x = u.up(m.experts.at(static_cast<size_t>(e)));
    g.gate_up.push_back(std::move(x.gate_up));
    g.down.push_back(std::move(x.down));
  }
  g.gate_up_table = ops::expert_pointer_table(g.gate_up);
  g.down_table = ops::expert_pointer_table(g.down);
  if (bytes) *bytes += u.bytes;
  return g;
}

Status copy_to_device(const Tensor& host, Tensor& dev, const char* what) {
  if (!host.defined() && !dev.defined()) return ok_status();
  if (!host.defined() || !dev.defined() || host.dtype() != dev.dtype() || host.nbytes() != dev.nbytes())
    return make_error(ErrorCode::kInvalidArgument, "{}: the host tensor differs from the device one in dtype or size", what);
#if defined(PDSERVE_HAVE_CUDA)
  const Tensor h = host.is_contiguous() ? host : host.clone();
  // On this thread's stream, then waited for: a pageable cudaMemcpy may return before its DMA
  // lands, and the kernels that read `dev` next run on a non-blocking stream.
  cudaStream_t s = ops::cuda::current_stream();
  if (cudaMemcpyAsync(dev.raw_data(), h.raw_data(), h.nbytes(), cudaMemcpyHostToDevice, s) != cudaSuccess ||
      cudaStreamSynchronize(s) != cudaSuccess)
    return make_error(ErrorCode::kInternal, "{}: the host-to-device copy failed", what);
  return ok_status();
#else
  return make_error(ErrorCode::kUnsupported, "{}: this build has no CUDA", what);
#endif
}

namespace {

Status overwrite_weight(const Weight& host, Weight& dev, const char* what) {
  PDSERVE_RETURN_IF_ERROR(copy_to_device(host.weight, dev.weight, what));
  return copy_to_device(host.scale_inv, dev.scale_inv, what);
}

}  // namespace

Status overwrite_expert(GpuExperts& g, int64_t slot, const MlpWeights& host) {
  if (slot < 0 || slot >= static_cast<int64_t>(g.gate_up.size()))
    return make_error(ErrorCode::kInvalidArgument, "overwrite_expert: slot {} of {}", slot, g.gate_up.size());
  const auto i = static_cast<size_t>(slot);
  GpuMlp h;
  try {
    h = fused_host_mlp(host);
  } catch (const std::invalid_argument& e) {
    return make_error(ErrorCode::kInvalidArgument, "overwrite_expert: {}", e.what());
  }
  PDSERVE_RETURN_IF_ERROR(overwrite_weight(h.gate_up, g.gate_up[i], "gate_up_proj"));
  return overwrite_weight(h.down, g.down[i], "down_proj");
}

GpuWeights upload_weights(const ModelConfig& cfg, const ModelWeights& w, bool routed_experts) {
  Uploader u;
  GpuWeights g;
  g.embed_tokens = u.up(w.embed_tokens);
  g.norm = u.up(w.norm);
  g.lm_head = u.up(w.lm_head);
  const ops::MlaDims d = cfg.mla_dims();
  for (const LayerWeights& lw : w.layers) {
    GpuLayerWeights& gl = g.layers.emplace_back();
    gl.input_layernorm = u.up(lw.input_layernorm);
    gl.post_attention_layernorm = u.up(lw.post_attention_layernorm);
    const AttentionWeights& a = lw.attn;
    if (a.q_a_proj.weight.defined())
      gl.qkv_a = u.up(fused_rows(a.q_a_proj, a.kv_a_proj_with_mqa, "q_a_proj and kv_a_proj_with_mqa"));
    else
      gl.attn.kv_a_proj_with_mqa = u.up(a.kv_a_proj_with_mqa);
    gl.attn.q_a_layernorm = u.up(a.q_a_layernorm);
    gl.attn.q_b_proj = u.up(a.q_b_proj);
    gl.attn.q_proj = u.up(a.q_proj);
    gl.attn.kv_a_layernorm = u.up(a.kv_a_layernorm);
    gl.attn.kv_b_proj = u.up(a.kv_b_proj);
    gl.attn.o_proj = u.up(a.o_proj);
    // [H, nope + v, r] bf16: head h's W_UK rows then its W_UV rows, so both are strided views.
    const int64_t H = d.num_heads, nope = d.qk_nope_head_dim, v = d.v_head_dim, r = d.kv_lora_rank;
    Tensor both = Tensor::empty({H, nope + v, r}, DType::kF32);
    for (int64_t h = 0; h < H; ++h) {
      std::memcpy(both.data<float>() + h * (nope + v) * r, a.w_uk.data<float>() + h * nope * r, sizeof(float) * nope * r);
      std::memcpy(both.data<float>() + (h * (nope + v) + nope) * r, a.w_uv.data<float>() + h * v * r,
                  sizeof(float) * v * r);
    }
    Tensor stored = Tensor::empty(both.shape(), DType::kBF16);
    convert_from_f32(DType::kBF16, both.data<float>(), stored.raw_data(), static_cast<size_t>(both.numel()));
    Tensor dev = u.up(stored);
    gl.attn.w_uk = dev.slice(1, 0, nope);
    gl.attn.w_uv = dev.slice(1, nope, nope + v);
    gl.is_moe = lw.is_moe;
    if (!lw.is_moe) {
      gl.dense = u.up(lw.dense);
      continue;
    }
    gl.router = u.up(lw.moe.router);
    gl.correction_bias = u.up(lw.moe.correction_bias);
    if (routed_experts) gl.experts = upload_experts(lw.moe, 0, static_cast<int64_t>(lw.moe.experts.size()), &u.bytes);
    gl.shared = u.up(lw.moe.shared);
  }
  g.bytes = u.bytes;
  return g;
}

}  // namespace pdserve::model
