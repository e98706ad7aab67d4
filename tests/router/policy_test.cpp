#include "router/policy.h"

#include <map>

#include <gtest/gtest.h>

#include "router/approx_tree.h"

namespace pdserve::router {
namespace {

std::vector<WorkerPtr> make_workers(int n) {
  std::vector<WorkerPtr> w;
  for (int i = 0; i < n; ++i)
    w.push_back(std::make_shared<Worker>("http://w" + std::to_string(i) + ":1", WorkerType::kRegular, std::nullopt,
                                         CircuitBreakerConfig{}));
  return w;
}

std::unique_ptr<Policy> policy(const std::string& name, PolicyConfig c = {}) {
  auto p = make_policy(name, c);
  EXPECT_TRUE(p.has_value());
  return std::move(*p);
}

TEST(Policy, UnknownNameIsAnError) { EXPECT_FALSE(make_policy("bucket", {}).has_value()); }

TEST(Policy, RoundRobinSpreadsEvenly) {
  auto w = make_workers(3);
  auto p = policy("round_robin");
  std::map<std::size_t, int> n;
  for (int i = 0; i < 300; ++i) ++n[p->select(w, "x")];
  EXPECT_EQ(n[0], 100);
  EXPECT_EQ(n[1], 100);
  EXPECT_EQ(n[2], 100);
}

TEST(Policy, RandomReachesEveryWorker) {
  auto w = make_workers(4);
  auto p = policy("random");
  std::map<std::size_t, int> n;
  for (int i = 0; i < 400; ++i) ++n[p->select(w, "")];
  ASSERT_EQ(n.size(), 4u);
  for (auto& [k, v] : n) EXPECT_GT(v, 40) << k;
}

TEST(Policy, PowerOfTwoAvoidsTheLoadedWorker) {
  auto w = make_workers(2);
  w[0]->add_load(50);
  auto p = policy("power_of_two");
  for (int i = 0; i < 100; ++i) EXPECT_EQ(p->select(w, ""), 1u);
  // With three workers the loaded one is never picked: it loses every pair it is in.
  auto w3 = make_workers(3);
  w3[1]->add_load(10);
  for (int i = 0; i < 200; ++i) EXPECT_NE(p->select(w3, ""), 1u);
}

TEST(Policy, CacheAwareKeepsSharedPrefixesTogether) {
  auto w = make_workers(4);
  auto p = policy("cache_aware");
  const std::string system = "You are a helpful assistant. Answer briefly and precisely. ";
  std::size_t first = p->select(w, system + "What is 2+2?");
  for (int i = 0; i < 20; ++i) EXPECT_EQ(p->select(w, system + "Question " + std::to_string(i)), first);
  // A different text goes to another (empty) worker: the smallest tree.
  std::size_t other = p->select(w, "Completely different prompt text with nothing shared at all");
  EXPECT_NE(other, first);
  EXPECT_GT(p->stats().cache_hits.load(), 19u);
  EXPECT_GE(p->stats().cache_misses.load(), 2u);
  auto sizes = p->tree_sizes();
  EXPECT_GT(sizes[w[first]->url()], system.size());
}

TEST(Policy, CacheAwareBalancesWhenImbalanced) {
  auto w = make_workers(2);
  PolicyConfig c;
  c.balance_abs_threshold = 4;
  c.balance_rel_threshold = 1.5;
  auto p = policy("cache_aware", c);
  std::size_t first = p->select(w, "shared prefix shared prefix 1");
  w[first]->add_load(10);  // 10 - 0 > 4 and 10 > 0 * 1.5: imbalanced
  EXPECT_NE(p->select(w, "shared prefix shared prefix 2"), first);
  EXPECT_EQ(p->stats().balance_events.load(), 1u);
}

TEST(Policy, CacheAwareIgnoresUnavailableMatches) {
  auto w = make_workers(2);
  auto p = policy("cache_aware");
  std::size_t first = p->select(w, "hello world, this is a prompt");
  // Only the other worker is offered now (the first one is down): it must be chosen.
  std::vector<WorkerPtr> only{w[1 - first]};
  EXPECT_EQ(p->select(only, "hello world, this is a prompt"), 0u);
}

TEST(ApproxTree, MatchSplitEvictRemove) {
  ApproxTree t;
  auto any = [](const std::string&) { return true; };
  t.insert("abcdef", "A");
  t.insert("abcxyz", "B");
  auto m = t.prefix_match("abcdeq", any);
  EXPECT_EQ(m.matched, 5u);
  EXPECT_EQ(m.tenant, "A");
  m = t.prefix_match("abcq", any);
  EXPECT_EQ(m.matched, 3u);
  EXPECT_EQ(m.tenant, "B");  // both own "abc"; B used it last
  m = t.prefix_match("abcq", [](const std::string& x) { return x == "A"; });
  EXPECT_EQ(m.tenant, "A");
  EXPECT_EQ(t.tenant_size("A"), 6u);
  EXPECT_EQ(t.tenant_size("B"), 6u);
  EXPECT_EQ(t.prefix_match("zzz", any).matched, 0u);

  t.insert("abcdef-more-text", "A");
  EXPECT_EQ(t.tenant_size("A"), 16u);
  t.evict(8);  // keeps A's most recent text within 8 bytes
  EXPECT_LE(t.tenant_size("A"), 8u);
  EXPECT_EQ(t.tenant_size("B"), 6u);
  EXPECT_EQ(t.prefix_match("abcxyz", any).matched, 6u);

  t.remove_tenant("B");
  EXPECT_EQ(t.tenant_size("B"), 0u);
  EXPECT_NE(t.prefix_match("abcxyz", any).tenant, "B");
}

}  // namespace
}  // namespace pdserve::router
