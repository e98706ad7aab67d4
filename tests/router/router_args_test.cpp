#include "router/router_args.h"

#include <gtest/gtest.h>

#include "base/cli.h"

namespace pdserve::router {
namespace {

struct Parsed {
  std::optional<int> exit;
  RouterArgs args;
  std::string err;
};

Parsed parse(std::vector<std::string> argv) {
  CLI::App app{"t"};
  auto* sub = app.add_subcommand("router");
  Parsed p;
  add_router_flags(*sub, p.args);
  argv.insert(argv.begin(), {"pdserve", "router"});
  std::vector<const char*> raw;
  for (auto& a : argv) raw.push_back(a.c_str());
  std::ostringstream out, err;
  p.exit = parse_cli(app, static_cast<int>(raw.size()), raw.data(), out, err);
  p.err = err.str();
  return p;
}

TEST(RouterArgs, DefaultsAreSglangs) {
  auto p = parse({"--worker-urls", "http://a:1"});
  ASSERT_FALSE(p.exit) << p.err;
  const auto& a = p.args;
  EXPECT_EQ(a.policy, "cache_aware");
  EXPECT_EQ(a.host, "127.0.0.1");  // not SGLang's 0.0.0.0: exposing takes --host (docs/reliability.md)
  EXPECT_EQ(a.port, 30000);
  EXPECT_DOUBLE_EQ(a.cache_threshold, 0.3);
  EXPECT_EQ(a.balance_abs_threshold, 64);
  EXPECT_DOUBLE_EQ(a.balance_rel_threshold, 1.5);
  EXPECT_EQ(a.eviction_interval_secs, 120);
  EXPECT_EQ(a.max_tree_size, 1 << 26);
  EXPECT_EQ(a.max_payload_size, 512 << 20);
  EXPECT_EQ(a.request_timeout_secs, 1800);
  EXPECT_EQ(a.retry_max_retries, 5);
  EXPECT_EQ(a.retry_initial_backoff_ms, 50);
  EXPECT_EQ(a.retry_max_backoff_ms, 30000);
  EXPECT_DOUBLE_EQ(a.retry_backoff_multiplier, 1.5);
  EXPECT_DOUBLE_EQ(a.retry_jitter_factor, 0.2);
  EXPECT_EQ(a.cb_failure_threshold, 10);
  EXPECT_EQ(a.cb_success_threshold, 3);
  EXPECT_EQ(a.cb_timeout_duration_secs, 60);
  EXPECT_EQ(a.cb_window_duration_secs, 120);
  EXPECT_EQ(a.health_failure_threshold, 3);
  EXPECT_EQ(a.health_success_threshold, 2);
  EXPECT_EQ(a.health_check_timeout_secs, 5);
  EXPECT_EQ(a.health_check_interval_secs, 60);
  EXPECT_EQ(a.health_check_endpoint, "/health");
  EXPECT_EQ(a.max_concurrent_requests, -1);
  EXPECT_EQ(a.queue_size, 100);
  EXPECT_EQ(a.queue_timeout_secs, 60);
  EXPECT_EQ(a.prometheus_port, 29000);
  EXPECT_EQ(a.prometheus_host, "127.0.0.1");
}

TEST(RouterArgs, PdModePrefillWithAndWithoutBootstrapPort) {
  auto p = parse({"--pd-disaggregation", "--prefill", "http://p1:30000", "8998", "--prefill", "http://p2:30000/",
                  "none", "--prefill", "http://[::1]:30001", "--decode", "http://d1:30000", "--decode",
                  "http://d2:30000", "--prefill-policy", "round_robin", "--router-decode-policy", "power_of_two"});
  ASSERT_FALSE(p.exit) << p.err;
  ASSERT_TRUE(p.args.resolve());
  ASSERT_EQ(p.args.prefill.size(), 3u);
  EXPECT_EQ(p.args.prefill[0].url, "http://p1:30000");
  EXPECT_EQ(p.args.prefill[0].bootstrap_port, 8998);
  EXPECT_EQ(p.args.prefill[1].url, "http://p2:30000");
  EXPECT_FALSE(p.args.prefill[1].bootstrap_port);
  EXPECT_FALSE(p.args.prefill[2].bootstrap_port);
  EXPECT_EQ(p.args.decode, (std::vector<std::string>{"http://d1:30000", "http://d2:30000"}));
  EXPECT_EQ(p.args.effective_prefill_policy(), "round_robin");
  EXPECT_EQ(p.args.effective_decode_policy(), "power_of_two");
}

TEST(RouterArgs, UnknownFlagIsAnError) {
  auto p = parse({"--worker-urls", "http://a:1", "--no-such-flag"});
  ASSERT_TRUE(p.exit);
  EXPECT_EQ(*p.exit, kExitUsage);
  EXPECT_NE(p.err.find("no-such-flag"), std::string::npos) << p.err;
}

TEST(RouterArgs, BadPolicyIsAnError) {
  auto p = parse({"--policy", "fastest"});
  ASSERT_TRUE(p.exit);
  EXPECT_EQ(*p.exit, kExitUsage);
}

TEST(RouterArgs, ResolveRejectsBadCombinations) {
  auto p = parse({"--prefill", "http://p:1", "--decode", "http://d:1"});
  ASSERT_FALSE(p.exit);
  auto st = p.args.resolve();
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().message().find("--pd-disaggregation"), std::string::npos);

  auto q = parse({"--pd-disaggregation", "--prefill", "http://p:1", "port"});
  ASSERT_FALSE(q.exit);
  auto st2 = q.args.resolve();
  ASSERT_FALSE(st2);
  EXPECT_NE(st2.error().message().find("bootstrap port"), std::string::npos);

  auto r = parse({"--worker-urls", "https://a:1"});
  ASSERT_FALSE(r.exit);
  EXPECT_FALSE(r.args.resolve());

  auto s = parse({"--worker-urls", "http://a:1", "--retry-jitter-factor", "2"});
  ASSERT_FALSE(s.exit);
  EXPECT_FALSE(s.args.resolve());
}

TEST(RouterArgs, MiniLbForcesRandom) {
  auto p = parse({"--pd-disaggregation", "--mini-lb", "--prefill", "http://p:1", "--decode", "http://d:1", "--policy",
                  "cache_aware"});
  ASSERT_FALSE(p.exit);
  ASSERT_TRUE(p.args.resolve());
  EXPECT_EQ(p.args.effective_prefill_policy(), "random");
  EXPECT_EQ(p.args.effective_decode_policy(), "random");
}

}  // namespace
}  // namespace pdserve::router
