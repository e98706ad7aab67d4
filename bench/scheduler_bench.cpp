// Scheduler CPU cost per decode step with a no-op model (NoopRunner: fixed logits over a small
// vocabulary, so sampling is cheap and the figure is the scheduler's own bookkeeping: batch
// assembly, KV page reservation, sampling, stop checks, stats). Prints wall and process-CPU time
// per step at several running-request counts.
//
//   build/bench/scheduler_bench [--steps N]
#include <ctime>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "base/logging.h"
#include "scheduler/scheduler.h"

using namespace pdserve;

namespace {
double cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + ts.tv_nsec * 1e-9;
}
double wall_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + ts.tv_nsec * 1e-9;
}
}  // namespace

int main(int argc, char** argv) {
  int steps = 200;
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], "--steps") == 0) steps = std::atoi(argv[i + 1]);
  log::init("warning");
  const int64_t vocab = 256, page_size = 1, prompt_len = 128;
  std::printf("scheduler decode step, no-op model (vocab %lld, page size %lld, prompt %lld tokens), %d steps\n",
              static_cast<long long>(vocab), static_cast<long long>(page_size), static_cast<long long>(prompt_len), steps);
  std::printf("%10s %14s %14s %16s\n", "running", "wall ms/step", "cpu ms/step", "tokens/s (cpu)");
  for (int64_t n : {1, 256, 1024}) {
    const int64_t kv_tokens = n * (prompt_len + steps + 64);
    auto runner = std::make_shared<scheduler::NoopRunner>(vocab, kv_tokens / page_size, page_size);
    scheduler::SchedulerConfig cfg;
    cfg.max_running_requests = n;
    cfg.max_prefill_tokens = 1 << 20;
    cfg.chunked_prefill_size = 1 << 20;
    cfg.context_length = 1 << 16;
    cfg.decode_log_interval = 1 << 30;
    cfg.log_stats = false;
    int64_t outputs = 0;
    scheduler::Scheduler s(cfg, runner, nullptr, [&](scheduler::RequestOutput&&) { ++outputs; });
    for (int64_t i = 0; i < n; ++i) {
      scheduler::GenerateInput in;
      in.rid = "r" + std::to_string(i);
      in.input_ids.resize(static_cast<size_t>(prompt_len));
      for (int64_t t = 0; t < prompt_len; ++t) in.input_ids[static_cast<size_t>(t)] = static_cast<int32_t>((i * 7 + t) % vocab);
      in.sampling.max_new_tokens = steps + 32;
      in.sampling.temperature = 0;
      in.sampling.ignore_eos = true;
      in.stream = true;  // an output per token, as streaming clients get
      s.submit(std::move(in));
    }
    while (s.stats().num_running < n) s.step();  // prefill everything first
    s.step();
    const double c0 = cpu_seconds(), w0 = wall_seconds();
    for (int i = 0; i < steps; ++i) s.step();
    const double cpu = (cpu_seconds() - c0) / steps, wall = (wall_seconds() - w0) / steps;
    std::printf("%10lld %14.4f %14.4f %16.0f\n", static_cast<long long>(n), wall * 1e3, cpu * 1e3, n / cpu);
  }
  return 0;
}
