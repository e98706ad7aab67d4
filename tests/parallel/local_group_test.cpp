#include "parallel/local_group.h"

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>
#include <thread>

#include <gtest/gtest.h>

#include "base/clock.h"
#include "parallel/local_world.h"

namespace pdserve::parallel {
namespace {

using namespace std::chrono_literals;

// Runs fn(rank, comm) on n threads sharing one group; returns every rank's status.
std::vector<Status> run_group(int n, std::chrono::milliseconds timeout,
                              const std::function<Status(int, Communicator&)>& fn) {
  std::vector<int> globals(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) globals[static_cast<size_t>(i)] = i;
  auto group = LocalGroup::create("test", globals, CollectiveOptions{timeout});
  std::vector<Status> out(static_cast<size_t>(n), ok_status());
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      auto comm = group->member(r);
      out[static_cast<size_t>(r)] = fn(r, *comm);
    });
  for (auto& t : threads) t.join();
  return out;
}

std::string message(const Status& s) { return s.has_value() ? "ok" : s.error().message(); }
bool contains(const Status& s, const std::string& needle) { return message(s).find(needle) != std::string::npos; }

// Rank r sends (r + 1) * (d + 1) % 3 rows to rank d (zeros included); row values encode (src, dst, i).
std::vector<int64_t> a2a_rows(int src, int n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (int d = 0; d < n; ++d) v[static_cast<size_t>(d)] = (src + 1) * (d + 1) % 3;
  return v;
}

class Collectives : public ::testing::TestWithParam<int> {};

TEST_P(Collectives, EveryCollectiveDeliversExactlyWhatWasSent) {
  const int n = GetParam();
  constexpr int kWidth = 3;
  auto st = run_group(n, 20s, [&](int r, Communicator& c) -> Status {
    EXPECT_EQ(c.rank(), r);
    EXPECT_EQ(c.size(), n);
    for (int iter = 0; iter < 20; ++iter) {  // repeated: rounds must not bleed into each other
      PDSERVE_RETURN_IF_ERROR(c.barrier());

      // all_gather: rows [2, kWidth] from every rank.
      Tensor in = Tensor::empty({2, kWidth}, DType::kF32);
      for (int i = 0; i < 2 * kWidth; ++i) in.data<float>()[i] = static_cast<float>(r * 100 + iter * 10 + i);
      Tensor out = Tensor::empty({2 * n, kWidth}, DType::kF32);
      PDSERVE_RETURN_IF_ERROR(c.all_gather(in, out));
      for (int m = 0; m < n; ++m)
        for (int i = 0; i < 2 * kWidth; ++i)
          EXPECT_EQ(out.data<float>()[m * 2 * kWidth + i], static_cast<float>(m * 100 + iter * 10 + i));

      // all_gather_v: rank m contributes m rows (rank 0 none).
      std::vector<int64_t> rows(static_cast<size_t>(n));
      int64_t total = 0;
      for (int m = 0; m < n; ++m) total += (rows[static_cast<size_t>(m)] = m);
      Tensor vin = Tensor::empty({r, 1}, DType::kI64);
      for (int i = 0; i < r; ++i) vin.data<int64_t>()[i] = r * 1000 + i;
      Tensor vout = Tensor::empty({total, 1}, DType::kI64);
      PDSERVE_RETURN_IF_ERROR(c.all_gather_v(vin, rows, vout));
      for (int m = 0, row = 0; m < n; ++m)
        for (int i = 0; i < m; ++i, ++row) EXPECT_EQ(vout.data<int64_t>()[row], m * 1000 + i);

      // all_reduce in place: sum / max / min over f32, i32, i64.
      Tensor f = Tensor::empty({4}, DType::kF32);
      for (int i = 0; i < 4; ++i) f.data<float>()[i] = 0.1f * static_cast<float>(r + i);
      PDSERVE_RETURN_IF_ERROR(c.all_reduce(f, ReduceOp::kSum));
      for (int i = 0; i < 4; ++i) {
        float want = 0.0f;
        for (int m = 0; m < n; ++m) want = m == 0 ? 0.1f * static_cast<float>(m + i) : want + 0.1f * static_cast<float>(m + i);
        EXPECT_EQ(f.data<float>()[i], want);  // bitwise: members are reduced in group order
      }
      Tensor mx = Tensor::empty({1}, DType::kI32), mn = Tensor::empty({1}, DType::kI64);
      mx.data<int32_t>()[0] = (r * 7) % n;
      mn.data<int64_t>()[0] = 50 - r;
      PDSERVE_RETURN_IF_ERROR(c.all_reduce(mx, ReduceOp::kMax));
      PDSERVE_RETURN_IF_ERROR(c.all_reduce(mn, ReduceOp::kMin));
      int want_max = 0;
      for (int m = 0; m < n; ++m) want_max = std::max(want_max, (m * 7) % n);
      EXPECT_EQ(mx.data<int32_t>()[0], want_max);
      EXPECT_EQ(mn.data<int64_t>()[0], 50 - (n - 1));

      // all_to_all_v with uneven and zero counts.
      const std::vector<int64_t> send_rows = a2a_rows(r, n);
      std::vector<int64_t> recv_rows(static_cast<size_t>(n));
      for (int s = 0; s < n; ++s) recv_rows[static_cast<size_t>(s)] = a2a_rows(s, n)[static_cast<size_t>(r)];
      int64_t ns = 0, nr = 0;
      for (auto x : send_rows) ns += x;
      for (auto x : recv_rows) nr += x;
      Tensor send = Tensor::empty({ns, 2}, DType::kI32), recv = Tensor::empty({nr, 2}, DType::kI32);
      for (int d = 0, row = 0; d < n; ++d)
        for (int i = 0; i < send_rows[static_cast<size_t>(d)]; ++i, ++row) {
          send.data<int32_t>()[row * 2] = r * 100 + d;
          send.data<int32_t>()[row * 2 + 1] = i + iter;
        }
      PDSERVE_RETURN_IF_ERROR(c.all_to_all_v(send, send_rows, recv, recv_rows));
      for (int s = 0, row = 0; s < n; ++s)
        for (int i = 0; i < recv_rows[static_cast<size_t>(s)]; ++i, ++row) {
          EXPECT_EQ(recv.data<int32_t>()[row * 2], s * 100 + r);
          EXPECT_EQ(recv.data<int32_t>()[row * 2 + 1], i + iter);
        }

      // The conveniences.
      PDSERVE_ASSIGN_OR_RETURN(auto values, c.all_gather_value(r * 3));
      for (int m = 0; m < n; ++m) EXPECT_EQ(values[static_cast<size_t>(m)], m * 3);
      std::vector<int64_t> to(static_cast<size_t>(n));
      for (int d = 0; d < n; ++d) to[static_cast<size_t>(d)] = r * 10 + d;
      PDSERVE_ASSIGN_OR_RETURN(auto from, c.all_to_all_values(to));
      for (int s = 0; s < n; ++s) EXPECT_EQ(from[static_cast<size_t>(s)], s * 10 + r);
    }
    return ok_status();
  });
  for (int r = 0; r < n; ++r) EXPECT_TRUE(st[static_cast<size_t>(r)].has_value()) << "rank " << r << ": " << message(st[static_cast<size_t>(r)]);
}

INSTANTIATE_TEST_SUITE_P(Ranks, Collectives, ::testing::Values(1, 2, 4, 8));

TEST(LocalGroup, IdleRanksExchangeZeroRowsWithoutHanging) {
  auto st = run_group(4, 10s, [](int r, Communicator& c) -> Status {
    const std::vector<int64_t> zeros(4, 0);
    Tensor send = Tensor::empty({0, 8}, DType::kF32), recv = Tensor::empty({0, 8}, DType::kF32);
    for (int i = 0; i < 50; ++i) PDSERVE_RETURN_IF_ERROR(c.all_to_all_v(send, zeros, recv, zeros));
    Tensor g = Tensor::empty({0, 8}, DType::kF32);
    PDSERVE_RETURN_IF_ERROR(c.all_gather_v(send, zeros, g));
    (void)r;
    return ok_status();
  });
  for (const auto& s : st) EXPECT_TRUE(s.has_value()) << message(s);
}

TEST(LocalGroup, MissingRanksTurnIntoATimeoutNamingThem) {
  Stopwatch sw;
  auto st = run_group(4, 300ms, [](int r, Communicator& c) -> Status {
    if (r >= 2) return ok_status();  // ranks 2 and 3 "died" before the collective
    return c.barrier();
  });
  EXPECT_LT(sw.seconds(), 5.0);
  for (int r = 0; r < 2; ++r) {
    ASSERT_FALSE(st[static_cast<size_t>(r)].has_value());
    EXPECT_TRUE(contains(st[static_cast<size_t>(r)], "timed out after 300 ms")) << message(st[static_cast<size_t>(r)]);
    EXPECT_TRUE(contains(st[static_cast<size_t>(r)], "ranks 2, 3 did not arrive")) << message(st[static_cast<size_t>(r)]);
    EXPECT_TRUE(contains(st[static_cast<size_t>(r)], "barrier")) << message(st[static_cast<size_t>(r)]);
  }
}

TEST(LocalGroup, AStalledRankFailsTheOthersAndThenFailsItselfAtOnce) {
  std::atomic<double> late_call_seconds{-1.0};
  auto st = run_group(3, 200ms, [&](int r, Communicator& c) -> Status {
    Tensor t = Tensor::empty({2}, DType::kF32);
    PDSERVE_RETURN_IF_ERROR(c.all_reduce(t, ReduceOp::kSum));  // everyone, once
    if (r == 1) std::this_thread::sleep_for(600ms);             // then rank 1 stalls
    Stopwatch sw;
    Status s = c.all_reduce(t, ReduceOp::kSum);
    if (r == 1) late_call_seconds = sw.seconds();
    return s;
  });
  for (int r : {0, 2}) EXPECT_TRUE(contains(st[static_cast<size_t>(r)], "rank 1 did not arrive")) << message(st[static_cast<size_t>(r)]);
  // The late rank does not start a collective the others gave up on: it gets the same error at once.
  EXPECT_TRUE(contains(st[1], "rank 1 did not arrive")) << message(st[1]);
  EXPECT_LT(late_call_seconds.load(), 0.1);
}

TEST(LocalGroup, MembersCallingDifferentCollectivesAllFail) {
  auto st = run_group(3, 5s, [](int r, Communicator& c) -> Status {
    if (r == 2) return c.barrier();
    Tensor in = Tensor::empty({1}, DType::kF32), out = Tensor::empty({3}, DType::kF32);
    return c.all_gather(in, out);
  });
  for (const auto& s : st) {
    ASSERT_FALSE(s.has_value());
    EXPECT_TRUE(contains(s, "members disagree")) << message(s);
    EXPECT_TRUE(contains(s, "rank 2 called barrier")) << message(s);
  }
}

TEST(LocalGroup, AllToAllCountsThatDoNotMatchAreAnErrorOnEveryMember) {
  auto st = run_group(2, 5s, [](int r, Communicator& c) -> Status {
    // Rank 0 sends 2 rows to rank 1, but rank 1 expects 1.
    std::vector<int64_t> send_rows = {0, r == 0 ? 2 : 0}, recv_rows = {r == 1 ? 1 : 0, 0};
    Tensor send = Tensor::empty({send_rows[1], 4}, DType::kF32), recv = Tensor::empty({recv_rows[0], 4}, DType::kF32);
    return c.all_to_all_v(send, send_rows, recv, recv_rows);
  });
  for (const auto& s : st) {
    ASSERT_FALSE(s.has_value());
    EXPECT_EQ(s.error().code(), ErrorCode::kInvalidArgument);
    EXPECT_TRUE(contains(s, "rank 0 sends 2 rows to rank 1, which expects 1")) << message(s);
  }
}

TEST(LocalGroup, ABadArgumentOnOneRankReleasesThePeersWithoutWaitingForTheTimeout) {
  Stopwatch sw;
  auto st = run_group(4, 60s, [](int r, Communicator& c) -> Status {
    Tensor in = Tensor::empty({1, 2}, DType::kF32);
    Tensor out = Tensor::empty({r == 3 ? 3 : 4, 2}, DType::kF32);  // rank 3's output is too small
    return c.all_gather(in, out);
  });
  EXPECT_LT(sw.seconds(), 10.0);
  EXPECT_EQ(st[3].error().code(), ErrorCode::kInvalidArgument);
  for (const auto& s : st) EXPECT_TRUE(contains(s, "all_gather: out f32 [3, 2] must be 4 rows")) << message(s);
}

TEST(LocalWorld, RunsOneThreadPerRankWithItsLogPrefixAndStopsPeersOfAFailedRank) {
  ParallelConfig cfg;
  cfg.tp_size = 4;
  cfg.dp_size = 4;
  cfg.enable_dp_attention = true;
  cfg.moe_a2a_backend = MoeA2aBackend::kDeepEp;
  auto layout = RankLayout::create(cfg);
  ASSERT_TRUE(layout);
  LocalWorld world(*layout, CollectiveOptions{60s});
  std::vector<std::string> prefixes(4);
  auto ok = world.run([&](const RankInfo& info, RankComms& comms) -> Status {
    prefixes[static_cast<size_t>(info.global_rank)] = log::thread_prefix();
    EXPECT_EQ(comms.ep->size(), 4);
    EXPECT_EQ(comms.attn_tp->size(), 1);
    PDSERVE_ASSIGN_OR_RETURN(auto v, comms.ep->all_gather_value(info.global_rank));
    EXPECT_EQ(v, (std::vector<int64_t>{0, 1, 2, 3}));
    return comms.attn_tp->barrier();
  });
  EXPECT_TRUE(first_error(ok).has_value()) << message(first_error(ok));
  EXPECT_EQ(prefixes[2], " DP2 TP2 EP2");

  // A fresh world: rank 2 throws before the exchange; the others must not wait the 60 s out.
  LocalWorld world2(*layout, CollectiveOptions{60s});
  Stopwatch sw;
  auto st = world2.run([&](const RankInfo& info, RankComms& comms) -> Status {
    if (info.global_rank == 2) throw std::runtime_error("weights missing");
    return comms.ep->barrier();
  });
  EXPECT_LT(sw.seconds(), 10.0);
  for (const auto& s : st) EXPECT_TRUE(contains(s, "weights missing")) << message(s);
}

}  // namespace
}  // namespace pdserve::parallel
