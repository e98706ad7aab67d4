#include "ops/attention.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "ops/check.h"
#include "ops/cpu/attention.h"
#ifdef PDSERVE_HAVE_CUDA
#include "ops/cuda/attention.h"
#endif

namespace pdserve::ops {

using detail::check_defined;
using detail::fail;

namespace {

void check_dims(const char* op, const MlaDims& d) {
  if (d.num_heads <= 0 || d.qk_nope_head_dim <= 0 || d.qk_rope_head_dim <= 0 || d.v_head_dim <= 0 ||
      d.kv_lora_rank <= 0)
    fail(op, fmt::format("MLA dims must be positive (heads {}, nope {}, rope {}, v {}, kv_lora_rank {})", d.num_heads,
                         d.qk_nope_head_dim, d.qk_rope_head_dim, d.v_head_dim, d.kv_lora_rank));
}

// pool: [num_pages, page_size, latent_dim] f32, contiguous.
void check_pool(const char* op, const Tensor& pool, int64_t latent_dim) {
  detail::check_dtype(op, "pool", pool, DType::kF32);
  detail::check_rank(op, "pool", pool, 3);
  detail::check_contiguous(op, "pool", pool);
  if (pool.size(1) <= 0) fail(op, fmt::format("pool {} has page_size 0", shape_to_string(pool.shape())));
  if (latent_dim >= 0 && pool.size(2) != latent_dim)
    fail(op, fmt::format("pool {} must have latent_dim {} per slot", shape_to_string(pool.shape()), latent_dim));
}

void check_rows(const char* op, const char* name, const Tensor& t, int64_t width) {
  detail::check_dtype(op, name, t, DType::kF32);
  detail::check_rank(op, name, t, 2);
  detail::check_last_dim_contiguous(op, name, t);
  if (t.size(1) != width) fail(op, fmt::format("{} {} must have {} columns", name, shape_to_string(t.shape()), width));
}

void check_float_act(const char* op, const char* name, const Tensor& t) {
  check_defined(op, name, t);
  if (t.dtype() != DType::kF32 && t.dtype() != DType::kBF16)
    fail(op, fmt::format("{} must be f32 or bf16, got {} {}", name, dtype_name(t.dtype()), shape_to_string(t.shape())));
}

// pool: [num_pages, page_size, latent_dim] f32 or bf16, contiguous.
void check_paged_pool(const char* op, const Tensor& pool, int64_t latent_dim) {
  check_float_act(op, "pool", pool);
  detail::check_rank(op, "pool", pool, 3);
  detail::check_contiguous(op, "pool", pool);
  if (pool.size(1) <= 0) fail(op, fmt::format("pool {} has page_size 0", shape_to_string(pool.shape())));
  if (latent_dim >= 0 && pool.size(2) != latent_dim)
    fail(op, fmt::format("pool {} must have latent_dim {} per slot", shape_to_string(pool.shape()), latent_dim));
}

void check_i32(const char* op, const char* name, const Tensor& t, int64_t rank) {
  detail::check_dtype(op, name, t, DType::kI32);
  detail::check_rank(op, name, t, rank);
  if (rank == 1)
    detail::check_contiguous(op, name, t);
  else
    detail::check_last_dim_contiguous(op, name, t);
}

// A host i32 tensor with the given values, moved to `device`.
Tensor i32_tensor(const std::vector<int32_t>& v, const Shape& shape, Device device) {
  Tensor t = Tensor::empty(shape, DType::kI32);
  if (!v.empty()) std::memcpy(t.data<int32_t>(), v.data(), v.size() * sizeof(int32_t));
  return device == Device::kCpu ? t : t.to(device);
}

int32_t as_i32(const char* op, int64_t v) {
  if (v < 0 || v > INT32_MAX) fail(op, fmt::format("{} does not fit the i32 tables of the paged ops", v));
  return static_cast<int32_t>(v);
}

// Host f32 view or copy of a host f32/bf16 tensor.
Tensor host_f32(const Tensor& t) { return t.dtype() == DType::kF32 ? t : t.to_f32(); }
// The same, contiguous.
Tensor dense_f32(const Tensor& t) { return t.dtype() == DType::kF32 && t.is_contiguous() ? t : t.to_f32(); }

// Copies a contiguous host f32 tensor into a contiguous host f32/bf16 tensor of the same size.
void store_from_f32(const Tensor& src, Tensor& dst) {
  if (dst.dtype() == DType::kF32)
    std::memcpy(dst.raw_data(), src.raw_data(), src.nbytes());
  else
    convert_from_f32(dst.dtype(), src.data<float>(), dst.raw_data(), static_cast<size_t>(src.numel()));
}

// The slot of (b, pos) in a host pool, after checking the table covers it.
char* paged_slot(const char* op, const Tensor& pool, const Tensor& table, int32_t b, int32_t pos) {
  const int64_t page_size = pool.size(1);
  if (b < 0 || b >= table.size(0)) throw std::out_of_range(fmt::format("{}: batch id {} outside the page table's {} rows", op, b, table.size(0)));
  if (pos < 0 || pos / page_size >= table.size(1))
    throw std::out_of_range(fmt::format("{}: position {} outside the {} pages of page table row {}", op, pos,
                                        table.size(1), b));
  const int32_t page = table.data<int32_t>()[b * table.strides()[0] + pos / page_size];
  if (page < 0 || page >= pool.size(0))
    throw std::out_of_range(fmt::format("{}: page table entry {} of row {} is {}, outside the pool of {} pages", op,
                                        pos / page_size, b, page, pool.size(0)));
  return static_cast<char*>(pool.raw_data()) +
         (static_cast<int64_t>(page) * page_size + pos % page_size) * pool.size(2) * dtype_size(pool.dtype());
}

void check_weight_dims(const char* op, const Weight& kv_b, const MlaDims& d) {
  detail::check_weight(op, "kv_b", kv_b);
  if (kv_b.rows() != d.num_heads * (d.qk_nope_head_dim + d.v_head_dim) || kv_b.cols() != d.kv_lora_rank)
    fail(op, fmt::format("kv_b {} must be [{} * ({} + {}), {}]", shape_to_string(kv_b.weight.shape()), d.num_heads,
                         d.qk_nope_head_dim, d.v_head_dim, d.kv_lora_rank));
}

}  // namespace

// ---- vector page tables ---------------------------------------------------------------------------

namespace {

// Host check that `table` maps tokens [0, num_tokens) (the GPU cannot check its entries).
void check_table(const char* op, const std::vector<int32_t>& table, int64_t num_tokens, const Tensor& pool) {
  const int64_t need = (num_tokens + pool.size(1) - 1) / pool.size(1);
  if (static_cast<int64_t>(table.size()) < need)
    throw std::out_of_range(fmt::format("{}: page table has {} pages, {} tokens need {}", op, table.size(), num_tokens, need));
  for (int64_t i = 0; i < need; ++i)
    if (table[i] < 0 || table[i] >= pool.size(0))
      throw std::out_of_range(fmt::format("{}: page table entry {} = {} is outside the pool of {} pages", op, i,
                                          table[i], pool.size(0)));
}

// The paged-op arguments for tokens [start, start + n) of one sequence, on `device`.
struct OneSeq {
  Tensor table, batch_ids, positions;
  OneSeq(const std::vector<int32_t>& t, int64_t start, int64_t n, Device device) {
    table = i32_tensor(t, {1, std::max<int64_t>(1, static_cast<int64_t>(t.size()))}, device);
    std::vector<int32_t> pos(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(start + i);
    batch_ids = i32_tensor(std::vector<int32_t>(static_cast<size_t>(n), 0), {n}, device);
    positions = i32_tensor(pos, {n}, device);
  }
};

}  // namespace

void kv_write(Tensor& pool, const std::vector<int32_t>& page_table, int64_t start_pos, const Tensor& latent) {
  constexpr const char* op = "kv_write";
  if (start_pos < 0) fail(op, fmt::format("start_pos must be >= 0, got {}", start_pos));
  if (!detail::all_on_cpu(op, {&pool, &latent})) {
    check_paged_pool(op, pool, -1);
    check_float_act(op, "latent", latent);
    detail::check_rank(op, "latent", latent, 2);
    detail::check_last_dim_contiguous(op, "latent", latent);
    if (latent.size(1) != pool.size(2)) fail(op, fmt::format("latent {} must have {} columns", shape_to_string(latent.shape()), pool.size(2)));
    check_table(op, page_table, start_pos + latent.size(0), pool);
    as_i32(op, start_pos + latent.size(0));
    const OneSeq a(page_table, start_pos, latent.size(0), Device::kCuda);
    return kv_write_paged(pool, a.table, a.batch_ids, a.positions, latent);
  }
  check_pool(op, pool, -1);
  check_rows(op, "latent", latent, pool.size(2));
  cpu::kv_write(pool, page_table, start_pos, latent);
}

void kv_gather(const Tensor& pool, const std::vector<int32_t>& page_table, int64_t num_tokens, Tensor& out) {
  constexpr const char* op = "kv_gather";
  if (num_tokens < 0) fail(op, fmt::format("num_tokens must be >= 0, got {}", num_tokens));
  if (!detail::all_on_cpu(op, {&pool, &out})) {
    check_paged_pool(op, pool, -1);
    check_float_act(op, "out", out);
    detail::check_shape(op, "out", out, {num_tokens, pool.size(2)});
    detail::check_last_dim_contiguous(op, "out", out);
    check_table(op, page_table, num_tokens, pool);
    as_i32(op, num_tokens);
    const OneSeq a(page_table, 0, num_tokens, Device::kCuda);
    return kv_gather_paged(pool, a.table, a.batch_ids, a.positions, out);
  }
  check_pool(op, pool, -1);
  check_rows(op, "out", out, pool.size(2));
  if (out.size(0) != num_tokens)
    fail(op, fmt::format("out {} must have num_tokens = {} rows", shape_to_string(out.shape()), num_tokens));
  cpu::kv_gather(pool, page_table, num_tokens, out);
}

void mla_prefill(const Tensor& q, const Tensor& latent, const Weight& kv_b, const MlaDims& d, int64_t prefix_len,
                 float scale, Tensor& out) {
  constexpr const char* op = "mla_prefill";
  if (!detail::all_on_cpu(op, {&q, &latent, &kv_b.weight, &kv_b.scale_inv, &out})) {
    detail::check_rank(op, "q", q, 3);
    if (prefix_len < 0 || latent.dim() != 2 || latent.size(0) != prefix_len + q.size(0))
      fail(op, fmt::format("latent {} must have prefix_len + S = {} + {} rows", shape_to_string(latent.shape()),
                           prefix_len, q.size(0)));
    const int32_t s = as_i32(op, q.size(0)), t = as_i32(op, latent.size(0));
    const Tensor cu_q = i32_tensor({0, s}, {2}, Device::kCuda), cu_kv = i32_tensor({0, t}, {2}, Device::kCuda);
    return mla_prefill_varlen(q, latent, kv_b, d, cu_q, cu_kv, s, scale, out);
  }
  check_dims(op, d);
  detail::check_dtype(op, "q", q, DType::kF32);
  detail::check_rank(op, "q", q, 3);
  detail::check_last_dim_contiguous(op, "q", q);
  const int64_t s = q.size(0);
  if (q.size(1) != d.num_heads || q.size(2) != d.qk_head_dim())
    fail(op, fmt::format("q {} must be [S, {}, {}]", shape_to_string(q.shape()), d.num_heads, d.qk_head_dim()));
  if (prefix_len < 0) fail(op, fmt::format("prefix_len must be >= 0, got {}", prefix_len));
  check_rows(op, "latent", latent, d.latent_dim());
  if (latent.size(0) != prefix_len + s)
    fail(op, fmt::format("latent {} must have prefix_len + S = {} + {} rows", shape_to_string(latent.shape()),
                         prefix_len, s));
  check_weight_dims(op, kv_b, d);
  detail::check_dtype(op, "out", out, DType::kF32);
  detail::check_shape(op, "out", out, {s, d.num_heads, d.v_head_dim});
  detail::check_contiguous(op, "out", out);
  cpu::mla_prefill(q, latent, kv_b, d, prefix_len, scale, out);
}

void mla_decode(const Tensor& q, const Tensor& pool, const std::vector<std::vector<int32_t>>& page_tables,
                const std::vector<int64_t>& seq_lens, const Tensor& w_uk, const Tensor& w_uv, const MlaDims& d,
                float scale, Tensor& out) {
  constexpr const char* op = "mla_decode";
  check_dims(op, d);
  detail::check_rank(op, "q", q, 3);
  const int64_t b = q.size(0);
  if (static_cast<int64_t>(page_tables.size()) != b || static_cast<int64_t>(seq_lens.size()) != b)
    fail(op, fmt::format("batch of {} needs as many page tables and seq_lens, got {} and {}", b, page_tables.size(),
                         seq_lens.size()));
  for (int64_t i = 0; i < b; ++i)
    if (seq_lens[i] <= 0) fail(op, fmt::format("seq_lens[{}] = {} must be >= 1", i, seq_lens[i]));
  if (!detail::all_on_cpu(op, {&q, &pool, &w_uk, &w_uv, &out})) {
    check_paged_pool(op, pool, d.latent_dim());
    size_t max_pages = 1;
    int64_t max_len = 1;
    for (int64_t i = 0; i < b; ++i) {
      check_table(op, page_tables[i], seq_lens[i], pool);
      max_pages = std::max(max_pages, page_tables[i].size());
      max_len = std::max(max_len, seq_lens[i]);
    }
    std::vector<int32_t> table(static_cast<size_t>(b) * max_pages, 0), lens(static_cast<size_t>(b));
    for (int64_t i = 0; i < b; ++i) {
      std::copy(page_tables[i].begin(), page_tables[i].end(), table.begin() + i * static_cast<int64_t>(max_pages));
      lens[i] = as_i32(op, seq_lens[i]);
    }
    const Tensor t = i32_tensor(table, {b, static_cast<int64_t>(max_pages)}, Device::kCuda);
    const Tensor l = i32_tensor(lens, {b}, Device::kCuda);
    return mla_decode_paged(q, pool, t, l, w_uk, w_uv, d, scale, out, max_len);
  }
  detail::check_dtype(op, "q", q, DType::kF32);
  detail::check_last_dim_contiguous(op, "q", q);
  if (q.size(1) != d.num_heads || q.size(2) != d.qk_head_dim())
    fail(op, fmt::format("q {} must be [B, {}, {}]", shape_to_string(q.shape()), d.num_heads, d.qk_head_dim()));
  check_pool(op, pool, d.latent_dim());
  detail::check_dtype(op, "w_uk", w_uk, DType::kF32);
  detail::check_shape(op, "w_uk", w_uk, {d.num_heads, d.qk_nope_head_dim, d.kv_lora_rank});
  detail::check_contiguous(op, "w_uk", w_uk);
  detail::check_dtype(op, "w_uv", w_uv, DType::kF32);
  detail::check_shape(op, "w_uv", w_uv, {d.num_heads, d.v_head_dim, d.kv_lora_rank});
  detail::check_contiguous(op, "w_uv", w_uv);
  detail::check_dtype(op, "out", out, DType::kF32);
  detail::check_shape(op, "out", out, {b, d.num_heads, d.v_head_dim});
  detail::check_contiguous(op, "out", out);
  cpu::mla_decode(q, pool, page_tables, seq_lens, w_uk, w_uv, d, scale, out);
}

// ---- tensor page tables ---------------------------------------------------------------------------

namespace {

void check_rows_ids(const char* op, const Tensor& pool, const Tensor& page_table, const Tensor& batch_ids,
                    const Tensor& positions, const char* rows_name, const Tensor& rows) {
  check_paged_pool(op, pool, -1);
  check_i32(op, "page_table", page_table, 2);
  check_i32(op, "batch_ids", batch_ids, 1);
  check_i32(op, "positions", positions, 1);
  check_float_act(op, rows_name, rows);
  detail::check_rank(op, rows_name, rows, 2);
  detail::check_last_dim_contiguous(op, rows_name, rows);
  const int64_t n = rows.size(0);
  if (rows.size(1) != pool.size(2))
    fail(op, fmt::format("{} {} must have latent_dim {} columns", rows_name, shape_to_string(rows.shape()), pool.size(2)));
  if (batch_ids.size(0) != n || positions.size(0) != n)
    fail(op, fmt::format("{} rows need as many batch_ids and positions, got {} and {}", n, batch_ids.size(0),
                         positions.size(0)));
}

}  // namespace

void kv_write_paged(Tensor& pool, const Tensor& page_table, const Tensor& batch_ids, const Tensor& positions,
                    const Tensor& latent) {
  constexpr const char* op = "kv_write_paged";
  check_rows_ids(op, pool, page_table, batch_ids, positions, "latent", latent);
  if (!detail::all_on_cpu(op, {&pool, &page_table, &batch_ids, &positions, &latent})) {
#ifdef PDSERVE_HAVE_CUDA
    return cuda::kv_write_paged(pool, page_table, batch_ids, positions, latent);
#else
    detail::no_cuda(op);
#endif
  }
  const int64_t ld = pool.size(2);
  const Tensor src = host_f32(latent);
  for (int64_t i = 0; i < latent.size(0); ++i) {
    char* dst = paged_slot(op, pool, page_table, batch_ids.data<int32_t>()[i], positions.data<int32_t>()[i]);
    const float* row = src.data<float>() + i * src.strides()[0];
    if (pool.dtype() == DType::kF32)
      std::memcpy(dst, row, static_cast<size_t>(ld) * sizeof(float));
    else
      convert_from_f32(pool.dtype(), row, dst, static_cast<size_t>(ld));
  }
}

void kv_gather_paged(const Tensor& pool, const Tensor& page_table, const Tensor& batch_ids, const Tensor& positions,
                     Tensor& out) {
  constexpr const char* op = "kv_gather_paged";
  check_rows_ids(op, pool, page_table, batch_ids, positions, "out", out);
  if (!detail::all_on_cpu(op, {&pool, &page_table, &batch_ids, &positions, &out})) {
#ifdef PDSERVE_HAVE_CUDA
    return cuda::kv_gather_paged(pool, page_table, batch_ids, positions, out);
#else
    detail::no_cuda(op);
#endif
  }
  const int64_t ld = pool.size(2);
  std::vector<float> row(static_cast<size_t>(ld));
  for (int64_t i = 0; i < out.size(0); ++i) {
    const char* src = paged_slot(op, pool, page_table, batch_ids.data<int32_t>()[i], positions.data<int32_t>()[i]);
    convert_to_f32(pool.dtype(), src, row.data(), row.size());
    char* dst = static_cast<char*>(out.raw_data()) + i * out.strides()[0] * dtype_size(out.dtype());
    if (out.dtype() == DType::kF32)
      std::memcpy(dst, row.data(), row.size() * sizeof(float));
    else
      convert_from_f32(out.dtype(), row.data(), dst, row.size());
  }
}

void mla_decode_paged(const Tensor& q, const Tensor& pool, const Tensor& page_table, const Tensor& seq_lens,
                      const Tensor& w_uk, const Tensor& w_uv, const MlaDims& d, float scale, Tensor& out,
                      int64_t max_seq_len, const Tensor& workspace) {
  constexpr const char* op = "mla_decode_paged";
  check_dims(op, d);
  check_float_act(op, "q", q);
  detail::check_rank(op, "q", q, 3);
  detail::check_last_dim_contiguous(op, "q", q);
  const int64_t b = q.size(0);
  if (q.size(1) != d.num_heads || q.size(2) != d.qk_head_dim())
    fail(op, fmt::format("q {} must be [B, {}, {}]", shape_to_string(q.shape()), d.num_heads, d.qk_head_dim()));
  check_paged_pool(op, pool, d.latent_dim());
  check_i32(op, "page_table", page_table, 2);
  if (page_table.size(0) != b) fail(op, fmt::format("page_table {} must have B = {} rows", shape_to_string(page_table.shape()), b));
  check_i32(op, "seq_lens", seq_lens, 1);
  detail::check_shape(op, "seq_lens", seq_lens, {b});
  check_float_act(op, "w_uk", w_uk);
  detail::check_shape(op, "w_uk", w_uk, {d.num_heads, d.qk_nope_head_dim, d.kv_lora_rank});
  detail::check_last_dim_contiguous(op, "w_uk", w_uk);
  check_float_act(op, "w_uv", w_uv);
  detail::check_shape(op, "w_uv", w_uv, {d.num_heads, d.v_head_dim, d.kv_lora_rank});
  detail::check_last_dim_contiguous(op, "w_uv", w_uv);
  check_float_act(op, "out", out);
  detail::check_shape(op, "out", out, {b, d.num_heads, d.v_head_dim});
  detail::check_contiguous(op, "out", out);
  if (!detail::all_on_cpu(op, {&q, &pool, &page_table, &seq_lens, &w_uk, &w_uv, &out})) {
#ifdef PDSERVE_HAVE_CUDA
    return cuda::mla_decode_paged(q, pool, page_table, seq_lens, w_uk, w_uv, d, scale, out, max_seq_len, workspace);
#else
    detail::no_cuda(op);
#endif
  }
  (void)max_seq_len, (void)workspace;  // GPU-only knobs
  // CPU: the reference op on f32 copies (a bf16 pool is widened whole: test sizes only).
  std::vector<std::vector<int32_t>> tables(static_cast<size_t>(b));
  std::vector<int64_t> lens(static_cast<size_t>(b));
  for (int64_t i = 0; i < b; ++i) {
    lens[i] = seq_lens.data<int32_t>()[i];
    if (lens[i] <= 0) fail(op, fmt::format("seq_lens[{}] = {} must be >= 1", i, lens[i]));
    const int64_t need = (lens[i] + pool.size(1) - 1) / pool.size(1);
    if (need > page_table.size(1))
      throw std::out_of_range(fmt::format("{}: {} tokens of sequence {} need {} pages, the table has {}", op, lens[i],
                                          i, need, page_table.size(1)));
    const int32_t* row = page_table.data<int32_t>() + i * page_table.strides()[0];
    tables[i].assign(row, row + need);
  }
  Tensor out_f32 = out.dtype() == DType::kF32 ? out : Tensor::empty(out.shape(), DType::kF32);
  cpu::mla_decode(host_f32(q), host_f32(pool), tables, lens, dense_f32(w_uk), dense_f32(w_uv), d, scale, out_f32);
  if (out.dtype() != DType::kF32) store_from_f32(out_f32, out);
}

int64_t mla_decode_workspace_bytes(int64_t batch, const MlaDims& d, int64_t max_seq_len, DType pool_dtype) {
#ifdef PDSERVE_HAVE_CUDA
  return cuda::mla_decode_workspace_bytes(batch, d, max_seq_len, pool_dtype);
#else
  (void)batch, (void)d, (void)max_seq_len, (void)pool_dtype;
  return 0;
#endif
}

void mla_prefill_varlen(const Tensor& q, const Tensor& latent, const Weight& kv_b, const MlaDims& d,
                        const Tensor& cu_q_lens, const Tensor& cu_kv_lens, int64_t max_q_len, float scale, Tensor& out,
                        const Tensor& workspace) {
  constexpr const char* op = "mla_prefill_varlen";
  check_dims(op, d);
  check_float_act(op, "q", q);
  detail::check_rank(op, "q", q, 3);
  detail::check_last_dim_contiguous(op, "q", q);
  if (q.size(1) != d.num_heads || q.size(2) != d.qk_head_dim())
    fail(op, fmt::format("q {} must be [S, {}, {}]", shape_to_string(q.shape()), d.num_heads, d.qk_head_dim()));
  check_float_act(op, "latent", latent);
  detail::check_rank(op, "latent", latent, 2);
  detail::check_last_dim_contiguous(op, "latent", latent);
  if (latent.size(1) != d.latent_dim())
    fail(op, fmt::format("latent {} must have {} columns", shape_to_string(latent.shape()), d.latent_dim()));
  check_weight_dims(op, kv_b, d);
  check_i32(op, "cu_q_lens", cu_q_lens, 1);
  check_i32(op, "cu_kv_lens", cu_kv_lens, 1);
  if (cu_q_lens.size(0) < 1 || cu_kv_lens.size(0) != cu_q_lens.size(0))
    fail(op, fmt::format("cu_q_lens {} and cu_kv_lens {} must both be [n + 1]", shape_to_string(cu_q_lens.shape()),
                         shape_to_string(cu_kv_lens.shape())));
  if (max_q_len < 0) fail(op, fmt::format("max_q_len must be >= 0, got {}", max_q_len));
  check_float_act(op, "out", out);
  detail::check_shape(op, "out", out, {q.size(0), d.num_heads, d.v_head_dim});
  detail::check_contiguous(op, "out", out);
  if (!detail::all_on_cpu(op, {&q, &latent, &kv_b.weight, &kv_b.scale_inv, &cu_q_lens, &cu_kv_lens, &out})) {
#ifdef PDSERVE_HAVE_CUDA
    return cuda::mla_prefill_varlen(q, latent, kv_b, d, cu_q_lens, cu_kv_lens, max_q_len, scale, out, workspace);
#else
    detail::no_cuda(op);
#endif
  }
  (void)workspace;
  const int64_t n = cu_q_lens.size(0) - 1;
  const int32_t* cq = cu_q_lens.data<int32_t>();
  const int32_t* ck = cu_kv_lens.data<int32_t>();
  if (cq[0] != 0 || ck[0] != 0 || cq[n] != q.size(0) || ck[n] != latent.size(0))
    fail(op, fmt::format("cu_q_lens must run from 0 to {} and cu_kv_lens from 0 to {}", q.size(0), latent.size(0)));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t q0 = cq[i], q_len = cq[i + 1] - q0, k0 = ck[i], kv_len = ck[i + 1] - k0;
    if (q_len < 0 || kv_len < q_len || q_len > max_q_len)
      fail(op, fmt::format("sequence {} has q_len {} and kv_len {} (need 0 <= q_len <= kv_len, q_len <= max_q_len {})",
                           i, q_len, kv_len, max_q_len));
    if (q_len == 0) continue;
    const Tensor qi = host_f32(q.slice(0, q0, q0 + q_len));
    const Tensor li = host_f32(latent.slice(0, k0, k0 + kv_len));
    Tensor oi = out.slice(0, q0, q0 + q_len);
    Tensor oi_f32 = out.dtype() == DType::kF32 ? oi : Tensor::empty(oi.shape(), DType::kF32);
    cpu::mla_prefill(qi, li, kv_b, d, kv_len - q_len, scale, oi_f32);
    if (out.dtype() != DType::kF32) store_from_f32(oi_f32, oi);
  }
}

int64_t mla_prefill_workspace_bytes(int64_t total_q, int64_t total_kv, const MlaDims& d, DType latent_dtype,
                                    DType q_dtype) {
#ifdef PDSERVE_HAVE_CUDA
  return cuda::mla_prefill_workspace_bytes(total_q, total_kv, d, latent_dtype, q_dtype);
#else
  (void)total_q, (void)total_kv, (void)d, (void)latent_dtype, (void)q_dtype;
  return 0;
#endif
}

void split_kv_b(const Weight& kv_b, const MlaDims& d, Tensor& w_uk, Tensor& w_uv) {
  constexpr const char* op = "split_kv_b";
  check_dims(op, d);
  detail::check_weight(op, "kv_b", kv_b);
  if (kv_b.rows() != d.num_heads * (d.qk_nope_head_dim + d.v_head_dim) || kv_b.cols() != d.kv_lora_rank)
    fail(op, fmt::format("kv_b {} must be [{} * ({} + {}), {}]", shape_to_string(kv_b.weight.shape()), d.num_heads,
                         d.qk_nope_head_dim, d.v_head_dim, d.kv_lora_rank));
  detail::check_dtype(op, "w_uk", w_uk, DType::kF32);
  detail::check_shape(op, "w_uk", w_uk, {d.num_heads, d.qk_nope_head_dim, d.kv_lora_rank});
  detail::check_contiguous(op, "w_uk", w_uk);
  detail::check_dtype(op, "w_uv", w_uv, DType::kF32);
  detail::check_shape(op, "w_uv", w_uv, {d.num_heads, d.v_head_dim, d.kv_lora_rank});
  detail::check_contiguous(op, "w_uv", w_uv);
  if (!detail::all_on_cpu(op, {&kv_b.weight, &kv_b.scale_inv, &w_uk, &w_uv})) detail::no_cuda(op);
  cpu::split_kv_b(kv_b, d, w_uk, w_uv);
}

}  // namespace pdserve::ops
