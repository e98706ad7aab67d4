// CUDA MLA ops against the CPU ops on the same random inputs: paged write/gather, absorbed decode
// (tensor-core bf16 path and exact f32 path), expanded prefill with prefixes, decode == prefill for
// the last token, and a CUDA-graph replay of decode. Device outputs are NaN-poisoned before each run.
//
// Error bound: max |gpu - cpu| / max |cpu| over the whole output. The CPU reads the same bf16 cache
// values (widened exactly), so a bf16 cache differs only by the GPU's bf16 rounding of the absorbed
// query, P and the latent output (2e-2); an f32 cache runs exact f32 kernels (1e-4).
#include <algorithm>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "gpu/gpu_test_util.h"
#include "ops/attention.h"
#include "ops/cuda/cuda_common.h"

namespace pdserve::gpu_test {
namespace {

constexpr float kScale = 0.1352337788608801f;  // DeepSeek-V3's softmax scale (model-spec §2.3)

ops::MlaDims v3_dims(int64_t heads = 128) {
  ops::MlaDims d;
  d.num_heads = heads;
  return d;
}

ops::MlaDims tiny_dims() {  // models/tiny-deepseek-v3
  ops::MlaDims d;
  d.num_heads = 4;
  d.qk_nope_head_dim = 32;
  d.qk_rope_head_dim = 16;
  d.v_head_dim = 32;
  d.kv_lora_rank = 64;
  return d;
}

// Uniform in [-scale, scale): cheap enough for pools of tens of millions of values.
Tensor uniform_host(const Shape& shape, uint64_t seed, float scale = 1.0f) {
  Tensor t = Tensor::empty(shape, DType::kF32);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    p[i] = (static_cast<float>(x >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f) * scale;
  }
  return t;
}

Tensor as_dtype(const Tensor& f32, DType dtype) {
  if (dtype == DType::kF32) return f32;
  Tensor t = Tensor::empty(f32.shape(), dtype);
  convert_from_f32(dtype, f32.data<float>(), t.raw_data(), static_cast<size_t>(f32.numel()));
  return t;
}

Tensor i32_host(const std::vector<int32_t>& v, const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::kI32);
  std::copy(v.begin(), v.end(), t.data<int32_t>());
  return t;
}

Tensor dev(const Tensor& t) { return t.to(Device::kCuda); }
Tensor host_f32(const Tensor& device_tensor) { return device_tensor.to(Device::kCpu).to_f32(); }

// Page tables with shuffled pages (token order never matches pool order); unused entries are -1
// so a kernel that reads past a sequence's pages faults instead of passing by luck.
struct Pages {
  int64_t num_pages = 0, max_pages = 0;
  std::vector<int32_t> table;  // [B, max_pages]
};

Pages make_pages(const std::vector<int64_t>& lens, int64_t page_size, uint64_t seed) {
  Pages p;
  for (int64_t l : lens) {
    const int64_t need = (l + page_size - 1) / page_size;
    p.num_pages += need;
    p.max_pages = std::max(p.max_pages, need);
  }
  p.num_pages += 3;
  std::vector<int32_t> perm(static_cast<size_t>(p.num_pages));
  std::iota(perm.begin(), perm.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(perm.begin(), perm.end(), rng);
  p.table.assign(lens.size() * static_cast<size_t>(p.max_pages), -1);
  size_t next = 0;
  for (size_t b = 0; b < lens.size(); ++b)
    for (int64_t i = 0; i < (lens[b] + page_size - 1) / page_size; ++i) p.table[b * p.max_pages + i] = perm[next++];
  return p;
}

// ---- paged write / gather -------------------------------------------------------------------------

TEST(MlaGpu, KvWriteGatherPagedMatchesCpu) {
  for (DType pool_dtype : {DType::kBF16, DType::kF32})
    for (int64_t page_size : {1, 16, 64}) {
      SCOPED_TRACE(fmt::format("pool {} page_size {}", dtype_name(pool_dtype), page_size));
      const std::vector<int64_t> lens = {5, 130, 64, 1};
      const Pages pages = make_pages(lens, page_size, 7 + page_size);
      const int64_t ld = 576;
      std::vector<int32_t> bids, pos;
      for (size_t b = 0; b < lens.size(); ++b)
        for (int64_t t = 0; t < lens[b]; ++t) bids.push_back(static_cast<int32_t>(b)), pos.push_back(static_cast<int32_t>(t));
      std::mt19937_64 rng(3);
      std::vector<size_t> order(bids.size());
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), rng);  // rows in any order
      std::vector<int32_t> bs, ps;
      for (size_t i : order) bs.push_back(bids[i]), ps.push_back(pos[i]);
      const int64_t n = static_cast<int64_t>(bs.size());
      const Tensor table = i32_host(pages.table, {static_cast<int64_t>(lens.size()), pages.max_pages});
      const Tensor b_ids = i32_host(bs, {n}), positions = i32_host(ps, {n});
      const Tensor latent = uniform_host({n, ld}, 11);  // f32 rows into the pool's dtype

      Tensor pool_cpu = Tensor::empty({pages.num_pages, page_size, ld}, pool_dtype);
      Tensor pool_gpu = dev(pool_cpu);
      ops::kv_write_paged(pool_cpu, table, b_ids, positions, latent);
      ops::kv_write_paged(pool_gpu, dev(table), dev(b_ids), dev(positions), dev(latent));
      EXPECT_EQ(rel_max_err(host_f32(pool_gpu), pool_cpu.to_f32()), 0.0);

      for (DType out_dtype : {DType::kF32, DType::kBF16}) {
        Tensor want = Tensor::empty({n, ld}, out_dtype);
        ops::kv_gather_paged(pool_cpu, table, b_ids, positions, want);
        Tensor got = poisoned_device({n, ld}, out_dtype);
        ops::kv_gather_paged(pool_gpu, dev(table), dev(b_ids), dev(positions), got);
        EXPECT_EQ(rel_max_err(host_f32(got), want.to_f32()), 0.0) << dtype_name(out_dtype);
      }
    }
}

TEST(MlaGpu, VectorPageTableOpsRunOnDevice) {
  const int64_t page = 16, ld = 80;
  const std::vector<int32_t> table = {3, 0, 2};
  const Tensor rows = uniform_host({40, ld}, 5);
  Tensor pool_cpu = Tensor::empty({4, page, ld}, DType::kF32);
  Tensor pool_gpu = dev(pool_cpu);
  ops::kv_write(pool_cpu, table, 0, rows.slice(0, 0, 9));
  ops::kv_write(pool_cpu, table, 9, rows.slice(0, 9, 40));
  ops::kv_write(pool_gpu, table, 0, dev(rows.slice(0, 0, 9)));
  ops::kv_write(pool_gpu, table, 9, dev(rows.slice(0, 9, 40)));
  EXPECT_EQ(rel_max_err(host_f32(pool_gpu), pool_cpu), 0.0);
  Tensor got = poisoned_device({40, ld});
  ops::kv_gather(pool_gpu, table, 40, got);
  EXPECT_EQ(rel_max_err(host_f32(got), rows), 0.0);
  EXPECT_THROW(ops::kv_write(pool_gpu, {3, 0}, 30, dev(rows.slice(0, 0, 5))), std::out_of_range);

  // mla_decode with vector page tables on device tensors (tiny model dims: latent 80).
  const ops::MlaDims d = tiny_dims();
  const Tensor q = uniform_host({2, 4, 48}, 6, 1.7f);
  const Tensor w_uk = uniform_host({4, 32, 64}, 7, 0.09f), w_uv = uniform_host({4, 32, 64}, 8, 0.09f);
  const std::vector<std::vector<int32_t>> tables = {{3, 0, 2}, {1}};
  const std::vector<int64_t> lens = {40, 16};
  Tensor want = Tensor::empty({2, 4, 32}, DType::kF32);
  ops::mla_decode(q, pool_cpu, tables, lens, w_uk, w_uv, d, kScale, want);
  Tensor out = poisoned_device({2, 4, 32});
  ops::mla_decode(dev(q), pool_gpu, tables, lens, dev(w_uk), dev(w_uv), d, kScale, out);
  EXPECT_LT(rel_max_err(host_f32(out), want), 1e-4);
}

// ---- decode ---------------------------------------------------------------------------------------

struct DecodeCase {
  ops::MlaDims d;
  std::vector<int64_t> lens;
  int64_t page_size;
  DType pool, act, weight;
  double tol;
};

std::string describe(const DecodeCase& c) {
  return fmt::format("H {} rank {} B {} page {} pool {} act {} w {} lens[0..] {} {} {}", c.d.num_heads,
                     c.d.kv_lora_rank, c.lens.size(), c.page_size, dtype_name(c.pool), dtype_name(c.act),
                     dtype_name(c.weight), c.lens[0], c.lens.size() > 1 ? c.lens[1] : 0,
                     c.lens.size() > 2 ? c.lens[2] : 0);
}

struct DecodeInputs {
  Tensor q, pool, table, lens, w_uk, w_uv;  // host
};

DecodeInputs decode_inputs(const DecodeCase& c, uint64_t seed) {
  const ops::MlaDims& d = c.d;
  const int64_t b = static_cast<int64_t>(c.lens.size());
  const Pages pages = make_pages(c.lens, c.page_size, seed);
  std::vector<int32_t> l32(c.lens.begin(), c.lens.end());
  DecodeInputs in;
  in.q = as_dtype(uniform_host({b, d.num_heads, d.qk_head_dim()}, seed + 1, 1.7f), c.act);
  in.pool = as_dtype(uniform_host({pages.num_pages, c.page_size, d.latent_dim()}, seed + 2, 1.7f), c.pool);
  in.table = i32_host(pages.table, {b, pages.max_pages});
  in.lens = i32_host(l32, {b});
  in.w_uk = as_dtype(uniform_host({d.num_heads, d.qk_nope_head_dim, d.kv_lora_rank}, seed + 3, 0.09f), c.weight);
  in.w_uv = as_dtype(uniform_host({d.num_heads, d.v_head_dim, d.kv_lora_rank}, seed + 4, 0.09f), c.weight);
  return in;
}

void run_decode_case(const DecodeCase& c, uint64_t seed) {
  SCOPED_TRACE(describe(c));
  const DecodeInputs in = decode_inputs(c, seed);
  const int64_t b = static_cast<int64_t>(c.lens.size());
  Tensor want = Tensor::empty({b, c.d.num_heads, c.d.v_head_dim}, DType::kF32);
  ops::mla_decode_paged(in.q, in.pool, in.table, in.lens, in.w_uk, in.w_uv, c.d, kScale, want);
  Tensor got = poisoned_device(want.shape(), c.act);
  const int64_t max_len = *std::max_element(c.lens.begin(), c.lens.end());
  ops::mla_decode_paged(dev(in.q), dev(in.pool), dev(in.table), dev(in.lens), dev(in.w_uk), dev(in.w_uv), c.d, kScale,
                        got, max_len);
  const double err = rel_max_err(host_f32(got), want);
  EXPECT_LT(err, c.tol);
  std::printf("  decode %-90s rel err %.2e\n", describe(c).c_str(), err);
}

// Sequence lengths cycling through {2000, 1, 17, 300}: long, single-token, sub-tile and multi-tile.
std::vector<int64_t> mixed_lens(int64_t batch) {
  static const int64_t kLens[] = {2000, 1, 17, 300};
  std::vector<int64_t> l(static_cast<size_t>(batch));
  for (int64_t i = 0; i < batch; ++i) l[i] = kLens[i % 4];
  return l;
}

TEST(MlaGpu, DecodeTensorCoresMatchCpuV3Dims) {
  // B = 1, 4, 33 split the KV 32, 16 and 2 ways (132 SMs); B = 70 runs unsplit.
  uint64_t seed = 100;
  for (int64_t page_size : {1, 16, 64})
    for (int64_t batch : {1, 4, 33})
      run_decode_case({v3_dims(), mixed_lens(batch), page_size, DType::kBF16, DType::kF32, DType::kF32, 2e-2}, ++seed);
  std::vector<int64_t> short_lens(70);
  for (size_t i = 0; i < short_lens.size(); ++i) short_lens[i] = 1 + static_cast<int64_t>(i * 37 % 260);
  run_decode_case({v3_dims(), short_lens, 64, DType::kBF16, DType::kBF16, DType::kBF16, 2e-2}, ++seed);
}

TEST(MlaGpu, DecodeTensorCoresMatchCpuSmallConfigs) {
  // Fewer heads than one 64-head block (V2-Lite, TP-sharded V3) and a 3-block count with a remainder.
  run_decode_case({v3_dims(16), mixed_lens(5), 16, DType::kBF16, DType::kBF16, DType::kBF16, 2e-2}, 200);
  run_decode_case({v3_dims(160), mixed_lens(3), 64, DType::kBF16, DType::kBF16, DType::kF32, 2e-2}, 201);
}

TEST(MlaGpu, DecodeBf16ModelLayoutMatchesCpuOnBothBmmPaths) {
  // The GPU model's decode: q, cache, out bf16, W_UK / W_UV head-strided views of one bf16
  // [H, nope + v, r] kv_b, 256 tokens (the EP72 rank's batch: four full 64-row tiles of the
  // absorption kernel) and a 70-token batch (a tail tile). The bmms run on absorb_bmm_bf16 (with
  // q_pe copied in the W_UK launch) and, with PDSERVE_MLA_BMM=gemm, on gemm_bf16 + convert_rows:
  // both must match the CPU, and each other exactly (same MMAs in the same k order).
  const ops::MlaDims d = v3_dims();
  uint64_t seed = 250;
  for (int64_t batch : {256, 70}) {
    std::vector<int64_t> lens(static_cast<size_t>(batch));
    for (int64_t i = 0; i < batch; ++i) lens[i] = 1 + (i * 53) % 140;  // 1 .. 140: short, the CPU pays B x H
    const DecodeCase c{d, lens, 64, DType::kBF16, DType::kBF16, DType::kBF16, 2e-2};
    SCOPED_TRACE(describe(c));
    const DecodeInputs in = decode_inputs(c, ++seed);
    const Tensor kv_b = as_dtype(uniform_host({d.num_heads, d.qk_nope_head_dim + d.v_head_dim, d.kv_lora_rank}, ++seed,
                                              0.09f),
                                 DType::kBF16);
    const Tensor uk = kv_b.slice(1, 0, d.qk_nope_head_dim);
    const Tensor uv = kv_b.slice(1, d.qk_nope_head_dim, d.qk_nope_head_dim + d.v_head_dim);
    Tensor want = Tensor::empty({batch, d.num_heads, d.v_head_dim}, DType::kF32);
    ops::mla_decode_paged(in.q, in.pool, in.table, in.lens, uk, uv, d, kScale, want);
    const Tensor kv_b_dev = dev(kv_b);
    const Tensor uk_dev = kv_b_dev.slice(1, 0, d.qk_nope_head_dim);
    const Tensor uv_dev = kv_b_dev.slice(1, d.qk_nope_head_dim, d.qk_nope_head_dim + d.v_head_dim);
    const Tensor q = dev(in.q), pool = dev(in.pool), table = dev(in.table), lens_dev = dev(in.lens);
    Tensor got[2];
    for (int path = 0; path < 2; ++path) {
      if (path == 1) setenv("PDSERVE_MLA_BMM", "gemm", 1);
      got[path] = poisoned_device(want.shape(), DType::kBF16);
      ops::mla_decode_paged(q, pool, table, lens_dev, uk_dev, uv_dev, d, kScale, got[path], 140);
      unsetenv("PDSERVE_MLA_BMM");
    }
    const Tensor absorb = host_f32(got[0]), gemm = host_f32(got[1]);
    const double err = rel_max_err(absorb, want);
    EXPECT_LT(err, c.tol);
    EXPECT_LT(rel_max_err(gemm, want), c.tol);
    EXPECT_EQ(rel_max_err(absorb, gemm), 0.0);
    std::printf("  decode, model layout, B %lld: rel err %.2e (absorb_bmm), %.2e (gemm_bf16)\n",
                static_cast<long long>(batch), err, rel_max_err(gemm, want));
  }
}

TEST(MlaGpu, DecodeExactPathMatchesCpu) {
  run_decode_case({v3_dims(), mixed_lens(4), 16, DType::kF32, DType::kF32, DType::kF32, 1e-4}, 300);
  run_decode_case({tiny_dims(), mixed_lens(9), 1, DType::kF32, DType::kF32, DType::kF32, 1e-4}, 301);
  // A bf16 cache with dims the tensor-core kernel does not cover: exact math on bf16 values.
  run_decode_case({tiny_dims(), mixed_lens(6), 16, DType::kBF16, DType::kBF16, DType::kF32, 1e-2}, 302);
}

TEST(MlaGpu, DecodeCudaGraphReplayEqualsEager) {
  const DecodeCase c{v3_dims(), mixed_lens(4), 64, DType::kBF16, DType::kBF16, DType::kBF16, 0};
  const DecodeInputs in = decode_inputs(c, 400);
  const Tensor q = dev(in.q), pool = dev(in.pool), table = dev(in.table), lens = dev(in.lens);
  const Tensor w_uk = dev(in.w_uk), w_uv = dev(in.w_uv);
  const int64_t ws_bytes = ops::mla_decode_workspace_bytes(4, c.d, 2000, DType::kBF16);
  const Tensor ws = Tensor::empty({(ws_bytes + 3) / 4}, DType::kF32, Device::kCuda);
  Tensor eager = poisoned_device({4, 128, 128}, DType::kBF16);
  ops::mla_decode_paged(q, pool, table, lens, w_uk, w_uv, c.d, kScale, eager, 2000, ws);

  cudaStream_t s = nullptr;
  ops::cuda::check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
  Tensor replay = poisoned_device({4, 128, 128}, DType::kBF16);
  ops::cuda::set_current_stream(s);
  cudaGraph_t graph = nullptr;
  ops::cuda::check(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  ops::mla_decode_paged(q, pool, table, lens, w_uk, w_uv, c.d, kScale, replay, 2000, ws);
  ops::cuda::check(cudaStreamEndCapture(s, &graph), "cudaStreamEndCapture");
  ops::cuda::set_current_stream(cudaStreamPerThread);
  cudaGraphExec_t exec = nullptr;
  ops::cuda::check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
  ops::cuda::check(cudaGraphLaunch(exec, s), "cudaGraphLaunch");
  ops::cuda::check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
  EXPECT_EQ(rel_max_err(host_f32(replay), host_f32(eager)), 0.0);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(s);
}

// ---- prefill --------------------------------------------------------------------------------------

// A kv_b weight [H * (nope + v), rank] in `dtype`; fp8 gets random 128x128 block scales.
Weight make_kv_b(const ops::MlaDims& d, DType dtype, uint64_t seed) {
  const int64_t rows = d.num_heads * (d.qk_nope_head_dim + d.v_head_dim), cols = d.kv_lora_rank;
  if (dtype != DType::kF8E4M3) return Weight{as_dtype(uniform_host({rows, cols}, seed, 0.09f), dtype), Tensor()};
  Weight w{as_dtype(uniform_host({rows, cols}, seed, 400.0f), DType::kF8E4M3), Tensor()};
  w.scale_inv = uniform_host({(rows + 127) / 128, (cols + 127) / 128}, seed + 1, 1.0f);
  for (int64_t i = 0; i < w.scale_inv.numel(); ++i)
    w.scale_inv.data<float>()[i] = 1.5e-4f + 1e-4f * std::abs(w.scale_inv.data<float>()[i]);
  return w;
}

struct PrefillCase {
  ops::MlaDims d;
  std::vector<std::pair<int64_t, int64_t>> seqs;  // (prefix_len, q_len)
  DType latent, act, weight;
  double tol;
};

void run_prefill_case(const PrefillCase& c, uint64_t seed) {
  const ops::MlaDims& d = c.d;
  std::vector<int32_t> cu_q = {0}, cu_kv = {0};
  int64_t max_q = 0;
  for (auto [prefix, q_len] : c.seqs) {
    cu_q.push_back(cu_q.back() + static_cast<int32_t>(q_len));
    cu_kv.push_back(cu_kv.back() + static_cast<int32_t>(prefix + q_len));
    max_q = std::max(max_q, q_len);
  }
  const std::string what = fmt::format("H {} seqs {} latent {} act {} kv_b {} first (prefix {}, q {})", d.num_heads,
                                       c.seqs.size(), dtype_name(c.latent), dtype_name(c.act), dtype_name(c.weight),
                                       c.seqs[0].first, c.seqs[0].second);
  SCOPED_TRACE(what);
  const int64_t n = static_cast<int64_t>(c.seqs.size()), s = cu_q.back(), t = cu_kv.back();
  const Tensor q = as_dtype(uniform_host({s, d.num_heads, d.qk_head_dim()}, seed, 1.7f), c.act);
  const Tensor latent = as_dtype(uniform_host({t, d.latent_dim()}, seed + 1, 1.7f), c.latent);
  const Weight kv_b = make_kv_b(d, c.weight, seed + 2);
  const Tensor cq = i32_host(cu_q, {n + 1}), ck = i32_host(cu_kv, {n + 1});
  Tensor want = Tensor::empty({s, d.num_heads, d.v_head_dim}, DType::kF32);
  ops::mla_prefill_varlen(q, latent, kv_b, d, cq, ck, max_q, kScale, want);
  Tensor got = poisoned_device(want.shape(), c.act);
  ops::mla_prefill_varlen(dev(q), dev(latent), kv_b.to(Device::kCuda), d, dev(cq), dev(ck), max_q, kScale, got);
  const double err = rel_max_err(host_f32(got), want);
  EXPECT_LT(err, c.tol);
  std::printf("  prefill %-90s rel err %.2e\n", what.c_str(), err);
}

TEST(MlaGpu, PrefillTensorCoresMatchCpu) {
  // Fresh prompt, extends after prefixes that end mid-tile, a single-token extend, several per call.
  const std::vector<std::pair<int64_t, int64_t>> mixed = {{0, 200}, {37, 77}, {130, 1}, {64, 129}};
  run_prefill_case({v3_dims(16), {{0, 300}}, DType::kBF16, DType::kF32, DType::kBF16, 2e-2}, 500);
  run_prefill_case({v3_dims(16), mixed, DType::kBF16, DType::kBF16, DType::kF32, 2e-2}, 501);
  run_prefill_case({v3_dims(16), mixed, DType::kBF16, DType::kF32, DType::kF8E4M3, 2e-2}, 502);
  run_prefill_case({v3_dims(128), {{100, 160}}, DType::kBF16, DType::kBF16, DType::kF8E4M3, 2e-2}, 503);
}

TEST(MlaGpu, PrefillExactPathMatchesCpu) {
  run_prefill_case({v3_dims(16), {{0, 150}, {61, 40}}, DType::kF32, DType::kF32, DType::kF32, 1e-4}, 600);
  run_prefill_case({tiny_dims(), {{0, 33}, {5, 1}, {17, 70}}, DType::kF32, DType::kF32, DType::kBF16, 1e-4}, 601);
  run_prefill_case({tiny_dims(), {{9, 20}}, DType::kF32, DType::kF32, DType::kF8E4M3, 1e-4}, 602);
  // bf16 q and out: exact math, then the output's bf16 rounding (2^-9 relative).
  run_prefill_case({tiny_dims(), {{9, 20}}, DType::kF32, DType::kBF16, DType::kF8E4M3, 1e-2}, 603);
}

TEST(MlaGpu, SingleSequencePrefillRunsOnDevice) {
  const ops::MlaDims d = v3_dims(16);
  const Tensor q = uniform_host({50, 16, 192}, 700, 1.7f), latent = uniform_host({90, 576}, 701, 1.7f);
  const Weight kv_b = make_kv_b(d, DType::kF32, 702);
  Tensor want = Tensor::empty({50, 16, 128}, DType::kF32);
  ops::mla_prefill(q, latent, kv_b, d, 40, kScale, want);
  Tensor got = poisoned_device({50, 16, 128});
  ops::mla_prefill(dev(q), dev(latent), kv_b.to(Device::kCuda), d, 40, kScale, got);
  EXPECT_LT(rel_max_err(host_f32(got), want), 1e-4);
}

// ---- decode == prefill for the last token -----------------------------------------------------------

void decode_equals_prefill(DType cache, double tol) {
  SCOPED_TRACE(dtype_name(cache));
  const ops::MlaDims d = v3_dims();
  const int64_t t = 300, page_size = 16;
  const Pages pages = make_pages({t}, page_size, 800);
  const Tensor table = dev(i32_host(pages.table, {1, pages.max_pages}));
  const Tensor latent = as_dtype(uniform_host({t, d.latent_dim()}, 801, 1.7f), cache);
  const Tensor q = uniform_host({t, d.num_heads, d.qk_head_dim()}, 802, 1.7f);
  const Weight kv_b = make_kv_b(d, DType::kBF16, 803);
  Tensor w_uk = Tensor::empty({d.num_heads, d.qk_nope_head_dim, d.kv_lora_rank}, DType::kF32);
  Tensor w_uv = Tensor::empty({d.num_heads, d.v_head_dim, d.kv_lora_rank}, DType::kF32);
  ops::split_kv_b(kv_b, d, w_uk, w_uv);

  // The cache is filled on the device, as the model does after its kv_a projection.
  std::vector<int32_t> pos(static_cast<size_t>(t));
  std::iota(pos.begin(), pos.end(), 0);
  Tensor pool = poisoned_device({pages.num_pages, page_size, d.latent_dim()}, cache);
  ops::kv_write_paged(pool, table, dev(i32_host(std::vector<int32_t>(t, 0), {t})), dev(i32_host(pos, {t})),
                      dev(latent));

  Tensor prefill_out = poisoned_device({t, d.num_heads, d.v_head_dim});
  ops::mla_prefill(dev(q), dev(latent), kv_b.to(Device::kCuda), d, 0, kScale, prefill_out);
  Tensor decode_out = poisoned_device({1, d.num_heads, d.v_head_dim});
  // The bf16 case reads W_UK / W_UV as head-strided views of the bf16 kv_b itself, as a GPU model
  // that keeps one bf16 copy of kv_b would; the f32 case uses split_kv_b's contiguous copies.
  const Tensor kv_b_dev = dev(kv_b.weight).reshape({d.num_heads, d.qk_nope_head_dim + d.v_head_dim, d.kv_lora_rank});
  const Tensor uk = cache == DType::kBF16 ? kv_b_dev.slice(1, 0, d.qk_nope_head_dim) : dev(w_uk);
  const Tensor uv = cache == DType::kBF16 ? kv_b_dev.slice(1, d.qk_nope_head_dim, d.qk_nope_head_dim + d.v_head_dim)
                                          : dev(w_uv);
  ops::mla_decode_paged(dev(q.slice(0, t - 1, t)), pool, table, dev(i32_host({static_cast<int32_t>(t)}, {1})), uk, uv,
                        d, kScale, decode_out);
  const Tensor last = host_f32(prefill_out).slice(0, t - 1, t).clone();
  const double err = rel_max_err(host_f32(decode_out), last);
  EXPECT_LT(err, tol);
  std::printf("  decode vs prefill, last of %lld tokens, %s cache: rel err %.2e\n", static_cast<long long>(t),
              dtype_name(cache), err);
}

TEST(MlaGpu, DecodeEqualsPrefillForTheLastToken) {
  decode_equals_prefill(DType::kBF16, 2e-2);
  decode_equals_prefill(DType::kF32, 1e-4);
}

}  // namespace
}  // namespace pdserve::gpu_test
