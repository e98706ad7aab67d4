// The scheduler on the real tiny model (golden tiny-bf16 checkpoint): continuous batching, chunked
// prefill, prefix cache and retraction must not change greedy outputs, and every KV page must be
// accounted for after every step.
#include <map>
#include <random>

#include <gtest/gtest.h>

#include "scheduler/tiny_model.h"

#include "model/generate.h"
#include "scheduler/scheduler.h"

namespace pdserve::scheduler {
namespace {


// Greedy ids of one prompt alone, through offline generate (the reference path).
std::vector<int32_t> alone(const std::vector<int32_t>& prompt, int64_t max_new) {
  model::GenerateOptions o;
  o.max_new_tokens = max_new;
  o.ignore_eos = true;
  auto r = model::generate(*tiny_model(), {prompt}, o, nullptr);
  EXPECT_TRUE(r.has_value());
  return (*r)[0].output_ids;
}

// Decodes id k as the letter 'a' + k % 26, so stop strings can be tested without a tokenizer.
class LetterDecoder final : public TextDecoder {
 public:
  std::string decode(std::span<const int32_t> ids, bool) const override {
    std::string s;
    for (int32_t id : ids) s += static_cast<char>('a' + id % 26);
    return s;
  }
};

struct Harness {
  std::map<std::string, RequestOutput> finals;
  std::map<std::string, std::vector<int32_t>> streamed;
  std::unique_ptr<Scheduler> s;

  Harness(SchedulerConfig cfg, int64_t kv_tokens, int64_t page_size) {
    auto runner = std::make_shared<DeepseekV3Runner>(tiny_model(), kv_tokens, page_size);
    s = std::make_unique<Scheduler>(cfg, runner, std::make_shared<LetterDecoder>(), [this](RequestOutput&& o) {
      auto& ids = streamed[o.rid];
      ids.insert(ids.end(), o.new_ids.begin(), o.new_ids.end());
      if (o.finished) finals[o.rid] = std::move(o);
    });
  }
  void submit(const std::string& rid, std::vector<int32_t> prompt, int64_t max_new, bool stream = false) {
    GenerateInput in;
    in.rid = rid;
    in.input_ids = std::move(prompt);
    in.sampling.max_new_tokens = max_new;
    in.sampling.temperature = 0;
    in.sampling.ignore_eos = true;
    in.stream = stream;
    s->submit(std::move(in));
  }
  // Steps until every submitted request finished, checking page ownership after each step.
  void run(size_t expected, int max_steps = 100000) {
    for (int i = 0; i < max_steps && finals.size() < expected; ++i) {
      s->step();
      const auto st = s->stats();
      ASSERT_TRUE(cache::check_accounting(st.kv).has_value()) << cache::to_string(st.kv);
    }
    ASSERT_EQ(finals.size(), expected);
    ASSERT_TRUE(s->audit_kv().has_value()) << s->audit_kv().error().message();
    EXPECT_EQ(s->stats().kv.in_requests, 0);
  }
};

std::vector<std::vector<int32_t>> random_prompts(size_t n, uint32_t seed, int min_len, int max_len) {
  std::mt19937 rng(seed);
  std::vector<std::vector<int32_t>> out;
  for (size_t i = 0; i < n; ++i) {
    std::vector<int32_t> p(static_cast<size_t>(std::uniform_int_distribution<int>(min_len, max_len)(rng)));
    for (auto& t : p) t = std::uniform_int_distribution<int32_t>(2, 511)(rng);
    out.push_back(std::move(p));
  }
  return out;
}

TEST(SchedulerTest, BatchedGreedyEqualsEachPromptAlone) {
  SchedulerConfig cfg;
  cfg.max_running_requests = 64;
  cfg.decode_log_interval = 5;
  Harness h(cfg, 16384, 4);
  const auto prompts = random_prompts(24, 1, 1, 90);
  for (size_t i = 0; i < prompts.size(); ++i) h.submit("r" + std::to_string(i), prompts[i], 6 + static_cast<int64_t>(i % 5), i % 2 == 0);
  h.run(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    const std::string rid = "r" + std::to_string(i);
    const auto want = alone(prompts[i], 6 + static_cast<int64_t>(i % 5));
    EXPECT_EQ(h.streamed[rid], want) << rid;
    EXPECT_EQ(h.finals[rid].finish_reason->type, FinishReason::Type::kLength);
    EXPECT_EQ(h.finals[rid].completion_tokens, static_cast<int64_t>(want.size()));
  }
}

TEST(SchedulerTest, ChunkedPrefillGivesTheSameOutput) {
  SchedulerConfig cfg;
  cfg.chunked_prefill_size = 7;
  cfg.max_prefill_tokens = 7;
  Harness h(cfg, 8192, 4);
  const auto prompts = random_prompts(5, 2, 20, 60);
  for (size_t i = 0; i < prompts.size(); ++i) h.submit("c" + std::to_string(i), prompts[i], 5);
  h.run(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(h.streamed["c" + std::to_string(i)], alone(prompts[i], 5));
}

TEST(SchedulerTest, PrefixCacheHitKeepsOutput) {
  SchedulerConfig cfg;
  Harness h(cfg, 8192, 4);
  auto prompt = random_prompts(1, 3, 64, 64)[0];
  h.submit("first", prompt, 4);
  h.run(1);
  h.submit("second", prompt, 4);
  h.run(2);
  EXPECT_EQ(h.finals["first"].cached_tokens, 0);
  EXPECT_GE(h.finals["second"].cached_tokens, 56);  // all full pages but the one holding the last token
  EXPECT_EQ(h.streamed["first"], h.streamed["second"]);
  EXPECT_EQ(h.streamed["second"], alone(prompt, 4));
}

TEST(SchedulerTest, RetractionUnderMemoryPressureFinishesCorrectly) {
  SchedulerConfig cfg;
  cfg.max_running_requests = 32;
  cfg.init_new_token_ratio = 0.1;  // admit optimistically so decode must retract
  cfg.min_new_token_ratio = 0.05;
  Harness h(cfg, 600, 4);  // 150 pages for 12 requests that need ~70 tokens each
  const auto prompts = random_prompts(12, 4, 30, 40);
  for (size_t i = 0; i < prompts.size(); ++i) h.submit("m" + std::to_string(i), prompts[i], 30);
  h.run(prompts.size());
  EXPECT_GT(h.s->stats().num_retracted_total, 0);
  int64_t retracted_reqs = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const std::string rid = "m" + std::to_string(i);
    EXPECT_EQ(h.streamed[rid], alone(prompts[i], 30)) << rid;
    retracted_reqs += h.finals[rid].total_retractions > 0;
  }
  EXPECT_GT(retracted_reqs, 0);
}

// A cache far smaller than prompt + max_new_tokens: the request is admitted (it used to wait
// forever for its output's reserve), decodes until the cache is full, then ends with the
// single-request out-of-memory abort; a prompt the cache can never hold is a 400 at once. Nothing
// leaks either way.
TEST(SchedulerTest, RequestsLargerThanTheCacheEndInsteadOfWaiting) {
  SchedulerConfig cfg;
  cfg.max_running_requests = 4;
  Harness h(cfg, 64, 4);
  const auto prompt = random_prompts(1, 9, 20, 20)[0];
  h.submit("long-output", prompt, 200);
  h.submit("long-prompt", random_prompts(1, 10, 58, 58)[0], 4);  // 64 - 6: SGLang's max_req_input_len
  h.run(2, 3000);
  const auto& big = h.finals["long-output"];
  ASSERT_TRUE(big.finish_reason.has_value());
  EXPECT_EQ(big.finish_reason->type, FinishReason::Type::kAbort);
  EXPECT_NE(big.finish_reason->message.find("Out of memory even after retracting all other requests"), std::string::npos)
      << big.finish_reason->message;
  EXPECT_EQ(big.finish_reason->status_code, 500);
  EXPECT_GT(h.streamed["long-output"].size(), 30u);  // it ran until the cache was full
  const auto want = alone(prompt, static_cast<int64_t>(h.streamed["long-output"].size()));
  EXPECT_EQ(h.streamed["long-output"], want);
  const auto& refused = h.finals["long-prompt"];
  ASSERT_TRUE(refused.finish_reason.has_value());
  EXPECT_EQ(refused.finish_reason->status_code, 400);
  EXPECT_NE(refused.finish_reason->message.find("Input length (58 tokens) exceeds the maximum allowed length (58"),
            std::string::npos)
      << refused.finish_reason->message;
}

TEST(SchedulerTest, StopConditions) {
  SchedulerConfig cfg;
  cfg.eos_token_id = -1;  // set per case below through stop_token_ids / stop strings
  Harness h(cfg, 4096, 4);
  const auto prompt = random_prompts(1, 5, 10, 10)[0];
  const auto ref = alone(prompt, 12);
  // Stop token id: the third generated token.
  GenerateInput a;
  a.rid = "stop-id";
  a.input_ids = prompt;
  a.sampling.temperature = 0;
  a.sampling.max_new_tokens = 12;
  a.sampling.stop_token_ids = {ref[2]};
  h.s->submit(a);
  // Stop string: the letters of generated tokens 3 and 4 (LetterDecoder).
  GenerateInput b = a;
  b.rid = "stop-str";
  b.sampling.stop_token_ids.clear();
  b.sampling.stop = {std::string(1, static_cast<char>('a' + ref[3] % 26)) + static_cast<char>('a' + ref[4] % 26)};
  h.s->submit(b);
  // min_new_tokens keeps a stop id from ending the request early.
  GenerateInput c = a;
  c.rid = "min-new";
  c.sampling.stop_token_ids = {ref[0]};
  c.sampling.min_new_tokens = 3;
  h.s->submit(c);
  GenerateInput d = a;
  d.rid = "zero";
  d.sampling.stop_token_ids.clear();
  d.sampling.max_new_tokens = 0;
  h.s->submit(d);
  h.run(4);
  const auto& fa = h.finals["stop-id"];
  EXPECT_EQ(fa.completion_tokens, 3);
  EXPECT_EQ(fa.finish_reason->type, FinishReason::Type::kStop);
  EXPECT_EQ(fa.finish_reason->matched_id, ref[2]);
  const auto& fb = h.finals["stop-str"];
  EXPECT_EQ(fb.finish_reason->type, FinishReason::Type::kStop);
  ASSERT_TRUE(fb.finish_reason->matched_str.has_value());
  EXPECT_LE(fb.completion_tokens, 5);
  const auto& fc = h.finals["min-new"];
  EXPECT_GE(fc.completion_tokens, 3);
  EXPECT_EQ(h.finals["zero"].completion_tokens, 0);
}

TEST(SchedulerTest, AbortFlushAndBadInput) {
  SchedulerConfig cfg;
  cfg.context_length = 200;
  Harness h(cfg, 4096, 4);
  const auto prompts = random_prompts(4, 6, 10, 20);
  for (size_t i = 0; i < prompts.size(); ++i) h.submit("job-" + std::to_string(i), prompts[i], 50);
  h.s->step();  // prefill: all running now
  // Flush refuses while requests are pending.
  auto refused = h.s->control("flush_cache");
  h.s->step();
  EXPECT_FALSE(refused.get().value("success", true));
  h.s->abort("job-", false);
  h.submit("too-long", std::vector<int32_t>(250, 5), 4);
  h.submit("bad-id", {1, 2, 9999}, 4);
  h.run(6);
  for (size_t i = 0; i < prompts.size(); ++i)
    EXPECT_EQ(h.finals["job-" + std::to_string(i)].finish_reason->type, FinishReason::Type::kAbort);
  EXPECT_EQ(h.finals["too-long"].finish_reason->status_code, 400);
  EXPECT_EQ(h.finals["bad-id"].finish_reason->status_code, 400);
  auto flushed = h.s->control("flush_cache");
  h.s->step();
  EXPECT_TRUE(flushed.get().value("success", false));
  EXPECT_EQ(h.s->stats().kv.cached, 0);
}

TEST(SchedulerTest, SlowDownSleepsEveryBatchUntilDisabled) {
  SchedulerConfig cfg;
  Harness h(cfg, 4096, 4);
  auto f = h.s->control("slow_down", {{"forward_sleep_time", 0.2}});
  h.s->step();
  EXPECT_TRUE(f.get().is_null());
  h.submit("slow", random_prompts(1, 7, 5, 5)[0], 3);
  const auto t0 = std::chrono::steady_clock::now();
  h.s->step();  // takes the request, sleeps, prefills
  h.s->step();  // sleeps, decodes
  const double slept = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_GE(slept, 0.39);
  (void)h.s->control("slow_down", {{"forward_sleep_time", nullptr}});
  const auto t1 = std::chrono::steady_clock::now();
  h.run(1);  // the disable takes effect after the current sleep
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count(), 0.5);
}

TEST(SchedulerTest, StopAbortsEverythingWithAReason) {
  SchedulerConfig cfg;
  Harness h(cfg, 4096, 4);
  h.s->start();
  for (int i = 0; i < 5; ++i) h.submit("s" + std::to_string(i), random_prompts(1, 8 + i, 10, 30)[0], 100000);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  h.s->stop("server shutting down");
  ASSERT_EQ(h.finals.size(), 5u);
  for (auto& [rid, out] : h.finals) {
    ASSERT_TRUE(out.finish_reason.has_value());
    EXPECT_EQ(out.finish_reason->type, FinishReason::Type::kAbort) << rid;
    EXPECT_EQ(out.finish_reason->message, "server shutting down");
  }
  EXPECT_EQ(h.s->stats().kv.in_requests, 0);
}

}  // namespace
}  // namespace pdserve::scheduler
