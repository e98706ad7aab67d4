// cuBLASLt GEMM engine: one context per (thread, device, stream) holding the cuBLASLt handle, a
// 32 MiB workspace, plans (descriptors + heuristic algorithm) per shape and growable scratch. After
// the first call for a shape nothing is allocated and nothing synchronizes, and everything runs on
// ops::cuda::current_stream(), so a forward pass can be captured into a CUDA graph.
//
// cuBLASLt is column-major: a row-major y[m, n] = x[m, k] W[n, k]^T is computed as the column-major
// D (n x m) = op(A) B with A = W viewed as a k x n column-major matrix and transposed (the "TN"
// layout FP8 requires), B = x viewed as k x m. So cuBLASLt's A is the weight (128x128 block scales,
// BLK128x128_32F) and its B the activations (1x128 scales, VEC128_32F, M-major).
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>

#include "ops/cuda/cuda_common.h"
#include "ops/cuda/linear.h"
#include "ops/cuda/quant.h"

namespace pdserve::ops::cuda {

using detail::ConvertJob;
using detail::Fp8Operand;
using detail::kRowAlign;
using detail::QuantJob;

namespace {

// PDSERVE_DEBUG_GEMM=1: one stderr line before and after each host call of this file that may
// block (handle creation, scratch growth, the heuristic, a plan's first launch), with the thread
// id, to find which one a stalled EP rank sits in.
void debug_line(const char* fmt, ...) {
  static const bool on = [] {
    const char* v = std::getenv("PDSERVE_DEBUG_GEMM");
    return v != nullptr && *v != '\0' && *v != '0';
  }();
  if (!on) return;
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "[gemm %ld] %s\n", static_cast<long>(syscall(SYS_gettid)), buf);
}

constexpr size_t kWorkspaceBytes = size_t{32} << 20;
constexpr size_t kMaxPlans = 4096;  // prefill row counts vary per batch: bound the cache

std::string lt_status(cublasStatus_t s) {
  return std::string(cublasLtGetStatusName(s)) + " (" + cublasLtGetStatusString(s) + ")";
}

void check_lt(cublasStatus_t s, const std::string& what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw std::runtime_error("cuBLASLt " + what + " failed: " + lt_status(s));
}

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }
bool aligned(const void* p, size_t a) { return reinterpret_cast<uintptr_t>(p) % a == 0; }

// Device memory that only grows, stream-ordered: the old buffer is freed after the kernels already
// queued on `stream` (which may still read it) and the new one allocated in order behind them
// (cudaFreeAsync / cudaMallocAsync). No device-wide synchronisation: cudaFree would wait for every
// kernel on the GPU, and GPU EP ranks sharing it spin in their dispatch kernels until this rank's
// dispatch arrives, so a growth in the middle of an EP pass would stall the group until its timeout.
// Growing is refused while the stream is being captured.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);  // at thread exit: errors (runtime already gone) ignored
  }

  void* get(size_t bytes, cudaStream_t stream, const char* what) {
    if (bytes == 0 || bytes <= cap_) return ptr_;
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    check(cudaStreamIsCapturing(stream, &capture), "cudaStreamIsCapturing");
    if (capture != cudaStreamCaptureStatusNone)
      throw std::runtime_error(std::string("GEMM scratch '") + what + "' must grow to " + std::to_string(bytes) +
                               " bytes while the stream is being captured; run the op once with this shape "
                               "before capturing");
    const size_t want = static_cast<size_t>(round_up(static_cast<int64_t>(std::max(bytes, cap_ + cap_ / 2)), 2 << 20));
    if (ptr_ != nullptr) {
      check(cudaFreeAsync(ptr_, stream), "cudaFreeAsync (GEMM scratch)");
      ptr_ = nullptr;
      cap_ = 0;
    }
    const std::string msg = "cudaMallocAsync of " + std::to_string(want) + " bytes for GEMM scratch '" + what + "'";
    debug_line("%s ...", msg.c_str());
    check(cudaMallocAsync(&ptr_, want, stream), msg.c_str());
    debug_line("%s done", msg.c_str());
    cap_ = want;
    return ptr_;
  }

 private:
  void* ptr_ = nullptr;
  size_t cap_ = 0;
};

enum class Kind : int { kFp8Block, kBf16, kF32 };

// Largest power of two (up to 256) dividing the address. cuBLASLt's heuristic assumes 256-byte
// aligned buffers unless told otherwise, and a less aligned pointer (a view into a bigger tensor,
// one expert's rows) would then fail at launch; so the alignment is part of the plan.
uint32_t alignment(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && a % al != 0) al /= 2;
  return al;
}

struct PlanKey {
  Kind kind;
  DType out;
  int64_t m, n, k, ldd;
  uint32_t align_a, align_b, align_d;

  PlanKey(Kind kind_, DType out_, int64_t m_, int64_t n_, int64_t k_, int64_t ldd_, const void* a, const void* b,
          const void* d)
      : kind(kind_), out(out_), m(m_), n(n_), k(k_), ldd(ldd_), align_a(alignment(a)), align_b(alignment(b)),
        align_d(alignment(d)) {}
  bool operator<(const PlanKey& o) const {
    return std::tie(kind, out, m, n, k, ldd, align_a, align_b, align_d) <
           std::tie(o.kind, o.out, o.m, o.n, o.k, o.ldd, o.align_a, o.align_b, o.align_d);
  }
  std::string describe() const {
    const char* kinds[] = {"fp8 block-scaled", "bf16", "f32"};
    return std::string(kinds[static_cast<int>(kind)]) + " GEMM m=" + std::to_string(m) + " n=" + std::to_string(n) +
           " k=" + std::to_string(k) + " ldd=" + std::to_string(ldd) + " out=" + dtype_name(out) +
           " alignment A/B/D=" + std::to_string(align_a) + "/" + std::to_string(align_b) + "/" + std::to_string(align_d);
  }
};

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
  bool ok = false;
  bool launched = false;  // for PDSERVE_DEBUG_GEMM
  std::string why;  // when !ok: what the heuristic said

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    if (d != nullptr) cublasLtMatrixLayoutDestroy(d);
    if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
    if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
    if (desc != nullptr) cublasLtMatmulDescDestroy(desc);
  }
};

struct Context {
  cudaStream_t stream = nullptr;
  cublasLtHandle_t lt = nullptr;
  DeviceBuffer workspace, q, s, x, stage, wscale;
  std::map<PlanKey, std::unique_ptr<Plan>> plans;

  Context() = default;
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  ~Context() {
    plans.clear();
    if (lt != nullptr) cublasLtDestroy(lt);
  }
};

Context& context() {
  thread_local std::map<std::pair<int, cudaStream_t>, std::unique_ptr<Context>> contexts;
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  const cudaStream_t stream = current_stream();
  std::unique_ptr<Context>& c = contexts[{device, stream}];
  if (!c) {
    auto fresh = std::make_unique<Context>();
    fresh->stream = stream;
    debug_line("cublasLtCreate ...");
    check_lt(cublasLtCreate(&fresh->lt), "handle creation");
    debug_line("cublasLtCreate done");
    fresh->workspace.get(kWorkspaceBytes, stream, "workspace");
    c = std::move(fresh);
  }
  return *c;
}

cudaDataType lt_type(DType t) {
  switch (t) {
    case DType::kF32: return CUDA_R_32F;
    case DType::kBF16: return CUDA_R_16BF;
    case DType::kF8E4M3: return CUDA_R_8F_E4M3;
    default: throw std::invalid_argument(std::string("GEMM: unsupported dtype ") + dtype_name(t));
  }
}

template <typename T>
void set_attr(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr, const T& v, const char* name) {
  check_lt(cublasLtMatmulDescSetAttribute(d, attr, &v, sizeof(v)), std::string("set ") + name);
}

// m rounded up to a power of two (the row bucket whose algorithm serves m).
uint64_t bucket_rows(int64_t m) {
  uint64_t b = 1;
  while (b < static_cast<uint64_t>(m)) b <<= 1;
  return b;
}

std::unique_ptr<Plan> make_plan(Context& c, const PlanKey& key) {
  auto p = std::make_unique<Plan>();
  const cudaDataType in = key.kind == Kind::kFp8Block ? CUDA_R_8F_E4M3 : key.kind == Kind::kBf16 ? CUDA_R_16BF : CUDA_R_32F;
  const cudaDataType out = lt_type(key.out);
  check_lt(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "matmul descriptor");
  set_attr(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, static_cast<int32_t>(CUBLAS_OP_T), "TRANSA");
  set_attr(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, static_cast<int32_t>(CUBLAS_OP_N), "TRANSB");
  if (key.kind == Kind::kFp8Block) {
    set_attr(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, static_cast<int32_t>(CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F),
             "A_SCALE_MODE (BLK128x128_32F)");
    set_attr(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, static_cast<int32_t>(CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F),
             "B_SCALE_MODE (VEC128_32F)");
    // Real pointers are set on every call; until then, valid device addresses (never read by
    // the heuristic) rather than null, which some versions reject for block scaling.
    const void* placeholder = c.workspace.get(kWorkspaceBytes, c.stream, "workspace");
    set_attr(p->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, placeholder, "A_SCALE_POINTER");
    set_attr(p->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, placeholder, "B_SCALE_POINTER");
  }
  const uint64_t k = static_cast<uint64_t>(key.k), n = static_cast<uint64_t>(key.n), m = static_cast<uint64_t>(key.m);
  check_lt(cublasLtMatrixLayoutCreate(&p->a, in, k, n, static_cast<int64_t>(k)), "layout A (weight)");
  check_lt(cublasLtMatrixLayoutCreate(&p->b, in, k, m, static_cast<int64_t>(k)), "layout B (activations)");
  check_lt(cublasLtMatrixLayoutCreate(&p->d, out, n, m, key.ldd), "layout D (output)");

  cublasLtMatmulPreference_t pref = nullptr;
  check_lt(cublasLtMatmulPreferenceCreate(&pref), "preference");
  const uint64_t ws = kWorkspaceBytes;
  cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[] = {
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_a},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_b},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_d},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_d}};
  for (const auto& [attr, value] : aligns)
    if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value));
  // The algorithm is chosen for the row bucket (m rounded up to a power of two) and checked for
  // m itself: every m of a bucket then runs the kernel a warm-up of the bucket's size loaded.
  // cuBLASLt loads a kernel's module on its first launch, which waits for every kernel running
  // on the GPU; GPU EP ranks sharing a GPU spin in their exchange kernels until this rank arrives,
  // so a first launch inside an EP pass stalls the group (see warm_gemm_buckets in the model).
  cublasLtMatmulHeuristicResult_t res{};
  int count = 0;
  const uint64_t probe_m = bucket_rows(key.m);
  cublasLtMatrixLayout_t probe_b = p->b, probe_d = p->d;
  if (probe_m != m && st == CUBLAS_STATUS_SUCCESS) {
    check_lt(cublasLtMatrixLayoutCreate(&probe_b, in, k, probe_m, static_cast<int64_t>(k)), "layout B (bucket)");
    check_lt(cublasLtMatrixLayoutCreate(&probe_d, out, n, probe_m, key.ldd), "layout D (bucket)");
  }
  debug_line("heuristic for %s (bucket m=%llu) ...", key.describe().c_str(), static_cast<unsigned long long>(probe_m));
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulAlgoGetHeuristic(c.lt, p->desc, p->a, probe_b, probe_d, probe_d, pref, 1, &res, &count);
  if (probe_b != p->b) {
    cublasLtMatrixLayoutDestroy(probe_b);
    cublasLtMatrixLayoutDestroy(probe_d);
    cublasLtMatmulHeuristicResult_t own{};
    if (st == CUBLAS_STATUS_SUCCESS && count > 0 && res.state == CUBLAS_STATUS_SUCCESS &&
        cublasLtMatmulAlgoCheck(c.lt, p->desc, p->a, p->b, p->d, p->d, &res.algo, &own) == CUBLAS_STATUS_SUCCESS &&
        own.workspaceSize <= kWorkspaceBytes) {
      res.workspaceSize = own.workspaceSize;
    } else {  // the bucket's choice does not fit m: ask for m itself
      count = 0;
      st = cublasLtMatmulAlgoGetHeuristic(c.lt, p->desc, p->a, p->b, p->d, p->d, pref, 1, &res, &count);
    }
  }
  debug_line("heuristic done");
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS) {
    p->why = "heuristic query: " + lt_status(st);
  } else if (count == 0 || res.state != CUBLAS_STATUS_SUCCESS) {
    p->why = "no algorithm (" + (count == 0 ? std::string("none returned") : lt_status(res.state)) + ")";
  } else {
    p->algo = res.algo;
    p->workspace = res.workspaceSize;
    p->ok = true;
  }
  return p;
}

Plan& plan(Context& c, const PlanKey& key) {
  auto it = c.plans.find(key);
  if (it == c.plans.end()) {
    if (c.plans.size() >= kMaxPlans) c.plans.clear();
    it = c.plans.emplace(key, make_plan(c, key)).first;
  }
  return *it->second;
}

Plan& required_plan(Context& c, const PlanKey& key) {
  Plan& p = plan(c, key);
  if (!p.ok) throw std::runtime_error("cuBLASLt cannot run " + key.describe() + ": " + p.why);
  return p;
}

// d = A B, or d += A B when accumulate (beta = 1 with C = D: cuBLASLt's epilogue adds in f32).
void run(Context& c, Plan& p, const PlanKey& key, const void* a, const void* b, void* d, const float* a_scale,
         const float* b_scale, bool accumulate = false) {
  if (key.kind == Kind::kFp8Block) {
    set_attr(p.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, static_cast<const void*>(a_scale), "A_SCALE_POINTER");
    set_attr(p.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, static_cast<const void*>(b_scale), "B_SCALE_POINTER");
  }
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  void* ws = c.workspace.get(kWorkspaceBytes, c.stream, "workspace");
  if (!p.launched) debug_line("first launch of %s ...", key.describe().c_str());
  const cublasStatus_t st = cublasLtMatmul(c.lt, p.desc, &alpha, a, p.a, b, p.b, &beta, d, p.d, d, p.d, &p.algo, ws,
                                           p.workspace, c.stream);
  if (!p.launched) debug_line("first launch done");
  p.launched = true;
  if (st != CUBLAS_STATUS_SUCCESS) throw std::runtime_error("cuBLASLt matmul (" + key.describe() + ") failed: " + lt_status(st));
}

// Copies (or converts bf16 -> f32) `rows` x `cols` from a staging buffer into y, or adds them to y.
void finish_rows(Context& c, const void* src, DType src_dtype, int64_t src_ld, void* dst, DType dst_dtype,
                 int64_t dst_ld, int64_t rows, int64_t cols, bool accumulate) {
  if (rows == 0 || cols == 0) return;
  if (src_dtype == dst_dtype && !accumulate) {
    const size_t es = dtype_size(dst_dtype);
    check(cudaMemcpy2DAsync(dst, dst_ld * es, src, src_ld * es, cols * es, rows, cudaMemcpyDeviceToDevice, c.stream),
          "cudaMemcpy2DAsync (GEMM staging -> y)");
    return;
  }
  ConvertJob j;
  j.src = src;
  j.src_dtype = src_dtype;
  j.src_ld = src_ld;
  j.dst = dst;
  j.dst_dtype = dst_dtype;
  j.dst_ld = dst_ld;
  j.cols = cols;
  j.rows = rows;
  j.rows_padded = rows;
  j.accumulate = accumulate;
  detail::launch_convert_rows(j, c.stream);
}

// Staged fp8 GEMM of `rows` rows (a multiple of kRowAlign) into c.stage, then its first
// `valid_rows` rows into y. y f32 is produced directly when cuBLASLt's block-scaled kernels
// accept an f32 output, else through a bf16 stage and a conversion.
void fp8_staged(Context& c, const Fp8Operand& a, int64_t row0, int64_t rows, int64_t valid_rows, const float* a_scales,
                const void* w, const float* w_scales, int64_t n, void* y, DType y_dtype, int64_t ldy, bool accumulate) {
  const int64_t n_ld = round_up(n, 16);
  // Sized for the widest output so that the pointer (part of the plan key) is final before lookup.
  void* stage = c.stage.get(static_cast<size_t>(rows * n_ld) * dtype_size(y_dtype), c.stream, "output staging");
  const uint8_t* q = a.q + row0 * a.k;
  PlanKey key(Kind::kFp8Block, y_dtype, rows, n, a.k, n_ld, w, q, stage);
  Plan* p = &plan(c, key);
  if (!p->ok && y_dtype == DType::kF32) {
    key.out = DType::kBF16;
    p = &plan(c, key);
  }
  if (!p->ok) throw std::runtime_error("cuBLASLt cannot run " + key.describe() + ": " + p->why);
  run(c, *p, key, w, q, stage, w_scales, a_scales);
  finish_rows(c, stage, key.out, n_ld, static_cast<char*>(y) + row0 * ldy * static_cast<int64_t>(dtype_size(y_dtype)),
              y_dtype, ldy, valid_rows, n, accumulate);
}

}  // namespace

namespace detail {

InputScratch reserve_inputs(size_t q_bytes, size_t s_floats, size_t x_bytes) {
  Context& c = context();
  InputScratch out;
  out.q = static_cast<uint8_t*>(c.q.get(q_bytes, c.stream, "quantized activations"));
  out.s = static_cast<float*>(c.s.get(s_floats * sizeof(float), c.stream, "activation scales"));
  out.x = c.x.get(x_bytes, c.stream, "converted activations");
  return out;
}

void fp8_gemm(const Fp8Operand& a, const Weight& w, void* y, DType y_dtype, int64_t ldy, bool accumulate) {
  Context& c = context();
  const int64_t m = a.m, n = w.rows(), k = a.k;
  if (m == 0 || n == 0) return;
  if (k % kQuantGroup != 0) throw std::invalid_argument("fp8 GEMM: k must be a multiple of 128, got " + std::to_string(k));
  const int64_t kb = k / kQuantGroup, nb = (n + kQuantGroup - 1) / kQuantGroup;

  // The weight's scale_inv [n/128][k/128] is what cuBLASLt's BLK128x128 mode reads, except that it
  // wants the K-block dimension padded to a multiple of 4 (V3's K/128 all are: 56, 12, 4, 16, 128).
  const float* w_scales = w.scale_inv.data<float>();
  if (kb % 4 != 0) {
    const int64_t kb4 = round_up(kb, 4);
    auto* padded = static_cast<float*>(c.wscale.get(static_cast<size_t>(nb * kb4) * sizeof(float), c.stream, "weight scales"));
    check(cudaMemsetAsync(padded, 0, static_cast<size_t>(nb * kb4) * sizeof(float), c.stream), "cudaMemsetAsync");
    check(cudaMemcpy2DAsync(padded, kb4 * sizeof(float), w_scales, kb * sizeof(float), kb * sizeof(float), nb,
                            cudaMemcpyDeviceToDevice, c.stream),
          "cudaMemcpy2DAsync (weight scales)");
    w_scales = padded;
  }

  const int64_t main = main_rows(m), tail = m - main;
  if (main > 0) {
    const bool direct = (ldy * static_cast<int64_t>(dtype_size(y_dtype))) % 16 == 0 && aligned(y, 16);
    const PlanKey key(Kind::kFp8Block, y_dtype, main, n, k, ldy, w.weight.raw_data(), a.q, y);
    Plan* p = direct ? &plan(c, key) : nullptr;
    if (p != nullptr && p->ok)
      run(c, *p, key, w.weight.raw_data(), a.q, y, w_scales, a.s, accumulate);
    else
      fp8_staged(c, a, 0, main, main, a.s, w.weight.raw_data(), w_scales, n, y, y_dtype, ldy, accumulate);
  }
  if (tail > 0)
    fp8_staged(c, a, main, kRowAlign, tail, a.s + kb * main, w.weight.raw_data(), w_scales, n, y, y_dtype, ldy,
               accumulate);
}

void dense_gemm(const void* x, int64_t m, const Weight& w, void* y, DType y_dtype, int64_t ldy, bool accumulate) {
  Context& c = context();
  const int64_t n = w.rows(), k = w.cols();
  if (m == 0 || n == 0) return;
  const DType wt = w.weight.dtype();
  if (wt != DType::kBF16 && wt != DType::kF32)
    throw std::invalid_argument(std::string("dense GEMM: weight must be bf16 or f32, got ") + dtype_name(wt));
  if (wt == DType::kF32 && y_dtype != DType::kF32) throw std::invalid_argument("dense GEMM: f32 weights need an f32 output");
  const PlanKey key(wt == DType::kBF16 ? Kind::kBf16 : Kind::kF32, y_dtype, m, n, k, ldy, w.weight.raw_data(), x, y);
  run(c, required_plan(c, key), key, w.weight.raw_data(), x, y, nullptr, nullptr, accumulate);
}

}  // namespace detail

void linear(const Tensor& x, const Weight& w, Tensor& y, bool accumulate) {
  const int64_t m = x.size(0), k = x.size(1), n = w.rows();
  if (m == 0 || n == 0) return;
  if (accumulate && y.dtype() != DType::kF32) throw std::invalid_argument("linear: accumulating needs an f32 y");
  const cudaStream_t stream = current_stream();
  if (k == 0) {
    if (accumulate) return;  // y += 0
    check(cudaMemsetAsync(y.raw_data(), 0, y.nbytes(), stream), "cudaMemsetAsync (linear, k = 0)");
    return;
  }
  switch (w.weight.dtype()) {
    case DType::kF8E4M3: {
      if (k % detail::kQuantGroup != 0)
        throw std::invalid_argument("linear: fp8 weights on CUDA need in-features divisible by 128 (all of DeepSeek-V3's "
                                    "are), got W " + shape_to_string(w.weight.shape()));
      // Measured on H200 with cuBLASLt 13.1: its block-scaled FP8 kernels refuse out-features not
      // divisible by 16 (CUBLAS_STATUS_NOT_SUPPORTED); say so here rather than deep in cuBLASLt.
      if (n % 16 != 0)
        throw std::invalid_argument("linear: fp8 weights on CUDA need out-features divisible by 16 (all of DeepSeek-V3's "
                                    "are), got W " + shape_to_string(w.weight.shape()));
      const int64_t mp = detail::padded_rows(m);
      const detail::InputScratch sc =
          detail::reserve_inputs(static_cast<size_t>(mp * k), static_cast<size_t>(k / detail::kQuantGroup * mp), 0);
      QuantJob j;
      j.x = x.raw_data();
      j.x_dtype = x.dtype();
      j.k = k;
      j.rows = m;
      j.rows_padded = mp;
      j.split = detail::main_rows(m);
      j.tail_ld = kRowAlign;
      j.q = sc.q;
      j.s = sc.s;
      detail::launch_quantize(j, stream);
      detail::fp8_gemm(Fp8Operand{sc.q, sc.s, m, k}, w, y.raw_data(), y.dtype(), n, accumulate);
      return;
    }
    case DType::kBF16:
    case DType::kF32: {
      const DType want = w.weight.dtype();
      if (want == DType::kF32 && (x.dtype() != DType::kF32 || y.dtype() != DType::kF32))
        throw std::invalid_argument("linear: f32 weights on CUDA need f32 x and y");
      const void* xin = x.raw_data();
      if (x.dtype() != want) {
        const detail::InputScratch sc = detail::reserve_inputs(0, 0, static_cast<size_t>(m * k) * dtype_size(want));
        ConvertJob j;
        j.src = x.raw_data();
        j.src_dtype = x.dtype();
        j.src_ld = k;
        j.dst = sc.x;
        j.dst_dtype = want;
        j.dst_ld = k;
        j.cols = k;
        j.rows = m;
        j.rows_padded = m;
        detail::launch_convert_rows(j, stream);
        xin = sc.x;
      }
      detail::dense_gemm(xin, m, w, y.raw_data(), y.dtype(), n, accumulate);
      return;
    }
    default:
      throw std::invalid_argument(std::string("linear: CUDA weights must be bf16, fp8 e4m3 or f32, got ") +
                                  dtype_name(w.weight.dtype()));
  }
}

}  // namespace pdserve::ops::cuda
