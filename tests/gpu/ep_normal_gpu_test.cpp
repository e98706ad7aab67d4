// GPU normal-mode EP dispatch/combine (moe/cuda/ep_normal_gpu.h) against the CPU NormalDispatcher,
// R = 2 and 4 ranks as threads (one GPU each when there are enough, else all on GPU 0).
//
// Bounds: received counts, rows-from-each-source, per-expert counts, local ids and weights equal;
// rows bit-equal (bf16 inputs, nothing rounds); the contiguous layout built on the device
// (ops::moe_scatter with the host's contiguous_layout offsets) equals the CPU's to_contiguous row for
// row, slots equal; combine (bf16 partials fed to both sides) within 1e-5 x max|out| in f32 (only
// the order of f32 additions may differ), one bf16 rounding more for bf16 out.
#include <cuda_runtime.h>

#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include "gpu/gpu_test_util.h"
#include "moe/cuda/ep_low_latency_gpu.h"
#include "moe/cuda/ep_normal_gpu.h"
#include "moe/ep_dispatch.h"
#include "moe/ep_test_util.h"
#include "ops/moe_dispatch.h"
#include "tensor/dtype.h"

namespace pdserve::moe::gpu {
namespace {

int visible_gpus() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

Tensor to_bf16(const Tensor& f32) {
  Tensor out = Tensor::empty(f32.shape(), DType::kBF16);
  convert_from_f32(DType::kBF16, f32.data<float>(), out.raw_data(), static_cast<size_t>(f32.numel()));
  return out;
}

struct Case {
  int ranks;
  bool all_to_rank0;
};

class EpNormalGpu : public ::testing::TestWithParam<Case> {};

TEST_P(EpNormalGpu, DispatchContiguousCombineEqualCpu) {
  const int R = GetParam().ranks;
  const bool to_rank0 = GetParam().all_to_rank0;
  constexpr int64_t E = 32, K = 4, H = 256, M = 40, kAlign = 4;
  const int64_t G = E / R;
  NormalGpuConfig cfg;
  cfg.num_experts = E;
  cfg.hidden = H;
  cfg.max_tokens_per_rank = M;
  cfg.top_k = K;
  cfg.devices = default_devices(R, visible_gpus());
  cfg.timeout = std::chrono::seconds(20);
  auto created = NormalGpuGroup::create(cfg);
  ASSERT_TRUE(created.has_value()) << created.error().message();
  NormalGpuGroup& group = **created;
  std::vector<cudaStream_t> streams;
  for (int d : cfg.devices) {
    cudaSetDevice(d);
    cudaStream_t s = nullptr;
    ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
    streams.push_back(s);
  }

  for (int step = 0; step < 3; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    std::vector<testing::Routing> in;
    for (int r = 0; r < R; ++r) {
      std::vector<int32_t> allowed;
      if (to_rank0)
        for (int32_t e = 0; e < G; ++e) allowed.push_back(e);
      const int64_t T = (r == 1 && step != 1) ? 0 : (r == 0 && step == 1 ? M : (5 + 9 * r + 4 * step) % (M + 1));
      in.push_back(testing::random_routing(T, H, K, E, 300 + 13 * r + step, !to_rank0, allowed));
      for (int64_t i = 0; i < in.back().x.numel(); ++i)
        in.back().x.data<float>()[i] = bf16_to_f32(f32_to_bf16(in.back().x.data<float>()[i]));
    }
    // CPU reference: dispatch, contiguous layout, partials = f(received row), combine.
    std::vector<NormalDispatchResult> cpu(static_cast<size_t>(R));
    std::vector<Tensor> cpu_contig(static_cast<size_t>(R)), cpu_slots(static_cast<size_t>(R)), partial_bf16(static_cast<size_t>(R)),
        cpu_out(static_cast<size_t>(R));
    std::vector<Tensor> cpu_recv_x(static_cast<size_t>(R)), cpu_idx(static_cast<size_t>(R)), cpu_w(static_cast<size_t>(R));
    testing::run_ranks_ok(R, [&](const parallel::RankInfo& info, parallel::RankComms& comms) -> Status {
      const int r = info.moe_ep_rank;
      const size_t i = static_cast<size_t>(r);
      NormalDispatcher d(EpGeometry{E, R, r});
      auto res = d.dispatch(*comms.ep, in[i].x, in[i].ids, in[i].weights);
      if (!res) return res.error();
      cpu[i] = *res;
      cpu_recv_x[i] = res->recv_x.clone();
      cpu_idx[i] = res->recv_topk_idx.clone();
      cpu_w[i] = res->recv_topk_weights.clone();
      const ContiguousLayout layout = contiguous_layout(res->recv_tokens_per_expert, kAlign);
      cpu_contig[i] = Tensor::empty({layout.rows(), H}, DType::kF32);
      cpu_slots[i] = Tensor::empty({res->recv_x.size(0), K}, DType::kI32);
      to_contiguous(*res, layout, cpu_contig[i], cpu_slots[i]);
      const int64_t n = res->recv_x.size(0);
      Tensor partial = Tensor::empty({n, H}, DType::kF32);
      partial_bf16[i] = Tensor::empty({n, H}, DType::kBF16);
      for (int64_t row = 0; row < n; ++row) {
        float wsum = 0;
        for (int64_t j = 0; j < K; ++j) wsum += res->recv_topk_weights.data<float>()[row * K + j];
        for (int64_t col = 0; col < H; ++col) {
          const uint16_t b = f32_to_bf16(0.5f * (1.0f + wsum) * res->recv_x.data<float>()[row * H + col]);
          partial.data<float>()[row * H + col] = bf16_to_f32(b);
          partial_bf16[i].data<uint16_t>()[row * H + col] = b;
        }
      }
      cpu_out[i] = Tensor::empty({in[i].x.size(0), H}, DType::kF32);
      return d.combine(*comms.ep, res->handle, partial, cpu_out[i]);
    });

    // GPU: uploads first, then one thread per rank: dispatch, received() (a host sync), combine.
    std::vector<Tensor> x_d, ids_d, w_d, partial_d, out_d;
    const bool bf16_out = step == 2;
    for (int r = 0; r < R; ++r) {
      const size_t i = static_cast<size_t>(r);
      cudaSetDevice(cfg.devices[i]);
      x_d.push_back(to_bf16(in[i].x).to(Device::kCuda));
      ids_d.push_back(in[i].ids.to(Device::kCuda));
      w_d.push_back(in[i].weights.to(Device::kCuda));
      partial_d.push_back(partial_bf16[i].to(Device::kCuda));
      out_d.push_back(gpu_test::poisoned_device({in[i].x.size(0), H}, bf16_out ? DType::kBF16 : DType::kF32));
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    }
    std::vector<NormalGpuReceived> got(static_cast<size_t>(R));
    std::vector<Status> st(static_cast<size_t>(R), ok_status());
    std::vector<std::thread> th;
    for (int r = 0; r < R; ++r)
      th.emplace_back([&, r] {
        const size_t i = static_cast<size_t>(r);
        cudaSetDevice(cfg.devices[i]);
        NormalGpuRank& rk = group.rank(r);
        st[i] = rk.dispatch(x_d[i], ids_d[i], w_d[i], streams[i]);
        if (!st[i]) return;
        auto rec = rk.received(streams[i]);
        if (!rec) {
          st[i] = rec.error();
          return;
        }
        got[i] = *rec;
        st[i] = rk.combine(partial_d[i], ids_d[i], out_d[i], streams[i]);
        if (st[i]) st[i] = rk.synchronize(streams[i]);
      });
    for (auto& t : th) t.join();
    for (int r = 0; r < R; ++r) ASSERT_TRUE(st[static_cast<size_t>(r)].has_value()) << "rank " << r << ": " << st[static_cast<size_t>(r)].error().message();

    for (int r = 0; r < R; ++r) {
      const size_t i = static_cast<size_t>(r);
      const NormalGpuReceived& g = got[i];
      const int64_t n = cpu_recv_x[i].size(0);
      ASSERT_EQ(g.rows, n) << "rank " << r << ": rows received";
      for (int s = 0; s < R; ++s)
        EXPECT_EQ(g.rows_from[static_cast<size_t>(s)], cpu[i].handle.recv_rows[static_cast<size_t>(s)]) << "rank " << r << " rows from " << s;
      for (int64_t e = 0; e < G; ++e)
        ASSERT_EQ(g.tokens_per_expert[static_cast<size_t>(e)], cpu[i].recv_tokens_per_expert[static_cast<size_t>(e)])
            << "rank " << r << " local expert " << e << ": tokens";
      Tensor gx = g.recv_x.to(Device::kCpu), gi = g.recv_topk_idx.to(Device::kCpu), gw = g.recv_topk_weights.to(Device::kCpu);
      for (int64_t k = 0; k < n * H; ++k)
        ASSERT_EQ(gx.data<uint16_t>()[k], f32_to_bf16(cpu_recv_x[i].data<float>()[k])) << "rank " << r << " row " << k / H << " col " << k % H;
      for (int64_t k = 0; k < n * K; ++k) {
        ASSERT_EQ(gi.data<int32_t>()[k], cpu_idx[i].data<int32_t>()[k]) << "rank " << r << " row " << k / K << " slot " << k % K << ": local id";
        ASSERT_EQ(gw.data<float>()[k], cpu_w[i].data<float>()[k]) << "rank " << r << " row " << k / K << " slot " << k % K << ": weight";
      }
      // Contiguous layout on the device from the received tensors.
      const ContiguousLayout layout = contiguous_layout(g.tokens_per_expert, kAlign);
      cudaSetDevice(cfg.devices[i]);
      Tensor row_base = Tensor::empty({G}, DType::kI32);
      for (int64_t e = 0; e < G; ++e) row_base.data<int32_t>()[e] = static_cast<int32_t>(layout.offsets[static_cast<size_t>(e)]);
      Tensor row_base_d = row_base.to(Device::kCuda), counts_d = Tensor::empty({G}, DType::kI32, Device::kCuda);
      Tensor contig_d = Tensor::empty({layout.rows(), H}, DType::kBF16).to(Device::kCuda);  // zero padding rows
      Tensor slots_d = Tensor::empty({n, K}, DType::kI32, Device::kCuda);
      if (n > 0) {
        ops::moe_scatter(g.recv_x, g.recv_topk_idx, row_base_d, contig_d, slots_d, counts_d);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      }
      Tensor contig = contig_d.to(Device::kCpu).to_f32(), slots = slots_d.to(Device::kCpu);
      ASSERT_EQ(contig.numel(), cpu_contig[i].numel());
      for (int64_t k = 0; k < contig.numel(); ++k)
        ASSERT_EQ(contig.data<float>()[k], cpu_contig[i].data<float>()[k]) << "rank " << r << " contiguous row " << k / H << " col " << k % H;
      for (int64_t k = 0; k < n * K; ++k) ASSERT_EQ(slots.data<int32_t>()[k], cpu_slots[i].data<int32_t>()[k]) << "rank " << r << " slot " << k;
      // Combine.
      const int64_t T = in[i].x.size(0);
      Tensor out = bf16_out ? out_d[i].to(Device::kCpu).to_f32() : out_d[i].to(Device::kCpu);
      double amax = 0;
      for (int64_t k = 0; k < T * H; ++k) amax = std::max(amax, std::abs(static_cast<double>(cpu_out[i].data<float>()[k])));
      for (int64_t k = 0; k < T * H; ++k) {
        const double want = cpu_out[i].data<float>()[k], have = out.data<float>()[k];
        const double tol = 1e-5 * amax + (bf16_out ? std::abs(want) / 256.0 : 0.0);
        ASSERT_LE(std::abs(have - want), tol) << "rank " << r << " token " << k / H << " col " << k % H << ": combine got " << have
                                              << " want " << want;
      }
    }
  }
  for (cudaStream_t s : streams) cudaStreamDestroy(s);
}

INSTANTIATE_TEST_SUITE_P(Ranks, EpNormalGpu, ::testing::Values(Case{2, false}, Case{4, false}, Case{2, true}, Case{4, true}),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           return "ep" + std::to_string(i.param.ranks) + (i.param.all_to_rank0 ? "_all_to_rank0" : "_random");
                         });

TEST(EpNormalGpuFailure, StalledRankTimesOutWithItsName) {
  NormalGpuConfig cfg;
  cfg.num_experts = 8;
  cfg.hidden = 64;
  cfg.max_tokens_per_rank = 4;
  cfg.top_k = 2;
  cfg.devices = default_devices(2, visible_gpus());
  cfg.timeout = std::chrono::milliseconds(300);
  auto created = NormalGpuGroup::create(cfg);
  ASSERT_TRUE(created.has_value()) << created.error().message();
  cudaSetDevice(cfg.devices[0]);
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  testing::Routing in = testing::random_routing(3, 64, 2, 8, 9);
  Tensor x = to_bf16(in.x).to(Device::kCuda), ids = in.ids.to(Device::kCuda), w = in.weights.to(Device::kCuda);
  Status st = ok_status();
  std::thread rank0([&] {  // rank 1 never calls
    cudaSetDevice(cfg.devices[0]);
    st = (*created)->rank(0).dispatch(x, ids, w, s);
    if (st) st = (*created)->rank(0).synchronize(s);
  });
  rank0.join();
  ASSERT_FALSE(st.has_value());
  EXPECT_NE(st.error().message().find("rank 1 did not arrive"), std::string::npos) << st.error().message();
  cudaStreamDestroy(s);
}

}  // namespace
}  // namespace pdserve::moe::gpu
