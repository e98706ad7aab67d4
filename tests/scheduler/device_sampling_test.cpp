// The scheduler's use of device-side sampling (ModelRunner::forward_sample), checked on the CPU
// with a runner that claims to sample "on the device" (argmax / a seeded draw over the real tiny
// model's logits) and counts which entry point each decode step used:
// - plain batches take forward_sample and give the same greedy output as host sampling;
// - a batch holding a request that needs the logits (logprobs, penalties) takes forward;
// - the draw's key is the request's seed and its output position.
#include <algorithm>
#include <map>
#include <random>

#include <gtest/gtest.h>

#include "scheduler/tiny_model.h"

#include "scheduler/model_runner.h"
#include "scheduler/scheduler.h"

namespace pdserve::scheduler {
namespace {


class CountingDeviceSampler final : public ModelRunner {
 public:
  explicit CountingDeviceSampler(int64_t kv_tokens) : inner_(tiny_model(), kv_tokens, 4) {}
  int64_t vocab_size() const override { return inner_.vocab_size(); }
  int64_t num_pages() const override { return inner_.num_pages(); }
  int64_t page_size() const override { return inner_.page_size(); }
  const char* name() const override { return "counting-device-sampler"; }
  Result<Tensor> forward(const std::vector<model::SequenceInput>& batch, bool all_logits) override {
    if (std::all_of(batch.begin(), batch.end(), [](const auto& s) { return s.tokens.size() == 1 && s.prefix_len > 0; }))
      ++decode_forwards;
    return inner_.forward(batch, all_logits);
  }
  bool samples_on_device() const override { return true; }
  Result<std::vector<int32_t>> forward_sample(const std::vector<model::SequenceInput>& batch,
                                              const std::vector<model::RowSampling>& rows) override {
    ++sample_calls;
    EXPECT_EQ(rows.size(), batch.size());
    auto logits = inner_.forward(batch, false);
    if (!logits) return logits.error();
    const int64_t V = vocab_size();
    std::vector<int32_t> ids;
    for (size_t i = 0; i < rows.size(); ++i) {
      keys.emplace_back(rows[i].seed, rows[i].offset);
      const float* row = logits->data<float>() + static_cast<int64_t>(i) * V;
      std::mt19937_64 rng(rows[i].seed * 1000003 + static_cast<uint64_t>(rows[i].offset));
      ids.push_back(ops::sample_token(row, V, rows[i].params, rng));
    }
    return ids;
  }
  int sample_calls = 0, decode_forwards = 0;
  std::vector<std::pair<uint64_t, int64_t>> keys;

 private:
  DeepseekV3Runner inner_;
};

struct SchedulerRun {
  std::shared_ptr<CountingDeviceSampler> runner = std::make_shared<CountingDeviceSampler>(8192);
  std::map<std::string, RequestOutput> finals;
  std::unique_ptr<Scheduler> s;
  SchedulerRun() {
    SchedulerConfig cfg;
    s = std::make_unique<Scheduler>(cfg, runner, nullptr, [this](RequestOutput&& o) {
      if (o.finished) finals[o.rid] = std::move(o);
    });
  }
  void until_done(size_t n) {
    for (int i = 0; i < 10000 && finals.size() < n; ++i) s->step();
    ASSERT_EQ(finals.size(), n);
    EXPECT_EQ(s->stats().kv.in_requests, 0);
  }
};

GenerateInput greedy_request(const std::string& rid, std::vector<int32_t> prompt, int64_t max_new) {
  GenerateInput in;
  in.rid = rid;
  in.input_ids = std::move(prompt);
  in.sampling.max_new_tokens = max_new;
  in.sampling.temperature = 0;
  in.sampling.ignore_eos = true;
  return in;
}

// Collects every request's streamed ids (new_ids of every output) from a scheduler.
std::map<std::string, std::vector<int32_t>> run_four(const std::shared_ptr<ModelRunner>& runner) {
  std::map<std::string, std::vector<int32_t>> ids;
  size_t done = 0;
  Scheduler s(SchedulerConfig{}, runner, nullptr, [&](RequestOutput&& o) {
    auto& v = ids[o.rid];
    v.insert(v.end(), o.new_ids.begin(), o.new_ids.end());
    done += o.finished;
  });
  for (int i = 0; i < 4; ++i) s.submit(greedy_request("r" + std::to_string(i), {5, 9, 17 + i, 33}, 6));
  for (int i = 0; i < 10000 && done < 4; ++i) s.step();
  EXPECT_EQ(done, 4u);
  EXPECT_EQ(s.stats().kv.in_requests, 0);
  return ids;
}

TEST(DeviceSampling, PlainDecodeBatchesSampleOnTheDeviceWithTheSameGreedyOutput) {
  const auto want = run_four(std::make_shared<DeepseekV3Runner>(tiny_model(), 8192, 4));  // host sampling
  auto device = std::make_shared<CountingDeviceSampler>(8192);
  const auto got = run_four(device);
  EXPECT_GT(device->sample_calls, 0) << "decode never used forward_sample";
  EXPECT_EQ(device->decode_forwards, 0) << "a plain decode batch copied its logits to the host";
  ASSERT_EQ(want.size(), 4u);
  for (const auto& [rid, ids] : want) EXPECT_EQ(ids.size(), 6u) << rid;
  EXPECT_EQ(got, want);
}

TEST(DeviceSampling, RequestsThatNeedTheLogitsKeepHostSampling) {
  for (const char* kind : {"logprob", "penalty"}) {
    SchedulerRun run;
    GenerateInput in = greedy_request("needs-logits", {5, 9, 17}, 4);
    if (std::string(kind) == "logprob") in.return_logprob = true;
    else in.sampling.repetition_penalty = 1.3f;
    run.s->submit(std::move(in));
    run.until_done(1);
    EXPECT_EQ(run.runner->sample_calls, 0) << kind;
    EXPECT_GT(run.runner->decode_forwards, 0) << kind;
    if (std::string(kind) == "logprob") { EXPECT_EQ(run.finals["needs-logits"].output_logprobs.size(), 4u); }
  }
}

TEST(DeviceSampling, TheDrawIsKeyedByTheRequestSeedAndOutputPosition) {
  SchedulerRun run;
  GenerateInput in = greedy_request("seeded", {5, 9, 17}, 5);
  in.sampling.temperature = 0.8f;
  in.sampling.sampling_seed = 1234;
  run.s->submit(std::move(in));
  run.until_done(1);
  ASSERT_FALSE(run.runner->keys.empty());
  for (size_t i = 0; i < run.runner->keys.size(); ++i) {
    EXPECT_EQ(run.runner->keys[i].first, 1234u);
    // Decode steps start after the prefill's token: offsets 1, 2, ... (one per generated token).
    EXPECT_EQ(run.runner->keys[i].second, static_cast<int64_t>(i) + 1);
  }
}

}  // namespace
}  // namespace pdserve::scheduler
