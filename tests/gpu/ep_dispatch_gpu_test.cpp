// GPU low-latency EP dispatch/combine (moe/cuda/ep_low_latency_gpu.h) against the CPU
// LowLatencyDispatcher, R = 2 and 4 ranks as threads of this process (one GPU each when there are
// enough GPUs, else all on GPU 0).
//
// Bounds (why):
//  * recv_count: equal. Slab rows (same order as the CPU: source rank, then token): bf16 dispatch
//    bit-equal to the CPU row (inputs are bf16 values, nothing rounds); FP8 dispatch bit-equal bytes
//    and scales to ops::quantize_fp8_per_token_group of the CPU row (both divide in IEEE f32 and
//    round to nearest even, as quant_gpu_test checks for the quantizer alone).
//  * combine: expert outputs are bf16 values fed to both sides (rows past recv_count are NaN on the
//    GPU, so reading one fails). f32 out: |gpu - cpu| <= 1e-5 * max|cpu| (the only difference is the
//    GPU's fused multiply-add); bf16 out: one bf16 rounding of that, 2^-8 relative + 1e-6.
//  * a rank that never calls dispatch: its peer's synchronize() fails within the timeout with a
//    message naming it; a rank with bad arguments aborts its peers at once.
//  * a CUDA graph of dispatch + identity experts + combine replays bit-equal to eager calls.
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "gpu/gpu_test_util.h"
#include "moe/cuda/ep_low_latency_gpu.h"
#include "moe/ep_dispatch_low_latency.h"
#include "moe/ep_test_util.h"
#include "ops/quant.h"
#include "tensor/dtype.h"

namespace pdserve::moe::gpu {
namespace {

int visible_gpus() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

void cuda_ok(cudaError_t e, const char* what) { ASSERT_EQ(e, cudaSuccess) << what << ": " << cudaGetErrorString(e); }

// One non-blocking stream per rank (the legacy default stream would serialise with peers' kernels).
struct Streams {
  std::vector<cudaStream_t> s;
  Streams(const std::vector<int>& devices) {
    for (int d : devices) {
      cudaSetDevice(d);
      cudaStream_t st = nullptr;
      // Fresh streams on purpose: the group must prime them at the first dispatch (a new stream's
      // first kernel may wait for the peers' spinning ones; ep_gpu_common.h).
      cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
      s.push_back(st);
    }
  }
  ~Streams() {
    for (cudaStream_t st : s) cudaStreamDestroy(st);
  }
};

// Runs fn(rank) on one thread per rank (bound to its device); every rank's Status in rank order.
std::vector<Status> run_threads(const std::vector<int>& devices, const std::function<Status(int)>& fn) {
  std::vector<Status> st(devices.size(), ok_status());
  std::vector<std::thread> th;
  for (size_t r = 0; r < devices.size(); ++r)
    th.emplace_back([&, r] {
      try {
        cudaSetDevice(devices[r]);
        st[r] = fn(static_cast<int>(r));
      } catch (const std::exception& e) {
        st[r] = Error(ErrorCode::kInternal, e.what());
      }
    });
  for (auto& t : th) t.join();
  return st;
}

Tensor to_bf16(const Tensor& f32) {
  Tensor out = Tensor::empty(f32.shape(), DType::kBF16);
  convert_from_f32(DType::kBF16, f32.data<float>(), out.raw_data(), static_cast<size_t>(f32.numel()));
  return out;
}

// Rounds an f32 host tensor to bf16 values in place (so CPU and GPU see the same inputs).
void round_to_bf16(Tensor& f32) {
  for (int64_t i = 0; i < f32.numel(); ++i) f32.data<float>()[i] = bf16_to_f32(f32_to_bf16(f32.data<float>()[i]));
}

std::unique_ptr<LowLatencyGpuGroup> make_group(LowLatencyGpuConfig cfg) {
  auto g = LowLatencyGpuGroup::create(cfg);
  EXPECT_TRUE(g.has_value()) << g.error().message();
  return g ? std::move(*g) : nullptr;
}

enum class Kind { kRandomWithHoles, kAllToRankZero };

struct Case {
  int ranks;
  bool fp8;
  Kind kind;
  int64_t experts, top_k, hidden, max_tokens;
  int steps;
};

std::string case_name(const ::testing::TestParamInfo<Case>& i) {
  const Case& c = i.param;
  return "ep" + std::to_string(c.ranks) + (c.fp8 ? "_fp8" : "_bf16") +
         (c.kind == Kind::kRandomWithHoles ? "_random" : "_all_to_rank0") + "_h" + std::to_string(c.hidden);
}

// Tokens of rank r at a step: rank 1 is idle (T = 0) on even steps; rank 0 is full on step 1.
int64_t tokens_of(const Case& c, int r, int step) {
  if (r == 1 && step % 2 == 0) return 0;
  if (r == 0 && step == 1) return c.max_tokens;
  return (3 + 5 * r + 7 * step) % (c.max_tokens + 1);
}

struct RankStep {
  testing::Routing in;      // x rounded to bf16 values
  Tensor cpu_recv;          // [G, slab, H] f32
  std::vector<int32_t> cpu_count;
  Tensor expert_out;        // host bf16 [G, slab, H]; rows past the count are NaN
  Tensor cpu_out;           // [T, H] f32
};

// Expert e's output for a row: bf16((e + 1) / E * row), so rows swapped between experts show.
float expert_fn(int64_t e, int64_t E, float v) { return bf16_to_f32(f32_to_bf16(static_cast<float>(e + 1) / E * v)); }

class EpLowLatencyGpu : public ::testing::TestWithParam<Case> {};

TEST_P(EpLowLatencyGpu, DispatchAndCombineEqualCpu) {
  const Case c = GetParam();
  const int R = c.ranks;
  const int64_t E = c.experts, G = E / R, H = c.hidden, K = c.top_k, slab = R * c.max_tokens, groups = H / 128;
  LowLatencyGpuConfig cfg;
  cfg.num_experts = E;
  cfg.hidden = H;
  cfg.max_tokens_per_rank = c.max_tokens;
  cfg.top_k = K;
  cfg.fp8 = c.fp8;
  cfg.devices = default_devices(R, visible_gpus());
  cfg.timeout = std::chrono::seconds(20);
  auto group = make_group(cfg);
  ASSERT_NE(group, nullptr);
  Streams streams(cfg.devices);
  bool saw_empty_expert = false;

  for (int step = 0; step < c.steps; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    // Inputs and the CPU reference.
    std::vector<RankStep> rs(static_cast<size_t>(R));
    for (int r = 0; r < R; ++r) {
      std::vector<int32_t> allowed;
      if (c.kind == Kind::kAllToRankZero)
        for (int32_t e = 0; e < G; ++e) allowed.push_back(e);
      const int64_t T = tokens_of(c, r, step);
      rs[static_cast<size_t>(r)].in = testing::random_routing(T, H, K, E,
                                                              9000 + 31 * static_cast<uint64_t>(r) + 7 * static_cast<uint64_t>(step),
                                                              c.kind == Kind::kRandomWithHoles, allowed);
      round_to_bf16(rs[static_cast<size_t>(r)].in.x);
    }
    testing::run_ranks_ok(R, [&](const parallel::RankInfo& info, parallel::RankComms& comms) -> Status {
      const int r = info.moe_ep_rank;
      RankStep& s = rs[static_cast<size_t>(r)];
      auto d = LowLatencyDispatcher::create(EpGeometry{E, R, r}, H, c.max_tokens);
      if (!d) return d.error();
      PDSERVE_RETURN_IF_ERROR(d->dispatch(*comms.ep, s.in.x, s.in.ids));
      s.cpu_recv = d->recv_x().clone();
      s.cpu_count.assign(d->recv_count().data<int32_t>(), d->recv_count().data<int32_t>() + G);
      Tensor y = Tensor::empty({G, slab, H}, DType::kF32);  // zero-filled; the CPU reads valid rows only
      s.expert_out = Tensor::empty({G, slab, H}, DType::kBF16);
      std::memset(s.expert_out.raw_data(), 0xFF, s.expert_out.nbytes());  // NaN past the counts
      for (int64_t g = 0; g < G; ++g)
        for (int64_t i = g * slab * H; i < (g * slab + s.cpu_count[static_cast<size_t>(g)]) * H; ++i) {
          const float v = expert_fn(r * G + g, E, s.cpu_recv.data<float>()[i]);
          y.data<float>()[i] = v;
          s.expert_out.data<uint16_t>()[i] = f32_to_bf16(v);
        }
      s.cpu_out = Tensor::empty({s.in.x.size(0), H}, DType::kF32);
      return d->combine(*comms.ep, y, s.in.weights, s.cpu_out);
    });

    // The GPU run: inputs uploaded first (no allocation while peers' kernels spin), outputs poisoned.
    std::vector<Tensor> x_d, ids_d, w_d, eo_d, out_f32_d, out_bf16_d;
    for (int r = 0; r < R; ++r) {
      RankStep& s = rs[static_cast<size_t>(r)];
      cudaSetDevice(cfg.devices[static_cast<size_t>(r)]);
      x_d.push_back(to_bf16(s.in.x).to(Device::kCuda));
      ids_d.push_back(s.in.ids.to(Device::kCuda));
      w_d.push_back(s.in.weights.to(Device::kCuda));
      eo_d.push_back(s.expert_out.to(Device::kCuda));
      out_f32_d.push_back(gpu_test::poisoned_device({s.in.x.size(0), H}, DType::kF32));
      out_bf16_d.push_back(gpu_test::poisoned_device({s.in.x.size(0), H}, DType::kBF16));
      LowLatencyGpuRank& rk = group->rank(r);
      cuda_ok(cudaMemset(rk.recv_x().raw_data(), 0xFF, rk.recv_x().nbytes()), "poison recv_x");
      if (c.fp8) cuda_ok(cudaMemset(rk.recv_scales().raw_data(), 0xFF, rk.recv_scales().nbytes()), "poison scales");
      cuda_ok(cudaDeviceSynchronize(), "uploads");
    }
    // Odd steps write bf16 out, even f32 (both paths of combine, epochs going on across both).
    const bool bf16_out = step % 2 == 1;
    // Host timeline per rank (ms from the start: dispatch launched, combine launched, synchronised),
    // printed with a failure: it tells a rank whose host thread was late from a kernel that was not
    // scheduled.
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::array<double, 3>> when(static_cast<size_t>(R), {-1, -1, -1});
    auto ms = [&] { return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count(); };
    auto st = run_threads(cfg.devices, [&](int r) -> Status {
      LowLatencyGpuRank& rk = group->rank(r);
      cudaStream_t s = streams.s[static_cast<size_t>(r)];
      auto& w = when[static_cast<size_t>(r)];
      PDSERVE_RETURN_IF_ERROR(rk.dispatch(x_d[static_cast<size_t>(r)], ids_d[static_cast<size_t>(r)], s));
      w[0] = ms();
      Tensor& out = bf16_out ? out_bf16_d[static_cast<size_t>(r)] : out_f32_d[static_cast<size_t>(r)];
      PDSERVE_RETURN_IF_ERROR(rk.combine(eo_d[static_cast<size_t>(r)], ids_d[static_cast<size_t>(r)], w_d[static_cast<size_t>(r)], out, s));
      w[1] = ms();
      Status done = rk.synchronize(s);
      w[2] = ms();
      return done;
    });
    if (!std::all_of(st.begin(), st.end(), [](const Status& x) { return x.has_value(); })) {
      std::string report;
      for (int r = 0; r < R; ++r) {
        const auto& w = when[static_cast<size_t>(r)];
        if (!st[static_cast<size_t>(r)].has_value()) report += fmt::format("\n  rank {}: {}", r, st[static_cast<size_t>(r)].error().message());
        report += fmt::format("\n  rank {} host: dispatch launched {:.1f} ms, combine launched {:.1f} ms, synchronised {:.1f} ms",
                              r, w[0], w[1], w[2]);
        report += "\n  " + group->rank(r).exchange_state();
      }
      FAIL() << "step " << step << " (" << group->blocks() << " blocks per rank)" << report;
    }

    for (int r = 0; r < R; ++r) {
      const RankStep& s = rs[static_cast<size_t>(r)];
      LowLatencyGpuRank& rk = group->rank(r);
      Tensor count = rk.recv_count().to(Device::kCpu);
      for (int64_t g = 0; g < G; ++g) {
        const int32_t want = s.cpu_count[static_cast<size_t>(g)];
        ASSERT_EQ(count.data<int32_t>()[g], want) << "rank " << r << " local expert " << g << ": recv_count";
        saw_empty_expert |= want == 0;
      }
      Tensor got = rk.recv_x().to(Device::kCpu);
      Tensor scales = c.fp8 ? rk.recv_scales().to(Device::kCpu) : Tensor();
      for (int64_t g = 0; g < G; ++g) {
        const int64_t n = s.cpu_count[static_cast<size_t>(g)];
        if (n == 0) continue;
        Tensor rows = Tensor::empty({n, H}, DType::kF32);
        std::memcpy(rows.data<float>(), s.cpu_recv.data<float>() + g * slab * H, sizeof(float) * static_cast<size_t>(n * H));
        if (c.fp8) {
          Tensor q = Tensor::empty({n, H}, DType::kF8E4M3), sc = Tensor::empty({groups, n}, DType::kF32);
          ops::quantize_fp8_per_token_group(rows, q, sc);
          const uint8_t* gq = static_cast<const uint8_t*>(got.raw_data()) + g * slab * H;
          for (int64_t i = 0; i < n * H; ++i)
            ASSERT_EQ(gq[i], static_cast<const uint8_t*>(q.raw_data())[i])
                << "rank " << r << " local expert " << g << " row " << i / H << " col " << i % H << ": fp8 byte";
          for (int64_t kb = 0; kb < groups; ++kb)
            for (int64_t p = 0; p < n; ++p)
              ASSERT_EQ(scales.data<float>()[(g * groups + kb) * slab + p], sc.data<float>()[kb * n + p])
                  << "rank " << r << " local expert " << g << " row " << p << " group " << kb << ": scale";
        } else {
          const uint16_t* gb = got.data<uint16_t>() + g * slab * H;
          for (int64_t i = 0; i < n * H; ++i)
            ASSERT_EQ(gb[i], f32_to_bf16(rows.data<float>()[i]))
                << "rank " << r << " local expert " << g << " row " << i / H << " col " << i % H << ": bf16 value";
        }
      }
      // Combine.
      const int64_t T = s.in.x.size(0);
      if (T == 0) continue;
      Tensor out = bf16_out ? out_bf16_d[static_cast<size_t>(r)].to(Device::kCpu).to_f32() : out_f32_d[static_cast<size_t>(r)].to(Device::kCpu);
      double amax = 0;
      for (int64_t i = 0; i < T * H; ++i) amax = std::max(amax, std::abs(static_cast<double>(s.cpu_out.data<float>()[i])));
      for (int64_t i = 0; i < T * H; ++i) {
        const double want = s.cpu_out.data<float>()[i], have = out.data<float>()[i];
        const double tol = bf16_out ? std::abs(want) / 256.0 + 1e-6 : 1e-5 * amax;
        ASSERT_LE(std::abs(have - want), tol) << "rank " << r << " token " << i / H << " col " << i % H << ": combine out "
                                              << (bf16_out ? "bf16" : "f32") << " got " << have << " want " << want;
      }
    }
  }
  if (c.kind == Kind::kRandomWithHoles) {
    EXPECT_TRUE(saw_empty_expert) << "the scenario should leave some expert without tokens";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Ranks, EpLowLatencyGpu,
    ::testing::Values(Case{2, true, Kind::kRandomWithHoles, 32, 4, 256, 24, 3}, Case{2, false, Kind::kRandomWithHoles, 32, 4, 256, 24, 3},
                      Case{4, true, Kind::kRandomWithHoles, 32, 4, 384, 24, 3}, Case{4, false, Kind::kRandomWithHoles, 32, 4, 384, 24, 3},
                      Case{2, true, Kind::kAllToRankZero, 32, 4, 256, 24, 3}, Case{4, true, Kind::kAllToRankZero, 32, 4, 256, 24, 3},
                      Case{4, false, Kind::kAllToRankZero, 32, 4, 256, 24, 3},
                      // DeepSeek-V3 shapes: hidden 7168, top-8 of 256 experts (16 tokens per rank keeps
                      // the CPU reference's [256, R * 16, 7168] f32 slabs at 117 MB per rank).
                      Case{2, true, Kind::kRandomWithHoles, 256, 8, 7168, 16, 2},
                      Case{4, true, Kind::kAllToRankZero, 256, 8, 7168, 16, 2}),
    case_name);

LowLatencyGpuConfig small_config(int ranks, std::chrono::milliseconds timeout) {
  LowLatencyGpuConfig cfg;
  cfg.num_experts = 8;
  cfg.hidden = 256;
  cfg.max_tokens_per_rank = 4;
  cfg.top_k = 2;
  cfg.devices = default_devices(ranks, visible_gpus());
  cfg.timeout = timeout;
  return cfg;
}

TEST(EpLowLatencyGpuFailure, StalledRankTimesOutWithItsName) {
  auto cfg = small_config(2, std::chrono::milliseconds(300));
  auto group = make_group(cfg);
  ASSERT_NE(group, nullptr);
  Streams streams(cfg.devices);
  cudaSetDevice(cfg.devices[0]);
  testing::Routing in = testing::random_routing(3, 256, 2, 8, 5);
  Tensor x = to_bf16(in.x).to(Device::kCuda), ids = in.ids.to(Device::kCuda);
  const auto t0 = std::chrono::steady_clock::now();
  // Rank 0 alone (rank 1's thread never calls dispatch).
  auto st = run_threads({cfg.devices[0]}, [&](int) -> Status {
    PDSERVE_RETURN_IF_ERROR(group->rank(0).dispatch(x, ids, streams.s[0]));
    return group->rank(0).synchronize(streams.s[0]);
  });
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_FALSE(st[0].has_value()) << "dispatch with a missing peer must fail, not succeed";
  const std::string msg = st[0].error().message();
  EXPECT_NE(msg.find("timed out after 300 ms"), std::string::npos) << msg;
  EXPECT_NE(msg.find("rank 1 did not arrive"), std::string::npos) << msg;
  EXPECT_LT(secs, 10.0) << "the timeout is 300 ms; the call took " << secs << " s";
  // The group is unusable from then on, and says so at once.
  auto again = group->rank(0).dispatch(x, ids, streams.s[0]);
  ASSERT_FALSE(again.has_value());
  EXPECT_NE(again.error().message().find("timed out"), std::string::npos) << again.error().message();
}

TEST(EpLowLatencyGpuFailure, BadArgumentOnOneRankAbortsItsPeersAtOnce) {
  auto cfg = small_config(2, std::chrono::seconds(60));
  auto group = make_group(cfg);
  ASSERT_NE(group, nullptr);
  Streams streams(cfg.devices);
  std::vector<Tensor> x, ids;
  for (int r = 0; r < 2; ++r) {
    cudaSetDevice(cfg.devices[static_cast<size_t>(r)]);
    testing::Routing in = testing::random_routing(3, 256, 2, 8, 40 + r);
    // Rank 1 passes x with the wrong hidden size.
    Tensor xr = r == 1 ? Tensor::empty({3, 128}, DType::kF32) : in.x;
    x.push_back(to_bf16(xr).to(Device::kCuda));
    ids.push_back(in.ids.to(Device::kCuda));
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto st = run_threads(cfg.devices, [&](int r) -> Status {
    PDSERVE_RETURN_IF_ERROR(group->rank(r).dispatch(x[static_cast<size_t>(r)], ids[static_cast<size_t>(r)], streams.s[static_cast<size_t>(r)]));
    return group->rank(r).synchronize(streams.s[static_cast<size_t>(r)]);
  });
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_FALSE(st[1].has_value());
  EXPECT_EQ(st[1].error().code(), ErrorCode::kInvalidArgument) << st[1].error().message();
  EXPECT_NE(st[1].error().message().find("dispatch x must be"), std::string::npos) << st[1].error().message();
  ASSERT_FALSE(st[0].has_value()) << "rank 0 waited for a rank that failed; it must fail too";
  EXPECT_NE(st[0].error().message().find("aborted"), std::string::npos) << st[0].error().message();
  EXPECT_NE(st[0].error().message().find("rank 1: dispatch x must be"), std::string::npos) << st[0].error().message();
  EXPECT_LT(secs, 10.0) << "an abort must not wait for the 60 s timeout";
}

// dispatch -> identity experts (a device copy of recv_x) -> combine, captured once per rank and
// replayed on new inputs, interleaved with eager calls on the same group (epochs go on across both).
TEST(EpLowLatencyGpuGraph, CaptureAndReplayEqualsEager) {
  const int R = 2;
  LowLatencyGpuConfig cfg;
  cfg.num_experts = 16;
  cfg.hidden = 256;
  cfg.max_tokens_per_rank = 8;
  cfg.top_k = 2;
  cfg.fp8 = false;
  cfg.devices = default_devices(R, visible_gpus());
  cfg.timeout = std::chrono::seconds(20);
  auto group = make_group(cfg);
  ASSERT_NE(group, nullptr);
  Streams streams(cfg.devices);
  // Capture comes first here, and a capturing stream cannot be primed by the group: prime them now.
  for (size_t r = 0; r < streams.s.size(); ++r) {
    cudaSetDevice(cfg.devices[r]);
    cuda_ok(detail::launch_stream_prime(streams.s[r]), "prime");
    cuda_ok(cudaStreamSynchronize(streams.s[r]), "prime");
  }
  const int64_t H = cfg.hidden, K = cfg.top_k, G = group->local_experts(), slab = R * cfg.max_tokens_per_rank;
  const std::vector<int64_t> T = {5, 8};
  std::vector<Tensor> x_d, ids_d, w_d, eo_d, out_d;
  for (int r = 0; r < R; ++r) {
    cudaSetDevice(cfg.devices[static_cast<size_t>(r)]);
    x_d.push_back(Tensor::empty({T[static_cast<size_t>(r)], H}, DType::kBF16, Device::kCuda));
    ids_d.push_back(Tensor::empty({T[static_cast<size_t>(r)], K}, DType::kI32, Device::kCuda));
    w_d.push_back(Tensor::empty({T[static_cast<size_t>(r)], K}, DType::kF32, Device::kCuda));
    eo_d.push_back(Tensor::empty({G, slab, H}, DType::kBF16, Device::kCuda));
    out_d.push_back(Tensor::empty({T[static_cast<size_t>(r)], H}, DType::kF32, Device::kCuda));
  }
  auto forward = [&](int r, cudaStream_t s) -> Status {
    LowLatencyGpuRank& rk = group->rank(r);
    const size_t i = static_cast<size_t>(r);
    PDSERVE_RETURN_IF_ERROR(rk.dispatch(x_d[i], ids_d[i], s));
    if (cudaMemcpyAsync(eo_d[i].raw_data(), rk.recv_x().raw_data(), eo_d[i].nbytes(), cudaMemcpyDeviceToDevice, s) != cudaSuccess)
      return Error(ErrorCode::kInternal, "identity experts copy failed");
    return rk.combine(eo_d[i], ids_d[i], w_d[i], out_d[i], s);
  };
  std::vector<cudaGraphExec_t> exec(R, nullptr);
  auto capture = run_threads(cfg.devices, [&](int r) -> Status {
    cudaStream_t s = streams.s[static_cast<size_t>(r)];
    cudaGraph_t graph = nullptr;
    if (cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) != cudaSuccess) return Error(ErrorCode::kInternal, "begin capture");
    Status st = forward(r, s);
    if (cudaStreamEndCapture(s, &graph) != cudaSuccess || !st) return st ? Status(Error(ErrorCode::kInternal, "end capture")) : st;
    const cudaError_t e = cudaGraphInstantiate(&exec[static_cast<size_t>(r)], graph, 0);
    cudaGraphDestroy(graph);
    return e == cudaSuccess ? ok_status() : Status(Error(ErrorCode::kInternal, cudaGetErrorString(e)));
  });
  for (int r = 0; r < R; ++r) ASSERT_TRUE(capture[static_cast<size_t>(r)].has_value()) << "rank " << r << ": " << capture[static_cast<size_t>(r)].error().message();

  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    std::vector<testing::Routing> in;
    for (int r = 0; r < R; ++r) {
      in.push_back(testing::random_routing(T[static_cast<size_t>(r)], H, K, cfg.num_experts, 700 + 10 * round + r, round == 1));
      round_to_bf16(in.back().x);
      cudaSetDevice(cfg.devices[static_cast<size_t>(r)]);
      Tensor xb = to_bf16(in.back().x);
      cuda_ok(cudaMemcpy(x_d[static_cast<size_t>(r)].raw_data(), xb.raw_data(), xb.nbytes(), cudaMemcpyHostToDevice), "x");
      cuda_ok(cudaMemcpy(ids_d[static_cast<size_t>(r)].raw_data(), in.back().ids.raw_data(), in.back().ids.nbytes(), cudaMemcpyHostToDevice), "ids");
      cuda_ok(cudaMemcpy(w_d[static_cast<size_t>(r)].raw_data(), in.back().weights.raw_data(), in.back().weights.nbytes(), cudaMemcpyHostToDevice), "w");
    }
    std::vector<Tensor> eager(R), replay(R);
    for (bool use_graph : {false, true}) {
      auto st = run_threads(cfg.devices, [&](int r) -> Status {
        cudaStream_t s = streams.s[static_cast<size_t>(r)];
        if (cudaMemsetAsync(out_d[static_cast<size_t>(r)].raw_data(), 0xFF, out_d[static_cast<size_t>(r)].nbytes(), s) != cudaSuccess)
          return Error(ErrorCode::kInternal, "poison out");
        if (use_graph) {
          if (cudaGraphLaunch(exec[static_cast<size_t>(r)], s) != cudaSuccess) return Error(ErrorCode::kInternal, "graph launch");
        } else {
          PDSERVE_RETURN_IF_ERROR(forward(r, s));
        }
        return group->rank(r).synchronize(s);
      });
      for (int r = 0; r < R; ++r) {
        ASSERT_TRUE(st[static_cast<size_t>(r)].has_value()) << (use_graph ? "graph" : "eager") << " rank " << r << ": " << st[static_cast<size_t>(r)].error().message();
        (use_graph ? replay : eager)[static_cast<size_t>(r)] = out_d[static_cast<size_t>(r)].to(Device::kCpu);
      }
    }
    for (int r = 0; r < R; ++r) {
      const testing::Routing& m = in[static_cast<size_t>(r)];
      const Tensor& a = eager[static_cast<size_t>(r)];
      const Tensor& b = replay[static_cast<size_t>(r)];
      ASSERT_EQ(std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()), 0) << "rank " << r << ": graph replay differs from eager";
      // Identity experts: out[t] = (sum_j w[t,j] over valid j) * x[t].
      for (int64_t t = 0; t < T[static_cast<size_t>(r)]; ++t) {
        double wsum = 0;
        for (int64_t j = 0; j < K; ++j)
          if (m.ids.data<int32_t>()[t * K + j] >= 0) wsum += m.weights.data<float>()[t * K + j];
        for (int64_t col = 0; col < H; ++col) {
          const double want = wsum * m.x.data<float>()[t * H + col];
          ASSERT_NEAR(a.data<float>()[t * H + col], want, 1e-5 * (1 + std::abs(want)))
              << "rank " << r << " token " << t << " col " << col << ": combine of identity experts";
        }
      }
    }
  }
  for (cudaGraphExec_t e : exec) cudaGraphExecDestroy(e);
}

}  // namespace
}  // namespace pdserve::moe::gpu
