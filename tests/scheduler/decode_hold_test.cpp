// hold_decode / release_decode (the hold fill of `pdserve repro`): while held the scheduler runs
// no decode step but still prefills new requests; a release or the deadline ends the hold.
#include <chrono>
#include <map>
#include <thread>

#include <gtest/gtest.h>

#include "scheduler/scheduler.h"

namespace pdserve::scheduler {
namespace {

struct NoopHarness {
  std::map<std::string, int> tokens;  // streamed ids per request
  std::map<std::string, bool> finished;
  std::unique_ptr<Scheduler> s;
  NoopHarness() {
    auto runner = std::make_shared<NoopRunner>(1000, 256, 16);
    s = std::make_unique<Scheduler>(SchedulerConfig{}, runner, nullptr, [this](RequestOutput&& o) {
      tokens[o.rid] += static_cast<int>(o.new_ids.size());
      if (o.finished) finished[o.rid] = true;
    });
  }
  void submit(const std::string& rid, int max_new) {
    GenerateInput in;
    in.rid = rid;
    in.input_ids = {5, 6, 7, 8};
    in.sampling.max_new_tokens = max_new;
    in.sampling.temperature = 0;
    in.sampling.ignore_eos = true;
    in.stream = true;
    s->submit(std::move(in));
  }
  nlohmann::json control(const std::string& cmd, nlohmann::json args) {
    auto f = s->control(cmd, std::move(args));
    s->step();  // the loop answers control commands
    return f.get();
  }
};

TEST(DecodeHoldTest, HoldsDecodeStepsButPrefillsNewRequestsUntilReleased) {
  NoopHarness h;
  h.submit("a", 10);
  h.s->step();  // prefill: the first token
  ASSERT_EQ(h.tokens["a"], 1);
  const auto reply = h.control("hold_decode", {{"timeout_s", 60}});
  ASSERT_TRUE(reply.value("success", false)) << reply.dump();
  EXPECT_EQ(reply["running"], 1);
  const int64_t forwards = h.s->stats().forward_ct;
  for (int i = 0; i < 5; ++i) h.s->step();
  EXPECT_EQ(h.tokens["a"], 1) << "a decode step ran while held";
  // A new request is still prefilled and joins the running batch, which is what fills it.
  h.submit("b", 10);
  for (int i = 0; i < 5; ++i) h.s->step();
  EXPECT_EQ(h.tokens["b"], 1);
  EXPECT_EQ(h.tokens["a"], 1);
  EXPECT_EQ(h.s->stats().num_running, 2);
  EXPECT_EQ(h.s->stats().forward_ct, forwards + 1);  // only b's prefill
  const auto released = h.control("release_decode", {{"reason", "test"}});
  EXPECT_EQ(released["was_holding"], true);
  for (int i = 0; i < 3; ++i) h.s->step();
  EXPECT_GT(h.tokens["a"], 1);
  EXPECT_GT(h.tokens["b"], 1);
  // A second release is harmless and says there was nothing to release.
  EXPECT_EQ(h.control("release_decode", {})["was_holding"], false);
}

TEST(DecodeHoldTest, DeadlineReleasesTheHoldByItself) {
  NoopHarness h;
  h.submit("a", 5);
  h.s->step();
  ASSERT_TRUE(h.control("hold_decode", {{"timeout_s", 0.1}}).value("success", false));
  h.s->step();
  EXPECT_EQ(h.tokens["a"], 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  for (int i = 0; i < 10 && !h.finished["a"]; ++i) h.s->step();
  EXPECT_TRUE(h.finished["a"]);
  EXPECT_EQ(h.tokens["a"], 5);
}

TEST(DecodeHoldTest, HoldNeedsAPositiveTimeout) {
  NoopHarness h;
  for (const auto& args : {nlohmann::json::object(), nlohmann::json{{"timeout_s", 0}}, nlohmann::json{{"timeout_s", "x"}}}) {
    const auto r = h.control("hold_decode", args);
    EXPECT_FALSE(r.value("success", true)) << args.dump();
  }
  h.submit("a", 3);
  for (int i = 0; i < 10 && !h.finished["a"]; ++i) h.s->step();
  EXPECT_TRUE(h.finished["a"]);  // no hold was left behind
}

}  // namespace
}  // namespace pdserve::scheduler
