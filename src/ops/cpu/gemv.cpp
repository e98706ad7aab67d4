#include "ops/cpu/gemv.h"

#include <immintrin.h>

#include <algorithm>
#include <array>

namespace pdserve::ops::cpu {
namespace {

// f32 value of every e4m3 byte, for the AVX2 gather.
const std::array<float, 256>& fp8_table() {
  static const std::array<float, 256> t = [] {
    std::array<float, 256> v{};
    for (int i = 0; i < 256; ++i) v[static_cast<size_t>(i)] = fp8e4m3_to_f32(static_cast<uint8_t>(i));
    return v;
  }();
  return t;
}

__attribute__((target("avx2,fma"))) inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
  return _mm_cvtss_f32(lo);
}

__attribute__((target("avx2,fma"))) inline __m256 load_bf16x8(const uint16_t* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

__attribute__((target("avx2,fma"))) inline __m256 load_fp8x8(const uint8_t* p, const float* table) {
  const __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  return _mm256_i32gather_ps(table, idx, 4);
}

// Rows [r0, r1) of a bf16 weight; M activation rows (compile-time, so accumulators stay in
// registers).
template <int M>
__attribute__((target("avx2,fma"))) void bf16_rows(const float* x, int64_t ldx, const uint16_t* w, int64_t k, int64_t r0,
                                                   int64_t r1, float* y, int64_t ldy) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* wr = w + r * k;
    __m256 acc[M];
    for (int j = 0; j < M; ++j) acc[j] = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 8 <= k; c += 8) {
      const __m256 wv = load_bf16x8(wr + c);
      for (int j = 0; j < M; ++j) acc[j] = _mm256_fmadd_ps(_mm256_loadu_ps(x + j * ldx + c), wv, acc[j]);
    }
    for (int j = 0; j < M; ++j) {
      float s = hsum(acc[j]);
      for (int64_t t = c; t < k; ++t) s += x[j * ldx + t] * bf16_to_f32(wr[t]);
      y[j * ldy + r] = s;
    }
  }
}

// Rows [r0, r1) of an fp8 weight with 128x128 block scales: each 128-column chunk is summed, then
// scaled by its block's scale_inv.
template <int M>
__attribute__((target("avx2,fma"))) void fp8_rows(const float* x, int64_t ldx, const uint8_t* w, const float* scales,
                                                  int64_t scale_cols, int64_t k, int64_t r0, int64_t r1, float* y,
                                                  int64_t ldy) {
  const float* table = fp8_table().data();
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* wr = w + r * k;
    const float* srow = scales + (r / Weight::kBlock) * scale_cols;
    __m256 tot[M];
    for (int j = 0; j < M; ++j) tot[j] = _mm256_setzero_ps();
    for (int64_t c0 = 0; c0 < k; c0 += Weight::kBlock) {
      const int64_t c1 = std::min(k, c0 + Weight::kBlock);
      __m256 acc[M];
      for (int j = 0; j < M; ++j) acc[j] = _mm256_setzero_ps();
      int64_t c = c0;
      for (; c + 8 <= c1; c += 8) {
        const __m256 wv = load_fp8x8(wr + c, table);
        for (int j = 0; j < M; ++j) acc[j] = _mm256_fmadd_ps(_mm256_loadu_ps(x + j * ldx + c), wv, acc[j]);
      }
      const __m256 s = _mm256_set1_ps(srow[c0 / Weight::kBlock]);
      for (int j = 0; j < M; ++j) {
        // The tail (k not a multiple of 8) is added into lane 0 before scaling.
        float tail = 0;
        for (int64_t t = c; t < c1; ++t) tail += x[j * ldx + t] * table[wr[t]];
        acc[j] = _mm256_add_ps(acc[j], _mm256_setr_ps(tail, 0, 0, 0, 0, 0, 0, 0));
        tot[j] = _mm256_fmadd_ps(acc[j], s, tot[j]);
      }
    }
    for (int j = 0; j < M; ++j) y[j * ldy + r] = hsum(tot[j]);
  }
}

template <int M>
void run_rows(const float* x, int64_t ldx, const Weight& w, float* y, int64_t ldy) {
  const int64_t n = w.rows(), k = w.cols();
  // Rows in chunks of 16 over the threads; small weights stay on one thread (no fork cost).
  const int64_t chunk = 16, chunks = (n + chunk - 1) / chunk;
  const bool parallel = n * k >= (int64_t{1} << 18);
  if (w.weight.dtype() == DType::kBF16) {
    const auto* wp = w.weight.data<uint16_t>();
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t i = 0; i < chunks; ++i) bf16_rows<M>(x, ldx, wp, k, i * chunk, std::min(n, (i + 1) * chunk), y, ldy);
  } else {
    const auto* wp = w.weight.data<uint8_t>();
    const float* sp = w.scale_inv.data<float>();
    const int64_t sc = w.scale_inv.size(1);
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t i = 0; i < chunks; ++i) fp8_rows<M>(x, ldx, wp, sp, sc, k, i * chunk, std::min(n, (i + 1) * chunk), y, ldy);
  }
}

}  // namespace

bool small_m_linear(const float* x, int64_t ldx, int64_t m, const Weight& w, float* y, int64_t ldy) {
  static const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const DType dt = w.weight.dtype();
  if (!has_avx2 || m < 1 || m > kSmallM || (dt != DType::kBF16 && dt != DType::kF8E4M3)) return false;
  switch (m) {
    case 1: run_rows<1>(x, ldx, w, y, ldy); break;
    case 2: run_rows<2>(x, ldx, w, y, ldy); break;
    case 3: run_rows<3>(x, ldx, w, y, ldy); break;
    case 4: run_rows<4>(x, ldx, w, y, ldy); break;
    case 5: run_rows<5>(x, ldx, w, y, ldy); break;
    case 6: run_rows<6>(x, ldx, w, y, ldy); break;
    case 7: run_rows<7>(x, ldx, w, y, ldy); break;
    default: run_rows<8>(x, ldx, w, y, ldy); break;
  }
  return true;
}

}  // namespace pdserve::ops::cpu
