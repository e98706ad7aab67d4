#include "ops/attention.h"

#include "ops/check.h"
#include "ops/cpu/attention.h"

namespace pdserve::ops {

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

}  // namespace

void kv_write(Tensor& pool, const std::vector<int32_t>& page_table, int64_t start_pos, const Tensor& latent) {
  constexpr const char* op = "kv_write";
  check_pool(op, pool, -1);
  check_rows(op, "latent", latent, pool.size(2));
  if (start_pos < 0) fail(op, fmt::format("start_pos must be >= 0, got {}", start_pos));
  if (!detail::all_on_cpu(op, {&pool, &latent})) detail::no_cuda(op);
  cpu::kv_write(pool, page_table, start_pos, latent);
}

void kv_gather(const Tensor& pool, const std::vector<int32_t>& page_table, int64_t num_tokens, Tensor& out) {
  constexpr const char* op = "kv_gather";
  check_pool(op, pool, -1);
  if (num_tokens < 0) fail(op, fmt::format("num_tokens must be >= 0, got {}", num_tokens));
  check_rows(op, "out", out, pool.size(2));
  if (out.size(0) != num_tokens)
    fail(op, fmt::format("out {} must have num_tokens = {} rows", shape_to_string(out.shape()), num_tokens));
  if (!detail::all_on_cpu(op, {&pool, &out})) detail::no_cuda(op);
  cpu::kv_gather(pool, page_table, num_tokens, out);
}

void mla_prefill(const Tensor& q, const Tensor& latent, const Weight& kv_b, const MlaDims& d, int64_t prefix_len,
                 float scale, Tensor& out) {
  constexpr const char* op = "mla_prefill";
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
  detail::check_weight(op, "kv_b", kv_b);
  if (kv_b.rows() != d.num_heads * (d.qk_nope_head_dim + d.v_head_dim) || kv_b.cols() != d.kv_lora_rank)
    fail(op, fmt::format("kv_b {} must be [{} * ({} + {}), {}]", shape_to_string(kv_b.weight.shape()), d.num_heads,
                         d.qk_nope_head_dim, d.v_head_dim, d.kv_lora_rank));
  detail::check_dtype(op, "out", out, DType::kF32);
  detail::check_shape(op, "out", out, {s, d.num_heads, d.v_head_dim});
  detail::check_contiguous(op, "out", out);
  if (!detail::all_on_cpu(op, {&q, &latent, &kv_b.weight, &kv_b.scale_inv, &out})) detail::no_cuda(op);
  cpu::mla_prefill(q, latent, kv_b, d, prefix_len, scale, out);
}

void mla_decode(const Tensor& q, const Tensor& pool, const std::vector<std::vector<int32_t>>& page_tables,
                const std::vector<int64_t>& seq_lens, const Tensor& w_uk, const Tensor& w_uv, const MlaDims& d,
                float scale, Tensor& out) {
  constexpr const char* op = "mla_decode";
  check_dims(op, d);
  detail::check_dtype(op, "q", q, DType::kF32);
  detail::check_rank(op, "q", q, 3);
  detail::check_last_dim_contiguous(op, "q", q);
  const int64_t b = q.size(0);
  if (q.size(1) != d.num_heads || q.size(2) != d.qk_head_dim())
    fail(op, fmt::format("q {} must be [B, {}, {}]", shape_to_string(q.shape()), d.num_heads, d.qk_head_dim()));
  check_pool(op, pool, d.latent_dim());
  if (static_cast<int64_t>(page_tables.size()) != b || static_cast<int64_t>(seq_lens.size()) != b)
    fail(op, fmt::format("batch of {} needs as many page tables and seq_lens, got {} and {}", b, page_tables.size(),
                         seq_lens.size()));
  for (int64_t i = 0; i < b; ++i)
    if (seq_lens[i] <= 0) fail(op, fmt::format("seq_lens[{}] = {} must be >= 1", i, seq_lens[i]));
  detail::check_dtype(op, "w_uk", w_uk, DType::kF32);
  detail::check_shape(op, "w_uk", w_uk, {d.num_heads, d.qk_nope_head_dim, d.kv_lora_rank});
  detail::check_contiguous(op, "w_uk", w_uk);
  detail::check_dtype(op, "w_uv", w_uv, DType::kF32);
  detail::check_shape(op, "w_uv", w_uv, {d.num_heads, d.v_head_dim, d.kv_lora_rank});
  detail::check_contiguous(op, "w_uv", w_uv);
  detail::check_dtype(op, "out", out, DType::kF32);
  detail::check_shape(op, "out", out, {b, d.num_heads, d.v_head_dim});
  detail::check_contiguous(op, "out", out);
  if (!detail::all_on_cpu(op, {&q, &pool, &w_uk, &w_uv, &out})) detail::no_cuda(op);
  cpu::mla_decode(q, pool, page_tables, seq_lens, w_uk, w_uv, d, scale, out);
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
