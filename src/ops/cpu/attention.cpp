#include "ops/cpu/attention.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

namespace pdserve::ops::cpu {

namespace {

int gi(int64_t v) { return static_cast<int>(v); }

// Throws unless the page table maps tokens [0, num_tokens) to pages that exist in the pool.
void check_pages(const char* op, const std::vector<int32_t>& table, int64_t num_tokens, int64_t page_size,
                 int64_t num_pages) {
  const int64_t need = (num_tokens + page_size - 1) / page_size;
  if (static_cast<int64_t>(table.size()) < need)
    throw std::out_of_range(std::string(op) + ": page table has " + std::to_string(table.size()) + " pages, " +
                            std::to_string(num_tokens) + " tokens need " + std::to_string(need));
  for (int64_t i = 0; i < need; ++i)
    if (table[i] < 0 || table[i] >= num_pages)
      throw std::out_of_range(std::string(op) + ": page table entry " + std::to_string(i) + " = " +
                              std::to_string(table[i]) + " is outside the pool of " + std::to_string(num_pages) +
                              " pages");
}

float* slot(const Tensor& pool, const std::vector<int32_t>& table, int64_t pos) {
  const int64_t page_size = pool.size(1), ld = pool.size(2);
  return pool.data<float>() + (static_cast<int64_t>(table[pos / page_size]) * page_size + pos % page_size) * ld;
}

// Numerically safe in-place softmax of row[0, n); entries past n are zeroed.
void softmax_row(float* row, int64_t n, int64_t width) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) mx = std::max(mx, row[j]);
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    row[j] = std::exp(row[j] - mx);
    sum += row[j];
  }
  const float inv = 1.0f / sum;
  for (int64_t j = 0; j < n; ++j) row[j] *= inv;
  for (int64_t j = n; j < width; ++j) row[j] = 0.0f;
}

}  // namespace

void kv_write(Tensor& pool, const std::vector<int32_t>& page_table, int64_t start_pos, const Tensor& latent) {
  const int64_t n = latent.size(0), ld = pool.size(2);
  check_pages("kv_write", page_table, start_pos + n, pool.size(1), pool.size(0));
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(slot(pool, page_table, start_pos + i), latent.data<float>() + i * latent.strides()[0],
                static_cast<size_t>(ld) * sizeof(float));
}

void kv_gather(const Tensor& pool, const std::vector<int32_t>& page_table, int64_t num_tokens, Tensor& out) {
  const int64_t ld = pool.size(2);
  check_pages("kv_gather", page_table, num_tokens, pool.size(1), pool.size(0));
  for (int64_t t = 0; t < num_tokens; ++t)
    std::memcpy(out.data<float>() + t * out.strides()[0], slot(pool, page_table, t),
                static_cast<size_t>(ld) * sizeof(float));
}

void mla_prefill(const Tensor& q, const Tensor& latent, const Weight& kv_b, const MlaDims& d, int64_t prefix_len,
                 float scale, Tensor& out) {
  const int64_t s_len = q.size(0), t_len = latent.size(0), h = d.num_heads;
  const int64_t dn = d.qk_nope_head_dim, dr = d.qk_rope_head_dim, dv = d.v_head_dim, r = d.kv_lora_rank;
  const int64_t kv_w = dn + dv;
  if (s_len == 0) return;
  // BLAS rejects a leading dimension below the row width, even for a single-row view.
  const int64_t ldl = std::max(latent.strides()[0], d.latent_dim());
  const int64_t ldq = std::max(q.strides()[0], d.qk_head_dim());
  const float* c = latent.data<float>();
  // One head at a time: expanding all heads at once (as HF does) would hold T x H x 256 floats,
  // 512 MiB for a 4k-token V3 prompt; per head it is T x 256.
  thread_local std::vector<float> w_head, kv, scores;
  w_head.resize(static_cast<size_t>(kv_w * r));
  kv.resize(static_cast<size_t>(t_len * kv_w));
  scores.resize(static_cast<size_t>(s_len * t_len));
  for (int64_t hh = 0; hh < h; ++hh) {
    kv_b.dequantize_rows(hh * kv_w, (hh + 1) * kv_w, w_head.data());
    // kv[t] = [k_nope | v] of token t for this head = c_t @ W_h^T.
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, gi(t_len), gi(kv_w), gi(r), 1.0f, c, gi(ldl), w_head.data(),
                gi(r), 0.0f, kv.data(), gi(kv_w));
    const float* qh = q.data<float>() + hh * q.strides()[1];
    // scores = scale * (q_nope K_nope^T + q_pe K_pe^T); K_pe is the one shared rope key per token.
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, gi(s_len), gi(t_len), gi(dn), scale, qh, gi(ldq), kv.data(),
                gi(kv_w), 0.0f, scores.data(), gi(t_len));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, gi(s_len), gi(t_len), gi(dr), scale, qh + dn, gi(ldq),
                c + r, gi(ldl), 1.0f, scores.data(), gi(t_len));
    for (int64_t i = 0; i < s_len; ++i) softmax_row(scores.data() + i * t_len, prefix_len + i + 1, t_len);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, gi(s_len), gi(dv), gi(t_len), 1.0f, scores.data(),
                gi(t_len), kv.data() + dn, gi(kv_w), 0.0f, out.data<float>() + hh * dv, gi(h * dv));
  }
}

void mla_decode(const Tensor& q, const Tensor& pool, const std::vector<std::vector<int32_t>>& page_tables,
                const std::vector<int64_t>& seq_lens, const Tensor& w_uk, const Tensor& w_uv, const MlaDims& d,
                float scale, Tensor& out) {
  const int64_t batch = q.size(0), h = d.num_heads;
  const int64_t dn = d.qk_nope_head_dim, dr = d.qk_rope_head_dim, dv = d.v_head_dim, r = d.kv_lora_rank;
  const int64_t ld = d.latent_dim();
  for (int64_t b = 0; b < batch; ++b) check_pages("mla_decode", page_tables[b], seq_lens[b], pool.size(1), pool.size(0));

  thread_local std::vector<float> cache, q_abs, scores, o_lat;
  q_abs.resize(static_cast<size_t>(h * ld));
  o_lat.resize(static_cast<size_t>(h * r));
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t n = seq_lens[b];
    cache.resize(static_cast<size_t>(n * ld));
    for (int64_t t = 0; t < n; ++t)
      std::memcpy(cache.data() + t * ld, slot(pool, page_tables[b], t), static_cast<size_t>(ld) * sizeof(float));
    // Absorbed query per head: [W_UK^T q_nope ; q_pe], so one 576-wide dot product scores a token.
    for (int64_t hh = 0; hh < h; ++hh) {
      const float* qh = q.data<float>() + b * q.strides()[0] + hh * q.strides()[1];
      float* qa = q_abs.data() + hh * ld;
      cblas_sgemv(CblasRowMajor, CblasTrans, gi(dn), gi(r), 1.0f, w_uk.data<float>() + hh * dn * r, gi(r), qh, 1,
                  0.0f, qa, 1);
      std::memcpy(qa + r, qh + dn, static_cast<size_t>(dr) * sizeof(float));
    }
    scores.resize(static_cast<size_t>(h * n));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, gi(h), gi(n), gi(ld), scale, q_abs.data(), gi(ld),
                cache.data(), gi(ld), 0.0f, scores.data(), gi(n));
    for (int64_t hh = 0; hh < h; ++hh) softmax_row(scores.data() + hh * n, n, n);
    // The latent c doubles as the value: o_lat = P C, then each head maps it out through W_UV.
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, gi(h), gi(r), gi(n), 1.0f, scores.data(), gi(n),
                cache.data(), gi(ld), 0.0f, o_lat.data(), gi(r));
    for (int64_t hh = 0; hh < h; ++hh) {
      float* oh = out.data<float>() + (b * h + hh) * dv;
      cblas_sgemv(CblasRowMajor, CblasNoTrans, gi(dv), gi(r), 1.0f, w_uv.data<float>() + hh * dv * r, gi(r),
                  o_lat.data() + hh * r, 1, 0.0f, oh, 1);
    }
  }
}

void split_kv_b(const Weight& kv_b, const MlaDims& d, Tensor& w_uk, Tensor& w_uv) {
  const int64_t dn = d.qk_nope_head_dim, dv = d.v_head_dim, r = d.kv_lora_rank;
  for (int64_t hh = 0; hh < d.num_heads; ++hh) {
    const int64_t row = hh * (dn + dv);
    kv_b.dequantize_rows(row, row + dn, w_uk.data<float>() + hh * dn * r);
    kv_b.dequantize_rows(row + dn, row + dn + dv, w_uv.data<float>() + hh * dv * r);
  }
}

}  // namespace pdserve::ops::cpu
