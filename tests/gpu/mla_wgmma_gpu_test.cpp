// The Hopper (wgmma) MLA decode core against the mma.sync decode core on the same inputs (the
// latter is checked against the CPU op in attention_gpu_test.cpp, which also runs the wgmma core
// through mla_decode_paged wherever the device supports it). Both read the same bf16 queries and
// cache and round P to bf16, so they differ only by accumulation order and the bf16 output:
// max |a - b| / max |b| below 1e-2.
//
// The V operand descriptor variant test doubles as a layout probe: variant 0 is the documented
// MN-major layout and must match; variant 1 (offsets swapped) is printed for the record.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include <fmt/format.h>

#include "gpu/gpu_test_util.h"
#include "ops/cuda/cuda_common.h"
#include "ops/cuda/mla_kernels.h"

namespace pdserve::gpu_test {
namespace {

namespace mla = ops::cuda::mla;

struct CoreCase {
  std::vector<int> lens;
  int heads, page_size, splits;
};

struct CoreRun {
  Tensor q_abs, pool, table, lens;  // device
  int max_pages = 0;
};

Tensor bf16_device(const Shape& shape, uint32_t seed, float scale) {
  Tensor f = random_host(shape, seed, scale);
  Tensor h = Tensor::empty(shape, DType::kBF16);
  convert_from_f32(DType::kBF16, f.data<float>(), h.raw_data(), static_cast<size_t>(f.numel()));
  return h.to(Device::kCuda);
}

// nan_tails: the pool rows past each sequence's end in its last page hold NaN (a reused page's
// stale contents may); a core must not let them reach the output.
CoreRun make_inputs(const CoreCase& c, uint32_t seed, bool nan_tails = false) {
  CoreRun r;
  int pages = 0;
  for (int l : c.lens) {
    const int need = (l + c.page_size - 1) / c.page_size;
    pages += need;
    r.max_pages = std::max(r.max_pages, need);
  }
  r.max_pages = std::max(r.max_pages, 1);
  std::vector<int32_t> perm(static_cast<size_t>(pages + 1));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937_64(seed));
  std::vector<int32_t> table(c.lens.size() * static_cast<size_t>(r.max_pages), -1);
  size_t next = 0;
  for (size_t b = 0; b < c.lens.size(); ++b)
    for (int i = 0; i < (c.lens[b] + c.page_size - 1) / c.page_size; ++i) table[b * r.max_pages + i] = perm[next++];
  const int64_t batch = static_cast<int64_t>(c.lens.size());
  Tensor t = Tensor::empty({batch, r.max_pages}, DType::kI32);
  std::copy(table.begin(), table.end(), t.data<int32_t>());
  r.table = t.to(Device::kCuda);
  Tensor l = Tensor::empty({batch}, DType::kI32);
  std::copy(c.lens.begin(), c.lens.end(), l.data<int32_t>());
  r.lens = l.to(Device::kCuda);
  r.q_abs = bf16_device({batch, c.heads, mla::kDecodeLatent}, seed + 1, 1.5f);
  Tensor pool_f = random_host({pages + 1, c.page_size, mla::kDecodeLatent}, seed + 2, 1.5f);
  if (nan_tails) {
    for (size_t b = 0; b < c.lens.size(); ++b) {
      if (c.lens[b] == 0) continue;
      const int last = table[b * r.max_pages + (c.lens[b] - 1) / c.page_size];
      for (int row = (c.lens[b] - 1) % c.page_size + 1; row < c.page_size; ++row)
        std::fill_n(pool_f.data<float>() + (int64_t(last) * c.page_size + row) * mla::kDecodeLatent, mla::kDecodeLatent,
                    std::nanf(""));
    }
  }
  Tensor pool_h = Tensor::empty(pool_f.shape(), DType::kBF16);
  convert_from_f32(DType::kBF16, pool_f.data<float>(), pool_h.raw_data(), static_cast<size_t>(pool_f.numel()));
  r.pool = pool_h.to(Device::kCuda);
  return r;
}

// The core's arguments for case c over its inputs and outputs (o_part / lse empty without splits).
mla::DecodeCoreArgs core_args(const CoreCase& c, const CoreRun& in, Tensor& o_lat, Tensor& o_part, Tensor& lse) {
  mla::DecodeCoreArgs a;
  a.q_abs = in.q_abs.raw_data();
  a.pool = in.pool.raw_data();
  a.page_size = c.page_size;
  a.pool_pages = in.pool.size(0);  // 64-token pages: the wgmma core's TMA tile loads
  a.page_table = in.table.data<int32_t>();
  a.page_table_stride = in.max_pages;
  a.seq_lens = in.lens.data<int32_t>();
  a.batch = static_cast<int>(c.lens.size());
  a.heads = c.heads;
  a.num_splits = c.splits;
  a.scale = 0.1352337788608801f;
  a.o_lat = o_lat.raw_data();
  a.o_part = c.splits > 1 ? o_part.data<float>() : nullptr;
  a.lse_part = c.splits > 1 ? lse.data<float>() : nullptr;
  return a;
}

constexpr int kMmaSync = -1, kOneSchedule = -2;

// Runs one core (a wgmma V-descriptor variant, kMmaSync or kOneSchedule, the wgmma core without
// its ping-pong) and the combine; returns o_lat as host f32.
Tensor run_core(const CoreCase& c, const CoreRun& in, int variant) {
  const int batch = static_cast<int>(c.lens.size());
  Tensor o_lat = poisoned_device({batch, c.heads, mla::kDecodeValue}, DType::kBF16);
  Tensor o_part, lse;
  if (c.splits > 1) {
    o_part = poisoned_device({batch, c.splits, c.heads, mla::kDecodeValue});
    lse = poisoned_device({batch, c.splits, c.heads});
  }
  const mla::DecodeCoreArgs a = core_args(c, in, o_lat, o_part, lse);
  cudaStream_t s = ops::cuda::current_stream();
  if (variant == kMmaSync) mla::decode_core(a, s);
  else if (variant == kOneSchedule) mla::decode_core_wgmma_one_schedule(a, s);
  else mla::decode_core_wgmma(a, s, variant);
  if (c.splits > 1) mla::decode_combine(a.o_part, a.lse_part, a.o_lat, batch, c.heads, c.splits, s);
  ops::cuda::check(cudaStreamSynchronize(s), "decode core");
  return o_lat.to(Device::kCpu).to_f32();
}

bool nan_free(const Tensor& t) {
  const float* p = t.data<float>();
  return std::none_of(p, p + t.numel(), [](float v) { return std::isnan(v); });
}

const std::vector<CoreCase>& cases() {
  static const std::vector<CoreCase> c = {
      {{2000, 1, 17, 300, 64, 65, 0, 129}, 128, 64, 1},  // tails, exact tiles, an empty slot
      {{2000, 1, 17, 300}, 128, 16, 3},                  // splits + combine, small pages
      {{777, 64, 5}, 16, 1, 1},                          // fewer heads than a block, page size 1
      {{1500, 90}, 160, 64, 2},                          // a head remainder block with splits
  };
  return c;
}

TEST(MlaWgmmaGpu, DecodeCoreMatchesTheMmaSyncCore) {
  if (!mla::decode_core_wgmma_supported()) GTEST_SKIP() << "not an sm_90 device";
  uint32_t seed = 500;
  for (const CoreCase& c : cases()) {
    SCOPED_TRACE(fmt::format("heads {} page {} splits {} B {}", c.heads, c.page_size, c.splits, c.lens.size()));
    const CoreRun in = make_inputs(c, ++seed);
    const Tensor want = run_core(c, in, kMmaSync);
    const Tensor got = run_core(c, in, 0);
    ASSERT_TRUE(nan_free(got)) << "wgmma core left poisoned (NaN) outputs";
    const double err = rel_max_err(got, want);
    std::printf("  wgmma core heads %d page %d splits %d: rel err %.2e vs mma.sync\n", c.heads, c.page_size, c.splits,
                err);
    EXPECT_LT(err, 1e-2);
  }
}

// TMA tiles (pages of 64 and 128 tokens) run the ping-pong schedule; the one schedule stays
// selectable. Both against mma.sync, across splits that leave one, two or an odd number of tiles
// per CTA (the two KV stages' phases), tails, empty slots and a head remainder block.
TEST(MlaWgmmaGpu, PingPongAndOneScheduleMatchTheMmaSyncCore) {
  if (!mla::decode_core_wgmma_supported()) GTEST_SKIP() << "not an sm_90 device";
  const std::vector<CoreCase> tma_cases = {
      {{2000, 1, 64, 65, 0, 129, 191, 320}, 128, 64, 1},
      {{64 * 5 + 3, 64, 63, 1, 2000, 0}, 64, 64, 4},
      {{1000, 777, 128}, 128, 128, 3},  // tiles start mid-page: (64 t) % 128
      {{450, 70}, 96, 64, 2},
  };
  uint32_t seed = 700;
  for (const CoreCase& c : tma_cases) {
    SCOPED_TRACE(fmt::format("heads {} page {} splits {} B {}", c.heads, c.page_size, c.splits, c.lens.size()));
    const CoreRun in = make_inputs(c, ++seed);
    const Tensor want = run_core(c, in, kMmaSync);
    const Tensor pingpong = run_core(c, in, 0);
    const Tensor one = run_core(c, in, kOneSchedule);
    ASSERT_TRUE(nan_free(pingpong)) << "the ping-pong core left poisoned (NaN) outputs";
    ASSERT_TRUE(nan_free(one)) << "the one-schedule core left poisoned (NaN) outputs";
    const double err_pp = rel_max_err(pingpong, want), err_one = rel_max_err(one, want);
    std::printf("  heads %d page %d splits %d: ping-pong rel err %.2e, one schedule %.2e vs mma.sync\n", c.heads,
                c.page_size, c.splits, err_pp, err_one);
    EXPECT_LT(err_pp, 1e-2);
    EXPECT_LT(err_one, 1e-2);
  }
}

// Stale NaN rows after each sequence's end in its last page (64-token pages: the TMA loads read
// them) leave the output finite and equal to the mma.sync core's, which never reads them.
TEST(MlaWgmmaGpu, StaleRowsPastTheEndDoNotReachTheOutput) {
  if (!mla::decode_core_wgmma_supported()) GTEST_SKIP() << "not an sm_90 device";
  const CoreCase c{{100, 1, 64, 129, 2000}, 128, 64, 2};
  const CoreRun in = make_inputs(c, 990, /*nan_tails=*/true);
  const Tensor want = run_core(c, in, kMmaSync);
  ASSERT_TRUE(nan_free(want)) << "the reference read a row past the end";
  const Tensor got = run_core(c, in, 0);
  ASSERT_TRUE(nan_free(got)) << "stale rows past the end reached the wgmma core's output";
  EXPECT_LT(rel_max_err(got, want), 1e-2);
}

TEST(MlaWgmmaGpu, VOperandLayoutProbe) {
  if (!mla::decode_core_wgmma_supported()) GTEST_SKIP() << "not an sm_90 device";
  const CoreCase c{{300, 70}, 64, 64, 1};
  const CoreRun in = make_inputs(c, 900);
  const Tensor want = run_core(c, in, kMmaSync);
  const double err0 = rel_max_err(run_core(c, in, 0), want);
  const double err1 = rel_max_err(run_core(c, in, 1), want);
  std::printf("  V descriptor variant 0 (LBO = column block, SBO = 8-token atom): rel err %.2e\n", err0);
  std::printf("  V descriptor variant 1 (swapped): rel err %.2e\n", err1);
  EXPECT_LT(err0, 1e-2) << "the documented layout does not match; variant 1 gives " << err1;
}

// A padded batch replayed from a CUDA graph equals the eager run bit for bit (16-token pages: the
// cp.async tile loads; 64: TMA, whose tensor map travels in the captured kernel parameters).
class MlaWgmmaGraph : public ::testing::TestWithParam<int> {};
INSTANTIATE_TEST_SUITE_P(Pages, MlaWgmmaGraph, ::testing::Values(16, 64));
TEST_P(MlaWgmmaGraph, GraphReplayEqualsEager) {
  if (!mla::decode_core_wgmma_supported()) GTEST_SKIP() << "not an sm_90 device";
  const CoreCase c{{200, 3, 64}, 128, GetParam(), 1};
  const CoreRun in = make_inputs(c, 950);
  const Tensor eager = run_core(c, in, 0);
  Tensor o_lat = poisoned_device({3, 128, mla::kDecodeValue}, DType::kBF16), none;
  const mla::DecodeCoreArgs a = core_args(c, in, o_lat, none, none);
  cudaStream_t s = nullptr;
  ops::cuda::check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream");
  mla::decode_core_wgmma(a, s);  // sets the kernel's shared-memory attribute outside the capture
  cudaGraph_t g = nullptr;
  cudaGraphExec_t exec = nullptr;
  ops::cuda::check(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), "capture");
  mla::decode_core_wgmma(a, s);
  ops::cuda::check(cudaStreamEndCapture(s, &g), "end capture");
  ops::cuda::check(cudaGraphInstantiate(&exec, g, 0), "instantiate");
  ops::cuda::check(cudaMemset(o_lat.raw_data(), 0xFF, o_lat.nbytes()), "poison");
  ops::cuda::check(cudaGraphLaunch(exec, s), "launch");
  ops::cuda::check(cudaStreamSynchronize(s), "replay");
  const Tensor replay = o_lat.to(Device::kCpu).to_f32();
  EXPECT_EQ(rel_max_err(replay, eager), 0.0);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(g);
  cudaStreamDestroy(s);
}

}  // namespace
}  // namespace pdserve::gpu_test
