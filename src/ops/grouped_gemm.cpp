#include "ops/grouped_gemm.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "ops/check.h"
#include "ops/elementwise.h"
#include "ops/linear.h"
#ifdef PDSERVE_HAVE_CUDA
#include "ops/cuda/elementwise.h"
#include "ops/cuda/grouped_gemm.h"
#include "ops/cuda/linear.h"
#endif

namespace pdserve::ops {

using detail::fail;

namespace {

// Experts: at least one, all of the first one's shape and dtype. Returns true when every tensor
// (x, y, counts, the experts) is on the host; mixed placements are an error.
bool check_experts_and_place(const char* op, const std::vector<Weight>& experts, std::initializer_list<const Tensor*> ts) {
  if (experts.empty()) fail(op, "no experts");
  const bool cpu = detail::all_on_cpu(op, ts);
  const Weight& w0 = experts.front();
  for (size_t g = 0; g < experts.size(); ++g) {
    const Weight& w = experts[g];
    detail::check_weight(op, "expert weight", w);
    if (w.weight.shape() != w0.weight.shape() || w.weight.dtype() != w0.weight.dtype())
      fail(op, fmt::format("expert {} is {} {}, expert 0 is {} {}", g, dtype_name(w.weight.dtype()),
                           shape_to_string(w.weight.shape()), dtype_name(w0.weight.dtype()), shape_to_string(w0.weight.shape())));
    if (detail::all_on_cpu(op, {&w.weight, &w.scale_inv}) != cpu)
      fail(op, fmt::format("expert {} is not on the same device as x", g));
  }
  return cpu;
}

void check_activation_dtype(const char* op, const char* name, const Tensor& t, bool cpu) {
  if (cpu) return detail::check_dtype(op, name, t, DType::kF32);
  if (t.dtype() != DType::kF32 && t.dtype() != DType::kBF16)
    fail(op, fmt::format("{} must be f32 or bf16 on the GPU, got {}", name, dtype_name(t.dtype())));
}

// The masked layout's arguments: x [G, max_m, K], counts [G] i32, y [G, max_m, N], one device;
// with x_scales defined, x is fp8 e4m3 and x_scales f32 [G, ceil(K/128), max_m].
bool check_masked(const char* op, const Tensor& x, const Tensor& counts, const std::vector<Weight>& experts,
                  const Tensor& y, const Tensor& extra, const Tensor& x_scales = Tensor()) {
  detail::check_rank(op, "x", x, 3);
  detail::check_contiguous(op, "x", x);
  detail::check_rank(op, "y", y, 3);
  detail::check_contiguous(op, "y", y);
  detail::check_dtype(op, "counts", counts, DType::kI32);
  detail::check_contiguous(op, "counts", counts);
  const bool cpu = check_experts_and_place(op, experts, {&x, &y, &counts, &extra, &x_scales});
  if (x_scales.defined())
    detail::check_dtype(op, "x (with x_scales)", x, DType::kF8E4M3);
  else
    check_activation_dtype(op, "x", x, cpu);
  check_activation_dtype(op, "y", y, cpu);
  const int64_t groups = static_cast<int64_t>(experts.size());
  const int64_t max_m = x.size(1), n = experts.front().rows(), k = experts.front().cols();
  if (x.size(0) != groups || x.size(2) != k)
    fail(op, fmt::format("x {} does not match {} experts of in-features {}", shape_to_string(x.shape()), groups, k));
  if (x_scales.defined()) {
    detail::check_dtype(op, "x_scales", x_scales, DType::kF32);
    detail::check_contiguous(op, "x_scales", x_scales);
    detail::check_shape(op, "x_scales", x_scales, {groups, (k + 127) / 128, max_m});
  }
  detail::check_shape(op, "counts", counts, {groups});
  detail::check_shape(op, "y", y, {groups, max_m, n});
  return cpu;
}

// Rows [0, rows) of q [max_m, K] fp8 with scales [ceil(K/128), max_m] as f32 [rows, K].
Tensor dequantize_rows(const Tensor& q, const Tensor& scales, int64_t rows) {
  const int64_t k = q.size(1), max_m = q.size(0);
  const Tensor qf = q.slice(0, 0, rows).to_f32();
  Tensor x = Tensor::empty({rows, k}, DType::kF32);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < k; ++c)
      x.data<float>()[r * k + c] = qf.data<float>()[r * k + c] * scales.data<float>()[(c / 128) * max_m + r];
  return x;
}

}  // namespace

void grouped_linear_contiguous(const Tensor& x, const std::vector<int64_t>& offsets, const std::vector<Weight>& experts,
                               Tensor& y) {
  constexpr const char* op = "grouped_linear_contiguous";
  detail::check_rank(op, "x", x, 2);
  detail::check_contiguous(op, "x", x);
  detail::check_rank(op, "y", y, 2);
  detail::check_contiguous(op, "y", y);
  const bool cpu = check_experts_and_place(op, experts, {&x, &y});
  check_activation_dtype(op, "x", x, cpu);
  check_activation_dtype(op, "y", y, cpu);
  const int64_t m = x.size(0), n = experts.front().rows(), k = experts.front().cols();
  if (x.size(1) != k) fail(op, fmt::format("x {} does not match the experts' in-features {}", shape_to_string(x.shape()), k));
  detail::check_shape(op, "y", y, {m, n});
  if (offsets.size() != experts.size() + 1)
    fail(op, fmt::format("offsets has {} entries, want experts + 1 = {}", offsets.size(), experts.size() + 1));
  if (offsets.front() != 0 || offsets.back() != m)
    fail(op, fmt::format("offsets must start at 0 and end at M = {}, got {} .. {}", m, offsets.front(), offsets.back()));
  for (size_t g = 0; g + 1 < offsets.size(); ++g)
    if (offsets[g + 1] < offsets[g]) fail(op, fmt::format("offsets decrease at expert {}", g));
  if (!cpu) {
#ifdef PDSERVE_HAVE_CUDA
    return cuda::grouped_linear_contiguous(x, offsets, experts, y);
#else
    detail::no_cuda(op);
#endif
  }
  // Reference: one ops::linear per expert over its rows.
  for (size_t g = 0; g < experts.size(); ++g) {
    if (offsets[g + 1] == offsets[g]) continue;
    Tensor xs = x.slice(0, offsets[g], offsets[g + 1]);
    Tensor ys = y.slice(0, offsets[g], offsets[g + 1]);
    linear(xs, experts[g], ys);
  }
}

void grouped_linear_masked(const Tensor& x, const Tensor& counts, const std::vector<Weight>& experts, Tensor& y) {
  constexpr const char* op = "grouped_linear_masked";
  const bool cpu = check_masked(op, x, counts, experts, y, {});
  const int64_t groups = static_cast<int64_t>(experts.size()), max_m = x.size(1), n = experts.front().rows();
  if (!cpu) {
#ifdef PDSERVE_HAVE_CUDA
    return cuda::grouped_linear_masked(x, counts, experts, y);
#else
    detail::no_cuda(op);
#endif
  }
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t c = std::clamp<int64_t>(counts.data<int32_t>()[g], 0, max_m);
    Tensor yg = y.select(g);
    if (c > 0) {
      Tensor xs = x.select(g).slice(0, 0, c);
      Tensor ys = yg.slice(0, 0, c);
      linear(xs, experts[g], ys);
    }
    if (c < max_m)
      std::memset(static_cast<char*>(yg.raw_data()) + c * n * sizeof(float), 0, static_cast<size_t>((max_m - c) * n) * sizeof(float));
  }
}

namespace {

bool aligned16(const Tensor& t) { return reinterpret_cast<uintptr_t>(t.raw_data()) % 16 == 0; }

// What ops::cuda::grouped_gemm_masked_tc takes (its header): fp8 block-scaled experts with N and K
// multiples of 128, x bf16 or fp8 with scales, y f32 or bf16, contiguous and 16-byte aligned.
bool experts_and_y_take_tensor_cores(const std::vector<Weight>& experts, const Tensor& y) {
  if (experts.empty() || experts.size() > 65535 || y.device() != Device::kCuda) return false;
  const Weight& w = experts.front();
  if (!w.is_block_fp8() || !w.scale_inv.defined() || w.rows() % 128 != 0 || w.cols() % 128 != 0) return false;
  return (y.dtype() == DType::kF32 || y.dtype() == DType::kBF16) && y.is_contiguous() && aligned16(y) &&
         y.size(1) <= (int64_t{1} << 30);
}

bool tensor_cores_take(const Tensor& x, const std::vector<Weight>& experts, const Tensor& y, const Tensor& x_scales) {
  const bool x_ok = x_scales.defined() ? x.dtype() == DType::kF8E4M3 : x.dtype() == DType::kBF16;
  return x_ok && x.device() == Device::kCuda && x.is_contiguous() && aligned16(x) && experts_and_y_take_tensor_cores(experts, y);
}

}  // namespace

#ifdef PDSERVE_HAVE_CUDA
namespace {

// PDSERVE_MASKED_EXPERTS picks the kernel for FP8 experts of V3's shapes: "wgmma" (the default:
// FP8 wgmma, bf16 rows quantized first), "tc" (mma.sync, W8A16) or "gemv". Read on every call, so
// one benchmark process can compare them. On an H100 at 4 experts x 512 rows (2026-12-05) the
// fused gate|up took 200 us with wgmma (quantization included), 748 with tc, 15,700 with the GEMV.
enum class MaskedKernel { kWgmma, kTensorCore, kGemv };

MaskedKernel masked_kernel() {
  const char* v = std::getenv("PDSERVE_MASKED_EXPERTS");
  const std::string s = v ? v : "";
  if (s == "tc") return MaskedKernel::kTensorCore;
  if (s == "gemv") return MaskedKernel::kGemv;
  return MaskedKernel::kWgmma;
}

Tensor borrowed(void* p, const Shape& shape, DType dtype) { return Tensor::borrow(p, shape, dtype, Device::kCuda); }

// The FP8 wgmma kernel takes fp8 rows with their scales; bf16 rows (the bf16 dispatch, the SiLU
// output) are quantized first into the calling thread's GEMM scratch (ops/cuda/linear.h: sized on
// the warm-up pass, never grown inside a capture).
void masked_wgmma(const Tensor& x, const Tensor& counts, const std::vector<Weight>& experts, const Tensor& table, Tensor& y,
                  const Tensor& x_scales) {
  if (x_scales.defined()) return cuda::grouped_gemm_masked_wgmma(x, x_scales, counts, experts, table, y);
  const int64_t G = x.size(0), M = x.size(1), K = x.size(2);
  const cuda::detail::InputScratch s =
      cuda::detail::reserve_inputs(static_cast<size_t>(G * M * K), static_cast<size_t>(G * (K / 128) * M), 0);
  Tensor q = borrowed(s.q, {G, M, K}, DType::kF8E4M3), sc = borrowed(s.s, {G, K / 128, M}, DType::kF32);
  cuda::quantize_fp8_masked(x, counts, q, sc);
  cuda::grouped_gemm_masked_wgmma(q, sc, counts, experts, table, y);
}

}  // namespace
#endif

void grouped_masked_experts(const Tensor& x, const Tensor& counts, const std::vector<Weight>& experts, const Tensor& table,
                            Tensor& y, const Tensor& x_scales) {
#ifdef PDSERVE_HAVE_CUDA
  const MaskedKernel k = masked_kernel();
  if (k != MaskedKernel::kGemv && tensor_cores_take(x, experts, y, x_scales)) {
    check_masked("grouped_masked_experts", x, counts, experts, y, table, x_scales);
    if (k == MaskedKernel::kWgmma) return masked_wgmma(x, counts, experts, table, y, x_scales);
    return cuda::grouped_gemm_masked_tc(x, counts, experts, table, y, x_scales);
  }
#endif
  grouped_gemv_masked(x, counts, experts, table, y, x_scales);
}

void grouped_masked_silu_down(const Tensor& gate_up, const Tensor& counts, const std::vector<Weight>& down,
                              const Tensor& down_table, Tensor& act, Tensor& y) {
  constexpr const char* op = "grouped_masked_silu_down";
  if (down.empty()) fail(op, "no experts");
  detail::check_rank(op, "gate_up", gate_up, 3);
  const int64_t I = down.front().cols();
  if (gate_up.size(2) != 2 * I)
    fail(op, fmt::format("gate_up's last dim {} must be twice down's in-features {}", gate_up.size(2), I));
  const Tensor gate = gate_up.slice(2, 0, I), up = gate_up.slice(2, I, 2 * I);
#ifdef PDSERVE_HAVE_CUDA
  // The FP8 path, where grouped_masked_experts would take fp8 rows (the scratch is aligned).
  if (gate_up.device() == Device::kCuda && masked_kernel() == MaskedKernel::kWgmma &&
      experts_and_y_take_tensor_cores(down, y)) {
    const int64_t G = act.size(0), M = act.size(1);
    const cuda::detail::InputScratch s =
        cuda::detail::reserve_inputs(static_cast<size_t>(G * M * I), static_cast<size_t>(G * (I / 128) * M), 0);
    Tensor q = borrowed(s.q, {G, M, I}, DType::kF8E4M3), sc = borrowed(s.s, {G, I / 128, M}, DType::kF32);
    cuda::silu_mul_quant_fp8_masked(gate, up, counts, q, sc);
    return grouped_masked_experts(q, counts, down, down_table, y, sc);
  }
#endif
  silu_mul_masked(gate, up, counts, act);
  grouped_masked_experts(act, counts, down, down_table, y);
}

Tensor expert_pointer_table(const std::vector<Weight>& experts) {
  if (experts.empty() || experts.front().weight.device() == Device::kCpu) return Tensor();
  Tensor t = Tensor::empty({2, static_cast<int64_t>(experts.size())}, DType::kI64);
  for (size_t g = 0; g < experts.size(); ++g) {
    t.data<int64_t>()[g] = reinterpret_cast<int64_t>(experts[g].weight.raw_data());
    t.data<int64_t>()[experts.size() + g] =
        experts[g].scale_inv.defined() ? reinterpret_cast<int64_t>(experts[g].scale_inv.raw_data()) : 0;
  }
  return t.to(Device::kCuda);
}

void grouped_gemv_masked(const Tensor& x, const Tensor& counts, const std::vector<Weight>& experts, const Tensor& table,
                         Tensor& y, const Tensor& x_scales) {
  constexpr const char* op = "grouped_gemv_masked";
  const bool cpu = check_masked(op, x, counts, experts, y, table, x_scales);
  const int64_t groups = static_cast<int64_t>(experts.size()), max_m = x.size(1), k = experts.front().cols();
  if (!cpu) {
    detail::check_dtype(op, "table", table, DType::kI64);
    detail::check_shape(op, "table", table, {2, groups});
    if (k % 16 != 0) fail(op, fmt::format("in-features {} must be a multiple of 16 on the GPU", k));
#ifdef PDSERVE_HAVE_CUDA
    return cuda::grouped_gemv_masked(x, counts, experts, table, y, x_scales);
#else
    detail::no_cuda(op);
#endif
  }
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t c = std::clamp<int64_t>(counts.data<int32_t>()[g], 0, max_m);
    if (c == 0) continue;
    Tensor ys = y.select(g).slice(0, 0, c);
    if (x_scales.defined())
      linear(dequantize_rows(x.select(g), x_scales.select(g), c), experts[g], ys);
    else
      linear(x.select(g).slice(0, 0, c), experts[g], ys);
  }
}

}  // namespace pdserve::ops
