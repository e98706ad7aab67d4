// CUDA MoE dispatch/combine against the CPU op on random routings. Scatter and counts are exact
// (slots equal, copied rows bit-identical); combine within 1e-6 of max|cpu| for f32 rows (FMA
// contraction only) and 1e-6 for bf16 rows read as the same values.
#include <random>
#include <vector>

#include "gpu/gpu_test_util.h"
#include "ops/cuda/cuda_common.h"
#include "ops/moe_dispatch.h"
#include "tensor/dtype.h"

namespace pdserve::gpu_test {
namespace {

Tensor random_ids(int64_t T, int64_t k, int64_t E, uint32_t seed) {
  Tensor ids = Tensor::empty({T, k}, DType::kI32);
  std::mt19937 rng(seed);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int32_t> all(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) all[e] = static_cast<int32_t>(e);
    std::shuffle(all.begin(), all.end(), rng);  // distinct experts per token, as top-k gives
    for (int64_t j = 0; j < k; ++j) ids.data<int32_t>()[t * k + j] = all[j];
  }
  return ids;
}

TEST(MoeDispatchGpu, ScatterAndCombineMatchCpu) {
  struct Case { int64_t T, k, E, K; bool masked; };
  // Widths that are multiples of 8 take the 16-byte combine kernel, 100 and 36 the scalar one.
  for (const Case c : {Case{1, 8, 256, 7168, true}, Case{37, 4, 16, 256, false}, Case{300, 8, 64, 128, true},
                       Case{1000, 8, 256, 64, false}, Case{5, 8, 16, 100, true}, Case{64, 2, 8, 36, false}}) {
    Tensor x = random_host({c.T, c.K}, 3), ids = random_ids(c.T, c.k, c.E, static_cast<uint32_t>(c.T));
    Tensor counts = Tensor::empty({c.E}, DType::kI32);
    ops::moe_count(ids, counts);
    Tensor base = Tensor::empty({c.E}, DType::kI32);
    int64_t rows = 0;
    for (int64_t e = 0; e < c.E; ++e) {
      base.data<int32_t>()[e] = static_cast<int32_t>(c.masked ? e * c.T : rows);
      rows += counts.data<int32_t>()[e];
    }
    if (c.masked) rows = c.E * c.T;
    Tensor out = Tensor::empty({rows, c.K}, DType::kF32), slots = Tensor::empty({c.T, c.k}, DType::kI32);
    ops::moe_scatter(x, ids, base, out, slots, counts);

    Tensor ids_d = ids.to(Device::kCuda), counts_d = poisoned_device({c.E}, DType::kI32);
    ops::moe_count(ids_d, counts_d);
    EXPECT_EQ(std::memcmp(counts_d.to(Device::kCpu).raw_data(), counts.raw_data(), counts.nbytes()), 0);
    Tensor out_d = Tensor::empty({rows, c.K}, DType::kF32).to(Device::kCuda);  // zeros, like the host buffer
    Tensor slots_d = poisoned_device({c.T, c.k}, DType::kI32);
    counts_d = poisoned_device({c.E}, DType::kI32);
    ops::moe_scatter(x.to(Device::kCuda), ids_d, base.to(Device::kCuda), out_d, slots_d, counts_d);
    EXPECT_EQ(std::memcmp(slots_d.to(Device::kCpu).raw_data(), slots.raw_data(), slots.nbytes()), 0) << c.T;
    EXPECT_EQ(std::memcmp(counts_d.to(Device::kCpu).raw_data(), counts.raw_data(), counts.nbytes()), 0) << c.T;
    EXPECT_EQ(std::memcmp(out_d.to(Device::kCpu).raw_data(), out.raw_data(), out.nbytes()), 0) << c.T;

    // Combine: y = the scattered rows scaled, weights random, accumulating into a random out.
    Tensor w = random_host({c.T, c.k}, 5), acc = random_host({c.T, c.K}, 6);
    Tensor want = acc.clone();
    ops::moe_combine(out, slots, w, want);
    Tensor got = acc.to(Device::kCuda);
    ops::moe_combine(out_d, slots_d, w.to(Device::kCuda), got);
    EXPECT_LT(rel_max_err(got.to(Device::kCpu), want), 1e-6) << c.T;
    // bf16 rows: the same values rounded to bf16 on both sides.
    Tensor out_bf = Tensor::empty(out.shape(), DType::kBF16);
    convert_from_f32(DType::kBF16, out.data<float>(), out_bf.raw_data(), static_cast<size_t>(out.numel()));
    Tensor want_bf = acc.clone();
    ops::moe_combine(out_bf.to_f32(), slots, w, want_bf);
    Tensor got_bf = acc.to(Device::kCuda);
    ops::moe_combine(out_bf.to(Device::kCuda), slots_d, w.to(Device::kCuda), got_bf);
    EXPECT_LT(rel_max_err(got_bf.to(Device::kCpu), want_bf), 1e-6) << c.T;
    // Dropped entries (slot -1, a padding row's) and slots past y's rows add nothing.
    Tensor holes = slots.clone();
    for (int64_t i = 0; i < holes.numel(); i += 3) holes.data<int32_t>()[i] = i % 2 == 0 ? -1 : static_cast<int32_t>(rows + i);
    Tensor want_h = acc.clone();
    ops::moe_combine(out, holes, w, want_h);
    Tensor got_h = acc.to(Device::kCuda);
    ops::moe_combine(out_d, holes.to(Device::kCuda), w.to(Device::kCuda), got_h);
    EXPECT_LT(rel_max_err(got_h.to(Device::kCpu), want_h), 1e-6) << c.T;
  }
}

// Padding rows dropped on the device exactly as on the host, for random lengths (a quarter zero).
TEST(MoeDispatchGpu, DropPaddingRowsMatchesCpu) {
  for (const int64_t T : {1, 7, 64, 300}) {
    Tensor ids = random_ids(T, 8, 64, static_cast<uint32_t>(T) + 1);
    Tensor lens = Tensor::empty({T}, DType::kI32);
    std::mt19937 rng(static_cast<uint32_t>(T));
    for (int64_t t = 0; t < T; ++t) lens.data<int32_t>()[t] = rng() % 4 == 0 ? 0 : static_cast<int32_t>(1 + rng() % 100);
    Tensor ids_d = ids.to(Device::kCuda);
    ops::moe_drop_padding_rows(lens, ids);
    ops::moe_drop_padding_rows(lens.to(Device::kCuda), ids_d);
    EXPECT_EQ(std::memcmp(ids_d.to(Device::kCpu).raw_data(), ids.raw_data(), ids.nbytes()), 0) << T;
  }
}

TEST(MoeDispatchGpu, MapExpertIdsMatchesCpu) {
  for (const int64_t T : {1, 7, 300}) {
    Tensor ids = random_ids(T, 8, 64, static_cast<uint32_t>(T) + 5);
    for (int64_t i = 0; i < ids.numel(); i += 7) ids.data<int32_t>()[i] = -1;
    Tensor table = Tensor::empty({64}, DType::kI32);
    std::mt19937 rng(static_cast<uint32_t>(T));
    for (int64_t e = 0; e < 64; ++e) table.data<int32_t>()[e] = static_cast<int32_t>(rng() % 96);
    Tensor out = Tensor::empty(ids.shape(), DType::kI32);
    ops::moe_map_expert_ids(ids, table, out);
    Tensor ids_d = ids.to(Device::kCuda), out_d = Tensor::empty(ids.shape(), DType::kI32, Device::kCuda);
    ops::moe_map_expert_ids(ids_d, table.to(Device::kCuda), out_d);
    EXPECT_EQ(std::memcmp(out_d.to(Device::kCpu).raw_data(), out.raw_data(), out.nbytes()), 0) << T;
  }
}

// A random replica table: logical e has 1..C copies among P physical ids.
struct Replicas {
  Tensor table, copies;
};
Replicas random_replicas(int64_t L, int64_t C, int64_t P, uint32_t seed) {
  std::mt19937 rng(seed);
  Replicas r{Tensor::empty({L, C}, DType::kI32), Tensor::empty({L}, DType::kI32)};
  for (int64_t e = 0; e < L; ++e) {
    r.copies.data<int32_t>()[e] = static_cast<int32_t>(1 + rng() % C);
    for (int64_t c = 0; c < C; ++c) r.table.data<int32_t>()[e * C + c] = static_cast<int32_t>(rng() % P);
  }
  return r;
}

Tensor one_draw(int64_t d, Device device) {
  Tensor t = Tensor::empty({1}, DType::kI64);
  t.data<int64_t>()[0] = d;
  return t.to(device);
}

// The device picks exactly the CPU's copies (one hash for both), for several draws in a row.
TEST(MoeDispatchGpu, PickExpertReplicasMatchesCpu) {
  for (const int64_t T : {1, 7, 300, 16384}) {
    Tensor ids = random_ids(T, 8, 64, static_cast<uint32_t>(T) + 9);
    for (int64_t i = 0; i < ids.numel(); i += 11) ids.data<int32_t>()[i] = -1;
    const Replicas r = random_replicas(64, 4, 96, static_cast<uint32_t>(T));
    Tensor draw = one_draw(3, Device::kCpu), draw_d = one_draw(3, Device::kCuda);
    const Tensor ids_d = ids.to(Device::kCuda), table_d = r.table.to(Device::kCuda), copies_d = r.copies.to(Device::kCuda);
    for (int call = 0; call < 2; ++call) {
      Tensor out = Tensor::empty(ids.shape(), DType::kI32), out_d = Tensor::empty(ids.shape(), DType::kI32, Device::kCuda);
      ops::moe_pick_expert_replicas(ids, r.table, r.copies, 42 + T, draw, out);
      ops::moe_pick_expert_replicas(ids_d, table_d, copies_d, 42 + T, draw_d, out_d);
      EXPECT_EQ(std::memcmp(out_d.to(Device::kCpu).raw_data(), out.raw_data(), out.nbytes()), 0) << T << " call " << call;
    }
    EXPECT_EQ(draw_d.to(Device::kCpu).data<int64_t>()[0], 5) << T;
  }
}

// Captured once in a CUDA graph, each replay draws afresh (the draw lives on the device) and equals
// the CPU's pick for that draw.
TEST(MoeDispatchGpu, PickExpertReplicasDrawsAfreshOnEachGraphReplay) {
  const Tensor ids = random_ids(64, 8, 32, 77);
  const Replicas r = random_replicas(32, 3, 48, 78);
  const Tensor ids_d = ids.to(Device::kCuda), table_d = r.table.to(Device::kCuda), copies_d = r.copies.to(Device::kCuda);
  Tensor draw_d = one_draw(0, Device::kCuda), out_d = Tensor::empty(ids.shape(), DType::kI32, Device::kCuda);
  cudaStream_t stream = nullptr;
  ops::cuda::check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  ops::cuda::set_current_stream(stream);
  ops::cuda::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ops::cuda::check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  ops::moe_pick_expert_replicas(ids_d, table_d, copies_d, 5, draw_d, out_d);
  ops::cuda::check(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
  ops::cuda::check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
  Tensor draw = one_draw(0, Device::kCpu);
  std::vector<std::vector<int32_t>> replays;
  for (int replay = 0; replay < 3; ++replay) {
    ops::cuda::check(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
    ops::cuda::check(cudaStreamSynchronize(stream), "sync");
    Tensor out = Tensor::empty(ids.shape(), DType::kI32);
    ops::moe_pick_expert_replicas(ids, r.table, r.copies, 5, draw, out);
    const Tensor got = out_d.to(Device::kCpu);
    EXPECT_EQ(std::memcmp(got.raw_data(), out.raw_data(), out.nbytes()), 0) << "replay " << replay;
    replays.emplace_back(got.data<int32_t>(), got.data<int32_t>() + got.numel());
  }
  EXPECT_NE(replays[0], replays[1]);  // 512 entries over 1-3 copies: equal draws would be a stuck counter
  EXPECT_EQ(draw_d.to(Device::kCpu).data<int64_t>()[0], 3);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  ops::cuda::set_current_stream(cudaStreamPerThread);
  cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace pdserve::gpu_test
