#include <cuda_bf16.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "ops/cuda/device_math.cuh"
#include "ops/cuda/cuda_common.h"
#include "ops/cuda/rope.h"

namespace pdserve::ops::cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kMaxHalf = 64;
constexpr int kThreads = 256;

struct RopeArgs {
  float inv_freq[kMaxHalf];
  float attention_factor;
  int half;
};

using dev::to_f;
using dev::from_f;

__device__ __forceinline__ long long load_index(const void* p, bool is64, long long i) {
  return is64 ? static_cast<const long long*>(p)[i] : static_cast<const int*>(p)[i];
}

// (a, b) -> (a c - b s, b c + a s) with each product rounded (no FMA contraction), as the CPU op.
__device__ __forceinline__ void rotate(float& a, float& b, float c, float s) {
  const float ra = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
  const float rb = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
  a = ra;
  b = rb;
}

template <typename T, bool kPair>
__device__ __forceinline__ void load_pair(const T* p, float& a, float& b) {
  if constexpr (kPair && sizeof(T) == 4) {
    const float2 v = *reinterpret_cast<const float2*>(p);
    a = v.x, b = v.y;
  } else if constexpr (kPair) {
    const __nv_bfloat162 v = *reinterpret_cast<const __nv_bfloat162*>(p);
    a = __low2float(v), b = __high2float(v);
  } else {
    a = to_f(p[0]), b = to_f(p[1]);
  }
}

template <typename T, bool kPair>
__device__ __forceinline__ void store_pair(T* p, float a, float b) {
  if constexpr (kPair && sizeof(T) == 4) {
    *reinterpret_cast<float2*>(p) = make_float2(a, b);
  } else if constexpr (kPair) {
    *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
  } else {
    p[0] = from_f<T>(a), p[1] = from_f<T>(b);
  }
}

// cos/sin of this block's token into shared memory (f32 angle as HF forms it).
__device__ __forceinline__ void token_cos_sin(const RopeArgs& a, long long pos, float* cs, float* sn) {
  const float fpos = static_cast<float>(pos);
  for (int i = threadIdx.x; i < a.half; i += blockDim.x) {
    float s, c;
    sincosf(__fmul_rn(fpos, a.inv_freq[i]), &s, &c);
    cs[i] = __fmul_rn(c, a.attention_factor);
    sn[i] = __fmul_rn(s, a.attention_factor);
  }
  __syncthreads();
}

// Rotates all heads of one token: x points at the token's row, pair p = h * half + i.
template <typename T, bool kPair>
__device__ __forceinline__ void rotate_heads(T* x, long long sh, int heads, int half, const float* cs, const float* sn) {
  for (int p = threadIdx.x; p < heads * half; p += blockDim.x) {
    const int h = p / half, i = p - h * half;
    T* v = x + h * sh + 2 * i;
    float a, b;
    load_pair<T, kPair>(v, a, b);
    rotate(a, b, cs[i], sn[i]);
    store_pair<T, kPair>(v, a, b);
  }
}

template <typename T, bool kPair>
__global__ void __launch_bounds__(kThreads) rope_kernel(T* x, long long st, long long sh, int heads, int offset,
                                                        const void* pos, bool pos64, long long pos_stride,
                                                        const __grid_constant__ RopeArgs a) {
  __shared__ float cs[kMaxHalf], sn[kMaxHalf];
  const long long t = blockIdx.x;
  token_cos_sin(a, load_index(pos, pos64, t * pos_stride), cs, sn);
  rotate_heads<T, kPair>(x + t * st + offset, sh, heads, a.half, cs, sn);
}

template <typename T, typename TP, bool kPair>
__global__ void __launch_bounds__(kThreads) rope_kv_kernel(T* q, long long qst, long long qsh, int heads, int qoff,
                                                           const T* lat, long long ldl, int lat_dim, const T* kpe,
                                                           long long ldk, const void* pos, bool pos64,
                                                           long long pos_stride, const void* slots, bool slot64,
                                                           long long slot_stride, TP* pool, long long capacity,
                                                           const __grid_constant__ RopeArgs a) {
  __shared__ float cs[kMaxHalf], sn[kMaxHalf];
  const long long t = blockIdx.x;
  token_cos_sin(a, load_index(pos, pos64, t * pos_stride), cs, sn);
  rotate_heads<T, kPair>(q + t * qst + qoff, qsh, heads, a.half, cs, sn);
  const long long slot = load_index(slots, slot64, t * slot_stride);
  if (slot < 0 || slot >= capacity) return;  // padding token (or a bad slot): no cache write
  const int width = lat_dim + 2 * a.half;
  TP* dst = pool + slot * width;
  const T* lr = lat + t * ldl;
  for (int j = threadIdx.x; j < lat_dim; j += blockDim.x) dst[j] = from_f<TP>(to_f(lr[j]));
  const T* kr = kpe + t * ldk;
  for (int i = threadIdx.x; i < a.half; i += blockDim.x) {
    float x0 = to_f(kr[2 * i]), x1 = to_f(kr[2 * i + 1]);
    rotate(x0, x1, cs[i], sn[i]);
    dst[lat_dim + 2 * i] = from_f<TP>(x0);
    dst[lat_dim + 2 * i + 1] = from_f<TP>(x1);
  }
}

void require(bool ok, const char* op, const std::string& msg) {
  if (!ok) throw std::invalid_argument(std::string(op) + ": " + msg);
}

bool is_act(DType t) { return t == DType::kF32 || t == DType::kBF16; }

RopeArgs make_args(const char* op, const RopeTable& table) {
  const size_t half = table.inv_freq.size();
  require(half > 0 && half <= static_cast<size_t>(kMaxHalf), op,
          "rotary_dim must be in [2, " + std::to_string(2 * kMaxHalf) + "], got " + std::to_string(2 * half));
  RopeArgs a{};
  for (size_t i = 0; i < half; ++i) a.inv_freq[i] = table.inv_freq[i];
  a.attention_factor = table.attention_factor;
  a.half = static_cast<int>(half);
  return a;
}

void check_index_vector(const char* op, const char* name, const Tensor& t, int64_t n) {
  require(t.defined() && t.device() == Device::kCuda, op, std::string(name) + " must be a device tensor");
  require(t.dtype() == DType::kI32 || t.dtype() == DType::kI64, op, std::string(name) + " must be i32 or i64");
  require(t.dim() == 1 && t.size(0) == n, op,
          std::string(name) + " must be [" + std::to_string(n) + "], got " + shape_to_string(t.shape()));
}

// The rotated span of x [T, H, D]: checks, and whether pairs can move as one 2-element access.
bool check_rope_target(const char* op, const Tensor& x, int64_t offset, int half) {
  require(x.defined() && x.device() == Device::kCuda && is_act(x.dtype()), op, "x must be a device f32 or bf16 tensor");
  require(x.dim() == 3 && (x.size(2) <= 1 || x.strides()[2] == 1), op,
          "x must be [T, H, D] with a unit-stride last dim, got " + shape_to_string(x.shape()));
  require(offset >= 0 && offset + 2 * half <= x.size(2), op,
          "rotary span [" + std::to_string(offset) + ", " + std::to_string(offset + 2 * half) + ") does not fit x " +
              shape_to_string(x.shape()));
  require(x.size(0) < (1LL << 31) && x.size(1) * half < (1LL << 31), op, "x too large");
  const size_t pair_bytes = 2 * dtype_size(x.dtype());
  return offset % 2 == 0 && x.strides()[0] % 2 == 0 && x.strides()[1] % 2 == 0 &&
         reinterpret_cast<uintptr_t>(x.raw_data()) % pair_bytes == 0;
}

template <typename T>
void launch_rope(Tensor& x, int64_t offset, const Tensor& positions, const RopeArgs& a, bool pair) {
  const unsigned tokens = static_cast<unsigned>(x.size(0));
  const int heads = static_cast<int>(x.size(1));
  const bool p64 = positions.dtype() == DType::kI64;
  const long long ps = positions.strides()[0];
  if (pair)
    rope_kernel<T, true><<<tokens, kThreads, 0, current_stream()>>>(x.data<T>(), x.strides()[0], x.strides()[1], heads,
                                                                    static_cast<int>(offset), positions.raw_data(), p64,
                                                                    ps, a);
  else
    rope_kernel<T, false><<<tokens, kThreads, 0, current_stream()>>>(x.data<T>(), x.strides()[0], x.strides()[1], heads,
                                                                     static_cast<int>(offset), positions.raw_data(), p64,
                                                                     ps, a);
}

template <typename T, typename TP>
void launch_rope_kv(Tensor& q, int64_t q_offset, const Tensor& latent, const Tensor& k_pe, const Tensor& positions,
                    const RopeArgs& a, const Tensor& slots, Tensor& pool, bool pair) {
  const unsigned tokens = static_cast<unsigned>(q.size(0));
  const int heads = static_cast<int>(q.size(1));
  const long long capacity = pool.size(0) * pool.size(1);
  auto kernel = pair ? rope_kv_kernel<T, TP, true> : rope_kv_kernel<T, TP, false>;
  kernel<<<tokens, kThreads, 0, current_stream()>>>(
      q.data<T>(), q.strides()[0], q.strides()[1], heads, static_cast<int>(q_offset), latent.data<T>(),
      latent.strides()[0], static_cast<int>(latent.size(1)), k_pe.data<T>(), k_pe.strides()[0], positions.raw_data(),
      positions.dtype() == DType::kI64, positions.strides()[0], slots.raw_data(), slots.dtype() == DType::kI64,
      slots.strides()[0], pool.data<TP>(), capacity, a);
}

}  // namespace

void apply_rope_interleaved(Tensor& x, int64_t offset, const Tensor& positions, const RopeTable& table) {
  constexpr const char* op = "apply_rope_interleaved";
  const RopeArgs a = make_args(op, table);
  const bool pair = check_rope_target(op, x, offset, a.half);
  check_index_vector(op, "positions", positions, x.size(0));
  if (x.numel() == 0) return;
  if (x.dtype() == DType::kF32)
    launch_rope<float>(x, offset, positions, a, pair);
  else
    launch_rope<bf16>(x, offset, positions, a, pair);
  check_launch(op);
}

void rope_kv_write(Tensor& q, int64_t q_offset, const Tensor& latent, const Tensor& k_pe, const Tensor& positions,
                   const RopeTable& table, const Tensor& slot_mapping, Tensor& pool) {
  constexpr const char* op = "rope_kv_write";
  const RopeArgs a = make_args(op, table);
  const bool pair = check_rope_target(op, q, q_offset, a.half);
  const int64_t n = q.size(0);
  for (const Tensor* t : {&latent, &k_pe}) {
    const char* name = t == &latent ? "latent" : "k_pe";
    require(t->defined() && t->device() == Device::kCuda && t->dtype() == q.dtype(), op,
            std::string(name) + " must be a device tensor of q's dtype");
    require(t->dim() == 2 && t->size(0) == n && (t->size(1) <= 1 || t->strides()[1] == 1), op,
            std::string(name) + " must be [T, n] with a unit-stride last dim, got " + shape_to_string(t->shape()));
  }
  require(k_pe.size(1) == 2 * a.half, op,
          "k_pe width " + std::to_string(k_pe.size(1)) + " must equal rotary_dim " + std::to_string(2 * a.half));
  check_index_vector(op, "positions", positions, n);
  check_index_vector(op, "slot_mapping", slot_mapping, n);
  require(pool.defined() && pool.device() == Device::kCuda && is_act(pool.dtype()), op,
          "pool must be a device f32 or bf16 tensor");
  require(pool.dim() == 3 && pool.is_contiguous() && pool.size(2) == latent.size(1) + k_pe.size(1), op,
          "pool must be contiguous [pages, page_size, " + std::to_string(latent.size(1) + k_pe.size(1)) + "], got " +
              shape_to_string(pool.shape()));
  if (n == 0) return;
  const bool f32 = q.dtype() == DType::kF32, pool32 = pool.dtype() == DType::kF32;
  if (f32 && pool32)
    launch_rope_kv<float, float>(q, q_offset, latent, k_pe, positions, a, slot_mapping, pool, pair);
  else if (f32)
    launch_rope_kv<float, bf16>(q, q_offset, latent, k_pe, positions, a, slot_mapping, pool, pair);
  else if (pool32)
    launch_rope_kv<bf16, float>(q, q_offset, latent, k_pe, positions, a, slot_mapping, pool, pair);
  else
    launch_rope_kv<bf16, bf16>(q, q_offset, latent, k_pe, positions, a, slot_mapping, pool, pair);
  check_launch(op);
}

}  // namespace pdserve::ops::cuda
