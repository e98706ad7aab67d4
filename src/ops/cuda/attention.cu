// CUDA MLA ops: the paged latent cache (write/gather through device page tables) and the host side
// of decode and prefill: path choice, workspace layout, split count and the launch sequence.
//
// Precision follows the cache: a bf16 cache runs the tensor-core path (bf16 operands, f32
// accumulation and softmax), an f32 cache the exact CUDA-core path (f32 throughout). The tensor-core
// decode needs DeepSeek's latent layout (kv_lora_rank 512, rope 64); prefill's needs nope 128,
// rope 64, v 128; other dims take the exact kernels on either cache dtype.
//
// Decode, tensor-core path (all launches on the current stream, no allocation when the caller
// passes a workspace, so it can be captured in a CUDA graph):
//   1. q_pe -> q_abs[:, :, 512:]                          (convert_rows)
//   2. q_abs[:, :, :512] = q_nope W_UK per head             (gemm_bf16, batch = heads)
//   3. attention core over the pages, split-KV              (decode_core)
//   4. merge splits -> o_lat                                 (decode_combine, only with splits)
//   5. out = o_lat W_UV^T per head                           (gemm_bf16)
// With q, the weights and out all bf16 (the GPU model), 1 + 2 are one absorb_bmm_bf16 launch and
// 5 is absorb_bmm_bf16 too (mla_gemm.cu: weight slice resident in shared memory, 16-byte stores);
// PDSERVE_MLA_BMM=gemm forces gemm_bf16 + convert_rows (read on every call: benchmark A/B).
#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <string_view>

#include "ops/cuda/attention.h"
#include "ops/cuda/cuda_common.h"
#include "ops/cuda/linear.h"
#include "ops/cuda/mla_device.h"
#include "ops/cuda/mla_kernels.h"

namespace pdserve::ops::cuda {

using mla::bf16;
using mla::Elem;

namespace {

Elem elem_of(DType t) {
  switch (t) {
    case DType::kF32: return Elem::kF32;
    case DType::kBF16: return Elem::kBF16;
    case DType::kF8E4M3: return Elem::kFP8;
    default: throw std::invalid_argument(std::string("mla: unsupported element type ") + dtype_name(t));
  }
}

// ---- small kernels ------------------------------------------------------------------------------

template <typename TS, typename TD>
__global__ void kv_write_kernel(TD* pool, int page_size, int num_pages, int latent, const int32_t* table,
                                int64_t table_stride, const int32_t* batch_ids, const int32_t* positions,
                                const TS* src, int64_t src_row, int n) {
  const int i = blockIdx.x;
  if (i >= n) return;
  const int b = batch_ids[i], pos = positions[i];
  const int page = table[b * table_stride + pos / page_size];
  if (page < 0 || page >= num_pages) return;  // never write outside the pool
  TD* dst = pool + (int64_t(page) * page_size + pos % page_size) * latent;
  const TS* row = src + i * src_row;
  for (int c = threadIdx.x; c < latent; c += blockDim.x) dst[c] = mla::from_f32<TD>(mla::to_f32(row[c]));
}

template <typename TS, typename TD>
__global__ void kv_gather_kernel(const TS* pool, int page_size, int num_pages, int latent, const int32_t* table,
                                 int64_t table_stride, const int32_t* batch_ids, const int32_t* positions, TD* out,
                                 int64_t out_row, int n) {
  const int i = blockIdx.x;
  if (i >= n) return;
  const int b = batch_ids[i], pos = positions[i];
  const int page = table[b * table_stride + pos / page_size];
  const bool ok = page >= 0 && page < num_pages;
  const TS* row = pool + (int64_t(ok ? page : 0) * page_size + pos % page_size) * latent;
  TD* dst = out + i * out_row;
  for (int c = threadIdx.x; c < latent; c += blockDim.x) dst[c] = mla::from_f32<TD>(ok ? mla::to_f32(row[c]) : 0.0f);
}

// dst[(i * dst_row) + j] = src[(i / inner) * s0 + (i % inner) * s1 + j] for j < count.
template <typename TS, typename TD>
__global__ void convert_rows_kernel(const TS* src, int64_t s0, int64_t s1, int inner, TD* dst, int64_t dst_row,
                                    int count, int64_t rows) {
  const int64_t i = blockIdx.x * int64_t(blockDim.y) + threadIdx.y;
  if (i >= rows) return;
  const TS* s = src + (i / inner) * s0 + (i % inner) * s1;
  TD* d = dst + i * dst_row;
  for (int j = threadIdx.x; j < count; j += blockDim.x) d[j] = mla::from_f32<TD>(mla::to_f32(s[j]));
}

template <typename TS, typename TD>
void convert_rows_typed(const void* src, int64_t s0, int64_t s1, int inner, void* dst, int64_t dst_row, int count,
                        int64_t rows, cudaStream_t stream) {
  if (rows <= 0 || count <= 0) return;
  const dim3 block(32, 8);
  convert_rows_kernel<TS, TD><<<ceil_div(rows, 8), block, 0, stream>>>(static_cast<const TS*>(src), s0, s1, inner,
                                                                        static_cast<TD*>(dst), dst_row, count, rows);
  check_launch("mla convert_rows");
}

void convert_rows(Elem ts, const void* src, int64_t s0, int64_t s1, int inner, Elem td, void* dst, int64_t dst_row,
                  int count, int64_t rows, cudaStream_t s) {
  if (ts == Elem::kF32 && td == Elem::kF32) return convert_rows_typed<float, float>(src, s0, s1, inner, dst, dst_row, count, rows, s);
  if (ts == Elem::kF32 && td == Elem::kBF16) return convert_rows_typed<float, bf16>(src, s0, s1, inner, dst, dst_row, count, rows, s);
  if (ts == Elem::kBF16 && td == Elem::kF32) return convert_rows_typed<bf16, float>(src, s0, s1, inner, dst, dst_row, count, rows, s);
  if (ts == Elem::kBF16 && td == Elem::kBF16) return convert_rows_typed<bf16, bf16>(src, s0, s1, inner, dst, dst_row, count, rows, s);
  throw std::invalid_argument("mla convert_rows: f32/bf16 only");
}

// A Linear weight [rows, cols] as bf16: f32 rounded, fp8 multiplied by its 128x128 block scale.
template <typename T>
__global__ void weight_bf16_kernel(const T* w, const float* scale, int64_t scale_cols, int64_t rows, int64_t cols,
                                   bf16* out) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float v = mla::to_f32(w[i]);
    if (scale != nullptr) v *= scale[(i / cols / 128) * scale_cols + (i % cols) / 128];
    out[i] = __float2bfloat16_rn(v);
  }
}

void weight_to_bf16(const Weight& w, bf16* out, cudaStream_t s) {
  const int64_t rows = w.rows(), cols = w.cols();
  const unsigned grid = std::min<unsigned>(ceil_div(rows * cols, 256), 4096);
  switch (w.weight.dtype()) {
    case DType::kF32:
      weight_bf16_kernel<float><<<grid, 256, 0, s>>>(w.weight.data<float>(), nullptr, 0, rows, cols, out);
      break;
    case DType::kF8E4M3:
      weight_bf16_kernel<mla::fp8><<<grid, 256, 0, s>>>(w.weight.data<mla::fp8>(), w.scale_inv.data<float>(),
                                                         w.scale_inv.size(1), rows, cols, out);
      break;
    default: throw std::invalid_argument("mla weight_to_bf16: f32 or fp8 weights");
  }
  check_launch("mla weight_to_bf16");
}

// A tensor over device memory the caller owns (workspace carvings), for ops that take Tensors.
Tensor device_view(void* p, const Shape& shape, DType dtype) { return Tensor::borrow(p, shape, dtype, Device::kCuda); }

template <template <typename, typename> class K, typename... Args>
void launch_pool_rows(Elem a, Elem b, int n, Args... args) {
  // K<A, B> for the f32/bf16 combinations of the two element types.
  const dim3 grid(n), block(128);
  cudaStream_t s = current_stream();
  if (a == Elem::kF32 && b == Elem::kF32) K<float, float>::launch(grid, block, s, args...);
  else if (a == Elem::kF32 && b == Elem::kBF16) K<float, bf16>::launch(grid, block, s, args...);
  else if (a == Elem::kBF16 && b == Elem::kF32) K<bf16, float>::launch(grid, block, s, args...);
  else if (a == Elem::kBF16 && b == Elem::kBF16) K<bf16, bf16>::launch(grid, block, s, args...);
  else throw std::invalid_argument("mla kv: f32/bf16 only");
}

template <typename TS, typename TD>
struct WriteLaunch {
  static void launch(dim3 g, dim3 b, cudaStream_t s, void* pool, int ps, int np, int l, const int32_t* t, int64_t ts,
                     const int32_t* bi, const int32_t* pos, const void* src, int64_t sr, int n) {
    kv_write_kernel<TS, TD><<<g, b, 0, s>>>(static_cast<TD*>(pool), ps, np, l, t, ts, bi, pos,
                                             static_cast<const TS*>(src), sr, n);
  }
};
template <typename TS, typename TD>
struct GatherLaunch {
  static void launch(dim3 g, dim3 b, cudaStream_t s, const void* pool, int ps, int np, int l, const int32_t* t,
                     int64_t ts, const int32_t* bi, const int32_t* pos, void* out, int64_t orow, int n) {
    kv_gather_kernel<TS, TD><<<g, b, 0, s>>>(static_cast<const TS*>(pool), ps, np, l, t, ts, bi, pos,
                                              static_cast<TD*>(out), orow, n);
  }
};

// ---- workspace ---------------------------------------------------------------------------------

constexpr int64_t kAlign = 256;
int64_t align_up(int64_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

class Carver {
 public:
  explicit Carver(char* base) : p_(base) {}
  template <typename T>
  T* take(int64_t count) {
    T* r = reinterpret_cast<T*>(p_ + used_);
    used_ += align_up(count * static_cast<int64_t>(sizeof(T)));
    return r;
  }

 private:
  char* p_;
  int64_t used_ = 0;
};

// Device memory for one call: the caller's workspace, or a temporary one.
struct Workspace {
  Tensor owned;
  char* base = nullptr;
  Workspace(const Tensor& given, int64_t bytes, const char* op) {
    if (bytes == 0) return;
    if (given.defined()) {
      if (given.device() != Device::kCuda || !given.is_contiguous() || static_cast<int64_t>(given.nbytes()) < bytes ||
          reinterpret_cast<uintptr_t>(given.raw_data()) % kAlign != 0)
        throw std::invalid_argument(std::string(op) + ": workspace must be a contiguous, 256-byte aligned device "
                                    "tensor of at least " + std::to_string(bytes) + " bytes");
      base = static_cast<char*>(given.raw_data());
    } else {
      owned = Tensor::empty({(bytes + 3) / 4}, DType::kF32, Device::kCuda);
      base = static_cast<char*>(owned.raw_data());
    }
  }
};

bool decode_fast(const MlaDims& d, DType pool_dtype) {
  return pool_dtype == DType::kBF16 && d.kv_lora_rank == mla::kDecodeValue &&
         d.latent_dim() == mla::kDecodeLatent;
}

bool prefill_fast(const MlaDims& d, DType latent_dtype) {
  return latent_dtype == DType::kBF16 && d.qk_nope_head_dim == 128 && d.qk_rope_head_dim == 64 &&
         d.v_head_dim == 128 && d.kv_lora_rank % 8 == 0;
}

// Enough CTAs (one per SM: the core kernel uses ~225 KiB of shared memory) to fill the GPU, each
// split keeping at least one 64-token tile.
int choose_splits(int64_t batch, int64_t heads, int64_t max_seq_len, int sms) {
  const int64_t ctas = batch * ((heads + mla::kDecodeHeadsPerCta - 1) / mla::kDecodeHeadsPerCta);
  const int64_t tiles = std::max<int64_t>(1, (max_seq_len + mla::kDecodeTokensPerTile - 1) / mla::kDecodeTokensPerTile);
  if (ctas <= 0 || ctas >= sms) return 1;
  return static_cast<int>(std::clamp<int64_t>(sms / ctas, 1, std::min<int64_t>(tiles, 64)));
}

int64_t decode_bytes(int64_t batch, const MlaDims& d, int splits, bool fast) {
  const int64_t bh = batch * d.num_heads;
  if (!fast) return align_up(bh * d.latent_dim() * 4) + align_up(bh * d.kv_lora_rank * 4);
  int64_t bytes = align_up(bh * d.latent_dim() * 2) + align_up(bh * d.kv_lora_rank * 2);
  if (splits > 1) bytes += align_up(bh * splits * d.kv_lora_rank * 4) + align_up(bh * splits * 4);
  return bytes;
}

}  // namespace

// ---- paged cache ----------------------------------------------------------------------------------

void kv_write_paged(Tensor& pool, const Tensor& page_table, const Tensor& batch_ids, const Tensor& positions,
                    const Tensor& latent) {
  const int n = static_cast<int>(latent.size(0));
  if (n == 0) return;
  launch_pool_rows<WriteLaunch>(elem_of(latent.dtype()), elem_of(pool.dtype()), n, pool.raw_data(),
                                static_cast<int>(pool.size(1)), static_cast<int>(pool.size(0)),
                                static_cast<int>(pool.size(2)), page_table.data<int32_t>(), page_table.strides()[0],
                                batch_ids.data<int32_t>(), positions.data<int32_t>(),
                                static_cast<const void*>(latent.raw_data()), latent.strides()[0], n);
  check_launch("kv_write_paged");
}

void kv_gather_paged(const Tensor& pool, const Tensor& page_table, const Tensor& batch_ids, const Tensor& positions,
                     Tensor& out) {
  const int n = static_cast<int>(out.size(0));
  if (n == 0) return;
  launch_pool_rows<GatherLaunch>(elem_of(pool.dtype()), elem_of(out.dtype()), n,
                                 static_cast<const void*>(pool.raw_data()), static_cast<int>(pool.size(1)),
                                 static_cast<int>(pool.size(0)), static_cast<int>(pool.size(2)),
                                 page_table.data<int32_t>(), page_table.strides()[0], batch_ids.data<int32_t>(),
                                 positions.data<int32_t>(), out.raw_data(), out.strides()[0], n);
  check_launch("kv_gather_paged");
}

// ---- decode ---------------------------------------------------------------------------------------

// The decode core: the Hopper wgmma kernel where the device has one, else the mma.sync kernel;
// PDSERVE_MLA_DECODE_KERNEL=mma forces the latter (comparisons, a suspected kernel bug). Decided
// once per process (the device kind does not change under a running server).
static bool use_wgmma_decode() {
  static const bool use = [] {
    const char* v = std::getenv("PDSERVE_MLA_DECODE_KERNEL");
    if (v && std::string_view(v) == "mma") return false;
    return mla::decode_core_wgmma_supported();
  }();
  return use;
}

// The decode absorptions on absorb_bmm_bf16 where it applies, unless PDSERVE_MLA_BMM=gemm.
static bool use_absorb_bmm() {
  const char* v = std::getenv("PDSERVE_MLA_BMM");
  return !(v && std::string_view(v) == "gemm");
}

int mla_decode_num_splits(int64_t batch, const MlaDims& d, int64_t max_seq_len, DType pool_dtype) {
  return decode_fast(d, pool_dtype) ? choose_splits(batch, d.num_heads, max_seq_len, sm_count()) : 1;
}

int64_t mla_decode_workspace_bytes(int64_t batch, const MlaDims& d, int64_t max_seq_len, DType pool_dtype) {
  const bool fast = decode_fast(d, pool_dtype);
  return decode_bytes(batch, d, fast ? cuda::mla_decode_num_splits(batch, d, max_seq_len, pool_dtype) : 1, fast);
}

void mla_decode_paged(const Tensor& q, const Tensor& pool, const Tensor& page_table, const Tensor& seq_lens,
                      const Tensor& w_uk, const Tensor& w_uv, const MlaDims& d, float scale, Tensor& out,
                      int64_t max_seq_len, const Tensor& workspace) {
  const int batch = static_cast<int>(q.size(0)), heads = static_cast<int>(d.num_heads);
  if (batch == 0) return;
  const int nope = static_cast<int>(d.qk_nope_head_dim), rope = static_cast<int>(d.qk_rope_head_dim);
  const int rank = static_cast<int>(d.kv_lora_rank), latent = static_cast<int>(d.latent_dim());
  const int vdim = static_cast<int>(d.v_head_dim);
  if (max_seq_len <= 0) max_seq_len = page_table.size(1) * pool.size(1);
  const bool fast = decode_fast(d, pool.dtype());
  const int splits = fast ? choose_splits(batch, heads, max_seq_len, sm_count()) : 1;
  Workspace ws(workspace, decode_bytes(batch, d, splits, fast), "mla_decode_paged");
  Carver carve(ws.base);
  cudaStream_t stream = current_stream();
  const Elem qt = elem_of(q.dtype());
  const int64_t qs0 = q.strides()[0], qs1 = q.strides()[1];
  const mla::Operand a_q{q.raw_data(), qt, qs1, qs0};
  // Weights may be head-strided views (e.g. the two row blocks of a bf16 kv_b seen as [H, nope + v, r]).
  const mla::Operand b_uk{w_uk.raw_data(), elem_of(w_uk.dtype()), w_uk.strides()[0], w_uk.strides()[1]};
  const mla::Operand b_uv{w_uv.raw_data(), elem_of(w_uv.dtype()), w_uv.strides()[0], w_uv.strides()[1]};
  const mla::Output c_out{out.raw_data(), elem_of(out.dtype()), vdim, int64_t(heads) * vdim};

  if (!fast) {
    float* q_abs = carve.take<float>(int64_t(batch) * heads * latent);
    float* o_lat = carve.take<float>(int64_t(batch) * heads * rank);
    mla::gemm_f32(a_q, b_uk, /*b_kn=*/true, mla::Output{q_abs, Elem::kF32, latent, int64_t(heads) * latent}, batch,
                  rank, nope, heads, stream);
    convert_rows(qt, static_cast<const char*>(q.raw_data()) + nope * dtype_size(q.dtype()), qs0, qs1, heads,
                 Elem::kF32, q_abs + rank, latent, rope, int64_t(batch) * heads, stream);
    mla::DecodeGenericArgs g;
    g.q_abs = q_abs;
    g.pool = pool.raw_data();
    g.pool_type = elem_of(pool.dtype());
    g.page_size = static_cast<int>(pool.size(1));
    g.page_table = page_table.data<int32_t>();
    g.page_table_stride = page_table.strides()[0];
    g.seq_lens = seq_lens.data<int32_t>();
    g.batch = batch;
    g.heads = heads;
    g.latent = latent;
    g.rank = rank;
    g.scale = scale;
    g.o_lat = o_lat;
    mla::decode_generic(g, stream);
    mla::gemm_f32(mla::Operand{o_lat, Elem::kF32, rank, int64_t(heads) * rank}, b_uv, /*b_kn=*/false, c_out, batch,
                  vdim, rank, heads, stream);
    return;
  }

  bf16* q_abs = carve.take<bf16>(int64_t(batch) * heads * latent);
  bf16* o_lat = carve.take<bf16>(int64_t(batch) * heads * rank);
  float* o_part = splits > 1 ? carve.take<float>(int64_t(batch) * splits * heads * rank) : nullptr;
  float* lse_part = splits > 1 ? carve.take<float>(int64_t(batch) * splits * heads) : nullptr;
  const mla::Output c_q_abs{q_abs, Elem::kBF16, latent, int64_t(heads) * latent};
  const bool absorb = use_absorb_bmm();
  if (!absorb || !mla::absorb_bmm_bf16(a_q, b_uk, /*b_kn=*/true, c_q_abs, batch, rank, nope, heads, rope, stream)) {
    convert_rows(qt, static_cast<const char*>(q.raw_data()) + nope * dtype_size(q.dtype()), qs0, qs1, heads,
                 Elem::kBF16, q_abs + rank, latent, rope, int64_t(batch) * heads, stream);
    mla::gemm_bf16(a_q, b_uk, /*b_kn=*/true, c_q_abs, batch, rank, nope, heads, stream);
  }
  mla::DecodeCoreArgs c;
  c.q_abs = q_abs;
  c.pool = pool.raw_data();
  c.page_size = static_cast<int>(pool.size(1));
  c.pool_pages = pool.size(0);
  c.page_table = page_table.data<int32_t>();
  c.page_table_stride = page_table.strides()[0];
  c.seq_lens = seq_lens.data<int32_t>();
  c.batch = batch;
  c.heads = heads;
  c.num_splits = splits;
  c.scale = scale;
  c.o_lat = o_lat;
  c.o_part = o_part;
  c.lse_part = lse_part;
  if (use_wgmma_decode()) mla::decode_core_wgmma(c, stream);
  else mla::decode_core(c, stream);
  if (splits > 1) mla::decode_combine(o_part, lse_part, o_lat, batch, heads, splits, stream);
  const mla::Operand a_lat{o_lat, Elem::kBF16, rank, int64_t(heads) * rank};
  if (!absorb || !mla::absorb_bmm_bf16(a_lat, b_uv, /*b_kn=*/false, c_out, batch, vdim, rank, heads, 0, stream))
    mla::gemm_bf16(a_lat, b_uv, /*b_kn=*/false, c_out, batch, vdim, rank, heads, stream);
}

// ---- prefill --------------------------------------------------------------------------------------

int64_t mla_prefill_workspace_bytes(int64_t total_q, int64_t total_kv, const MlaDims& d, DType latent_dtype,
                                    DType q_dtype) {
  const int64_t kv_cols = d.num_heads * (d.qk_nope_head_dim + d.v_head_dim);
  if (!prefill_fast(d, latent_dtype)) return align_up(total_kv * kv_cols * 4);
  // kv, the dense latent copy cuBLASLt reads, and room for a bf16 kv_b (unless it is bf16 already).
  int64_t bytes = align_up(total_kv * kv_cols * 2) + align_up(total_kv * d.kv_lora_rank * 2) +
                  align_up(kv_cols * d.kv_lora_rank * 2);
  if (q_dtype != DType::kBF16) bytes += align_up(total_q * d.num_heads * d.qk_head_dim() * 2);
  return bytes;
}

void mla_prefill_varlen(const Tensor& q, const Tensor& latent, const Weight& kv_b, const MlaDims& d,
                        const Tensor& cu_q_lens, const Tensor& cu_kv_lens, int64_t max_q_len, float scale, Tensor& out,
                        const Tensor& workspace) {
  const int64_t total_q = q.size(0), total_kv = latent.size(0);
  const int num_seqs = static_cast<int>(cu_q_lens.size(0) - 1);
  if (total_q == 0 || num_seqs == 0 || max_q_len <= 0) return;
  const int heads = static_cast<int>(d.num_heads), rank = static_cast<int>(d.kv_lora_rank);
  const int kv_cols = heads * static_cast<int>(d.qk_nope_head_dim + d.v_head_dim);
  const int qk = static_cast<int>(d.qk_head_dim());
  const bool fast = prefill_fast(d, latent.dtype());
  // A q whose heads are not whole 16-byte rows is converted too.
  const bool q_direct = q.dtype() == DType::kBF16 && q.strides()[0] % 8 == 0 && q.strides()[1] % 8 == 0;
  Workspace ws(workspace, cuda::mla_prefill_workspace_bytes(total_q, total_kv, d, latent.dtype(), q_direct ? DType::kBF16 : DType::kF32),
               "mla_prefill_varlen");
  Carver carve(ws.base);
  cudaStream_t stream = current_stream();

  mla::Operand a_lat{latent.raw_data(), elem_of(latent.dtype()), 0, latent.strides()[0]};
  mla::Operand b_kvb{kv_b.weight.raw_data(), elem_of(kv_b.weight.dtype()), 0, kv_b.cols()};
  if (kv_b.is_block_fp8()) {
    b_kvb.scale = kv_b.scale_inv.data<float>();
    b_kvb.scale_row_stride = kv_b.scale_inv.size(1);
  }
  mla::PrefillArgs p;
  p.cu_q = cu_q_lens.data<int32_t>();
  p.cu_kv = cu_kv_lens.data<int32_t>();
  p.num_seqs = num_seqs;
  p.max_q_len = static_cast<int>(max_q_len);
  p.heads = heads;
  p.scale = scale;
  p.q = q.raw_data();
  p.q_type = elem_of(q.dtype());
  p.q_row = q.strides()[0];
  p.q_head = q.strides()[1];
  p.k_pe = static_cast<const char*>(latent.raw_data()) + rank * dtype_size(latent.dtype());
  p.k_pe_type = elem_of(latent.dtype());
  p.k_pe_row = latent.strides()[0];
  p.out = out.raw_data();
  p.out_type = elem_of(out.dtype());
  p.nope = static_cast<int>(d.qk_nope_head_dim);
  p.rope = static_cast<int>(d.qk_rope_head_dim);
  p.v = static_cast<int>(d.v_head_dim);

  if (!fast) {
    float* kv = carve.take<float>(total_kv * kv_cols);
    mla::gemm_f32(a_lat, b_kvb, /*b_kn=*/false, mla::Output{kv, Elem::kF32, 0, kv_cols}, static_cast<int>(total_kv),
                  kv_cols, rank, 1, stream);
    p.kv = kv;
    mla::prefill_generic(p, stream);
    return;
  }
  // kv = latent[:, :rank] kv_b^T on cuBLASLt's bf16 GEMM (ops/cuda/linear.h): x is a dense bf16 copy
  // of the latent columns, W kv_b in bf16 (fp8 dequantized exactly with its block scales, so the
  // result matches the CPU's dequantized product up to bf16 rounding, unlike a W8A8 GEMM).
  bf16* kv = carve.take<bf16>(total_kv * kv_cols);
  bf16* x = carve.take<bf16>(total_kv * rank);
  bf16* w_copy = carve.take<bf16>(int64_t(kv_cols) * rank);
  convert_rows(elem_of(latent.dtype()), latent.raw_data(), latent.strides()[0], 0, 1, Elem::kBF16, x, rank, rank,
               total_kv, stream);
  Weight w_bf16 = kv_b;
  if (kv_b.weight.dtype() != DType::kBF16) {
    weight_to_bf16(kv_b, w_copy, stream);
    w_bf16 = Weight{device_view(w_copy, {kv_cols, rank}, DType::kBF16), Tensor()};
  }
  Tensor y = device_view(kv, {total_kv, kv_cols}, DType::kBF16);
  cuda::linear(device_view(x, {total_kv, rank}, DType::kBF16), w_bf16, y);
  p.kv = kv;
  if (!q_direct) {
    bf16* qb = carve.take<bf16>(total_q * heads * qk);
    convert_rows(elem_of(q.dtype()), q.raw_data(), q.strides()[0], q.strides()[1], heads, Elem::kBF16, qb, qk, qk,
                 total_q * heads, stream);
    p.q = qb;
    p.q_type = Elem::kBF16;
    p.q_row = int64_t(heads) * qk;
    p.q_head = qk;
  }
  mla::prefill_flash(p, stream);
}

}  // namespace pdserve::ops::cuda
