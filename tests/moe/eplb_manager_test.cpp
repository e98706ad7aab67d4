#include "moe/eplb_manager.h"

#include <atomic>
#include <barrier>
#include <random>
#include <thread>

#include <gtest/gtest.h>

namespace pdserve::moe {
namespace {

// 4 layers (layer 0 dense), 8 logical experts, 4 redundant, 4 ranks of 3 slots each.
constexpr ExpertLayout kLayout{4, 8, 12, 4};

struct World {
  std::unique_ptr<ExpertDistributionRecorder> recorder;
  std::shared_ptr<const ExpertLocation> initial;
  std::unique_ptr<EplbManager> manager;

  explicit World(int64_t every, int64_t chunk = -1, double min_utilization = 1.0) {
    RecorderOptions ro;
    ro.layout = kLayout;
    ro.buffer_size = every;
    recorder = *ExpertDistributionRecorder::create(ro);
    initial = std::make_shared<const ExpertLocation>(*ExpertLocation::trivial(kLayout));
    EplbManagerOptions mo;
    mo.rebalance_num_iterations = every;
    mo.layers_per_chunk = chunk;
    mo.min_rebalancing_utilization_threshold = min_utilization;
    mo.eplb.algorithm = EplbAlgorithm::kDeepseek;
    auto m = EplbManager::create(mo, initial, recorder.get());
    EXPECT_TRUE(m.has_value()) << m.error().message();
    manager = std::move(*m);
    EXPECT_TRUE(recorder->recording());  // recording from startup
  }
};

// Records one rank's pass: `tokens` tokens routed to logical experts (mostly `hot` and hot+1),
// recorded as the physical copies `d` sends them to.
void record_skewed_pass(World& w, ExpertDispatcher& d, int rank_id, int64_t pass_id, int hot, int tokens = 8) {
  PassRouting p;
  p.forward_pass_id = pass_id;
  p.rank = rank_id;
  p.top_k = 2;
  for (int layer = 1; layer < kLayout.num_layers; ++layer) {
    std::vector<int32_t> ids;
    for (int t = 0; t < tokens; ++t) {
      ids.push_back(hot);
      ids.push_back(t % 4 == 0 ? (hot + 2 + t) % 8 : (hot + 1) % 8);
    }
    d.to_physical(layer, ids);
    p.physical_ids[layer] = std::move(ids);
  }
  EXPECT_TRUE(w.recorder->record(p).has_value());
}

// One rank's pass as the server's RecordingRunner does it: pick up the placement, record the
// pass's routing, count the pass.
void rank_pass(World& w, RankExpertLocation& rank, int rank_id, int64_t pass_id, int hot, int tokens = 8) {
  rank.sync();
  record_skewed_pass(w, rank.dispatcher(), rank_id, pass_id, hot, tokens);
  w.manager->on_forward_pass(pass_id);
}

// The logical load rank_pass produces per server pass (4 ranks).
Matrix skewed_load(int hot, int passes) {
  Matrix m(kLayout.num_layers, kLayout.num_logical);
  for (int layer = 1; layer < kLayout.num_layers; ++layer)
    for (int t = 0; t < 8; ++t) {
      m.at(layer, hot) += 4.0 * passes;
      m.at(layer, t % 4 == 0 ? (hot + 2 + t) % 8 : (hot + 1) % 8) += 4.0 * passes;
    }
  return m;
}

TEST(EplbManager, CreateRejectsBadOptions) {
  RecorderOptions ro;
  ro.layout = kLayout;
  auto rec = *ExpertDistributionRecorder::create(ro);
  auto loc = std::make_shared<const ExpertLocation>(*ExpertLocation::trivial(kLayout));
  EplbManagerOptions mo;
  mo.rebalance_num_iterations = 0;
  EXPECT_FALSE(EplbManager::create(mo, loc, rec.get()).has_value());
  mo.rebalance_num_iterations = 10;
  mo.eplb.num_groups = 3;  // 8 experts do not split into 3 groups
  mo.eplb.algorithm = EplbAlgorithm::kDeepseekHierarchical;
  auto bad = EplbManager::create(mo, loc, rec.get());
  ASSERT_FALSE(bad.has_value());
  EXPECT_NE(bad.error().message().find("--enable-eplb"), std::string::npos) << bad.error().message();
}

TEST(EplbManager, SkewedWindowChangesPlacementAndImprovesBalancedness) {
  World w(10);
  std::vector<RankExpertLocation> ranks;
  for (int r = 0; r < 4; ++r) ranks.emplace_back(w.manager.get(), nullptr, DispatchAlgorithm::kStatic, r);
  EXPECT_FALSE(w.manager->start_rebalance());  // empty window: nothing to do
  EXPECT_EQ(w.manager->version(), 0u);
  for (int64_t pass = 0; pass < 9; ++pass)
    for (int r = 0; r < 4; ++r) rank_pass(w, ranks[r], r, pass, /*hot=*/0);
  EXPECT_EQ(w.manager->num_rebalances(), 0);
  EXPECT_EQ(w.manager->version(), 0u);
  const double before_gauge = w.manager->current_balancedness();
  for (int r = 0; r < 4; ++r) rank_pass(w, ranks[r], r, 9, 0);  // server step 10: rebalance
  EXPECT_EQ(w.manager->num_rebalances(), 1);
  EXPECT_EQ(w.manager->version(), 1u);
  EXPECT_FALSE(w.manager->rebalancing());
  auto now = w.manager->location();
  EXPECT_NE(now->physical_to_logical(), w.initial->physical_to_logical());
  EXPECT_GT(now->replicas(1, 0).size(), 1u);  // the hot expert got copies
  const Matrix load = skewed_load(0, 10);
  const double before = compute_balancedness(load, w.initial->physical_to_logical(), 4)->mean;
  const double after = compute_balancedness(load, now->physical_to_logical(), 4)->mean;
  std::printf("balancedness of the skewed window: %.3f -> %.3f (gauge before %.3f)\n", before, after, before_gauge);
  EXPECT_NEAR(before_gauge, before, 1e-9);
  EXPECT_GT(after, before + 0.2);
  // The next window starts under the new maps: only pass 9 of the ranks after the first is in it.
  EXPECT_EQ(w.recorder->num_passes(), 1);
  // Ranks pick the placement up at their next pass, and route only to copies of the right expert.
  ranks[2].sync();
  EXPECT_EQ(ranks[2].version(), 1u);
  std::vector<int32_t> ids{0, 1, 2, 3, 4, 5, 6, 7};
  ranks[2].dispatcher().to_physical(1, ids);
  for (int e = 0; e < 8; ++e) EXPECT_EQ(now->logical_of(1, ids[e]), e);
  const std::string m = w.manager->render_metrics("model_name=\"t\"");
  EXPECT_NE(m.find("sglang:eplb_rebalances_total{model_name=\"t\"} 1\n"), std::string::npos) << m;
  EXPECT_NE(m.find("# TYPE sglang:eplb_window_balancedness gauge"), std::string::npos) << m;
}

// --eplb-min-rebalancing-utilization-threshold: the skewed window's balancedness under the trivial
// placement is well below 1; a threshold under it skips the rebalance, one above it lets it run.
TEST(EplbManager, UtilizationThresholdSkipsRebalancingWhenBalancedEnough) {
  const Matrix load = skewed_load(0, 10);
  auto trivial = ExpertLocation::trivial(kLayout);
  const double now = compute_balancedness(load, trivial->physical_to_logical(), 4)->mean;
  ASSERT_LT(now, 0.9);
  for (const double threshold : {now - 0.05, now + 0.05}) {
    World w(10, -1, threshold);
    std::vector<RankExpertLocation> ranks;
    for (int r = 0; r < 4; ++r) ranks.emplace_back(w.manager.get(), nullptr, DispatchAlgorithm::kStatic, r);
    for (int64_t pass = 0; pass < 10; ++pass)
      for (int r = 0; r < 4; ++r) rank_pass(w, ranks[r], r, pass, 0);
    EXPECT_EQ(w.manager->num_rebalances(), threshold < now ? 0 : 1) << "threshold " << threshold << ", window " << now;
  }
  RecorderOptions ro;
  ro.layout = kLayout;
  auto rec = *ExpertDistributionRecorder::create(ro);
  EplbManagerOptions bad;
  bad.min_rebalancing_utilization_threshold = 1.5;
  EXPECT_FALSE(EplbManager::create(bad, std::make_shared<const ExpertLocation>(*trivial), rec.get()).has_value());
}

TEST(EplbManager, ChunksApplyKLayersPerPass) {
  for (int64_t chunk : {1, 3}) {
    World w(5, chunk);
    std::vector<RankExpertLocation> ranks;
    for (int r = 0; r < 4; ++r) ranks.emplace_back(w.manager.get(), nullptr, DispatchAlgorithm::kStatic, r);
    std::vector<std::shared_ptr<const ExpertLocation>> seen;  // the placement after each server step
    for (int64_t pass = 0; pass < 9; ++pass) {  // one rebalance: the next is due at step 10
      for (int r = 0; r < 4; ++r) rank_pass(w, ranks[r], r, pass, 3);
      seen.push_back(w.manager->location());
    }
    // Step 5 computes the placement and publishes the first chunk; one chunk per step after it.
    const int chunks = static_cast<int>((kLayout.num_layers + chunk - 1) / chunk);
    EXPECT_EQ(w.manager->num_rebalances(), 1) << chunk;
    EXPECT_EQ(w.manager->version(), static_cast<uint64_t>(chunks)) << chunk;
    const auto& final_map = seen[4 + chunks - 1]->physical_to_logical();
    for (int c = 0; c < chunks; ++c) {
      const auto& map = seen[4 + c]->physical_to_logical();
      const int done = static_cast<int>(std::min<int64_t>(kLayout.num_layers, (c + 1) * chunk));
      for (int l = 0; l < kLayout.num_layers; ++l)
        EXPECT_EQ(map[l], l < done ? final_map[l] : w.initial->physical_to_logical()[l])
            << "chunk " << chunk << " step " << c << " layer " << l;
    }
    EXPECT_FALSE(w.manager->rebalancing());
    EXPECT_EQ(seen[3], w.initial);  // nothing before the 5th step
    EXPECT_NE(final_map[1], w.initial->physical_to_logical()[1]);
  }
}

// Ranks forward on their own threads while the manager rebalances every few steps with one layer
// per chunk and a scrape reads the gauge: every pass must see one whole snapshot, whose copies all
// hold the expert they are dispatched for.
TEST(EplbManager, ConcurrentRanksNeverSeeATornMap) {
  World w(7, 1);
  std::atomic<int> bad{0};
  std::atomic<bool> done{false};
  std::vector<std::thread> threads;
  std::atomic<uint64_t> versions_seen{0};
  for (int r = 0; r < 4; ++r)
    threads.emplace_back([&, r] {
      RankExpertLocation rank(w.manager.get(), nullptr, r % 2 ? DispatchAlgorithm::kDynamic : DispatchAlgorithm::kStatic, r);
      uint64_t last = 0;
      for (int64_t pass = 0; pass < 600; ++pass) {
        const int hot = static_cast<int>(pass / 40) % 8;  // the skew moves: placements keep changing
        rank_pass(w, rank, r, pass, hot);
        if (rank.version() < last) ++bad;  // versions only move forward
        last = rank.version();
        // The snapshot this rank uses until its next sync, checked in full.
        const ExpertLocation& loc = rank.dispatcher().location();
        for (int l = 0; l < kLayout.num_layers; ++l)
          for (int e = 0; e < kLayout.num_logical; ++e) {
            std::vector<int32_t> ids{e, e, e};
            rank.dispatcher().to_physical(l, ids);
            for (int32_t p : ids)
              if (loc.logical_of(l, p) != e) ++bad;
          }
      }
      versions_seen.fetch_add(last);
    });
  std::thread scraper([&] {
    while (!done) {
      const double b = w.manager->current_balancedness();
      if (!(b > 0 && b <= 1.0 + 1e-9)) ++bad;
    }
  });
  for (auto& t : threads) t.join();
  done = true;
  scraper.join();
  EXPECT_EQ(bad.load(), 0);
  // Passes here take microseconds: while the rank computing a placement is descheduled, the others
  // may run every remaining step (each skipped, the manager being busy), so how many rebalances
  // finish depends on scheduling. A few more steps with no contention must complete one.
  for (int64_t pass = 600; pass < 630; ++pass) w.manager->on_forward_pass(pass);
  EXPECT_GE(w.manager->num_rebalances(), 1);
  EXPECT_GT(versions_seen.load(), 0u);
  std::printf("%lld rebalances, %llu placements published\n", static_cast<long long>(w.manager->num_rebalances()),
              static_cast<unsigned long long>(w.manager->version()));
}

// An EP rank's step in the lockstep form (EpModelExperts::begin_step): drive, then read the
// placement of this step; then the pass records its routing under that placement.
std::shared_ptr<const ExpertLocation> ep_rank_step(World& w, int rank_id, int64_t step, int hot) {
  w.manager->on_group_step(step);
  auto loc = w.manager->location_at(step);
  ExpertDispatcher d(loc, DispatchAlgorithm::kStatic, rank_id);
  record_skewed_pass(w, d, rank_id, step, hot);
  return loc;
}

// A placement published while group step s runs takes effect at step s + 1, not during s: ranks
// that read step s's placement before or after the publish must read the same one.
TEST(EplbManager, LockstepPlacementTakesEffectAtTheNextGroupStep) {
  for (int64_t chunk : {-1, 1}) {
    World w(5, chunk);
    std::vector<std::shared_ptr<const ExpertLocation>> at;
    for (int64_t step = 0; step < 10; ++step) at.push_back(ep_rank_step(w, 0, step, 2));  // the next is due at 10
    ASSERT_EQ(w.manager->num_rebalances(), 1) << chunk;
    // Step 5 triggers the rebalance: its placement is still the initial one, step 6 sees the first
    // (or only) chunk, and with one layer per chunk each later step one more layer.
    for (int64_t step = 0; step <= 5; ++step) EXPECT_EQ(at[step].get(), w.initial.get()) << "chunk " << chunk << " step " << step;
    EXPECT_NE(at[6].get(), w.initial.get()) << chunk;
    EXPECT_EQ(w.manager->location_at(5).get(), w.initial.get());  // still answerable afterwards
    const int chunks = chunk > 0 ? kLayout.num_layers : 1;
    for (int c = 1; c < chunks; ++c) EXPECT_NE(at[6 + c].get(), at[5 + c].get()) << "chunk step " << c;
    EXPECT_EQ(at[6 + chunks - 1].get(), w.manager->location().get());
    EXPECT_EQ(at[9].get(), w.manager->location().get());
  }
}

// Four rank threads in lockstep (a barrier between steps, as the group's agreement is), arriving
// in random order so that any of them drives a step: at every step all four read the same
// placement, while rebalances keep publishing one layer per step.
TEST(EplbManager, LockstepRanksAgreeOnEveryStepsPlacement) {
  World w(6, 1);
  constexpr int kRanks = 4;
  constexpr int64_t kSteps = 240;
  std::vector<std::vector<const ExpertLocation*>> seen(kRanks, std::vector<const ExpertLocation*>(kSteps));
  std::vector<std::shared_ptr<const ExpertLocation>> keep(kSteps);  // keeps every snapshot alive
  std::mutex keep_mu;
  std::barrier step_done(kRanks);
  std::vector<std::thread> threads;
  for (int r = 0; r < kRanks; ++r)
    threads.emplace_back([&, r] {
      std::mt19937 rng(static_cast<uint32_t>(r));
      for (int64_t step = 0; step < kSteps; ++step) {
        for (int spin = static_cast<int>(rng() % 200); spin > 0; --spin) std::this_thread::yield();
        auto loc = ep_rank_step(w, r, step, static_cast<int>(step / 30) % 8);
        seen[r][step] = loc.get();
        {
          std::lock_guard<std::mutex> lock(keep_mu);
          keep[step] = loc;
        }
        step_done.arrive_and_wait();
      }
    });
  for (auto& t : threads) t.join();
  int disagreements = 0, switches = 0;
  for (int64_t step = 0; step < kSteps; ++step) {
    for (int r = 1; r < kRanks; ++r) disagreements += seen[r][step] != seen[0][step];
    if (step > 0) switches += seen[0][step] != seen[0][step - 1];
  }
  EXPECT_EQ(disagreements, 0);
  EXPECT_GE(w.manager->num_rebalances(), 3);
  EXPECT_GE(switches, 3 * (kLayout.num_layers - 1));  // a layer per step; an unchanged layer publishes too
  std::printf("%lld rebalances, %d placement switches over %lld lockstep steps\n",
              static_cast<long long>(w.manager->num_rebalances()), switches, static_cast<long long>(kSteps));
}

}  // namespace
}  // namespace pdserve::moe
