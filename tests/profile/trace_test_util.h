// Builds Chrome-trace files for analyzer tests: gzip JSON in the PyTorch profiler's shape (what
// SGLang writes) or pdserve's.
#pragma once

#include <zlib.h>

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

namespace pdserve::profile::test {

inline void write_gz(const std::filesystem::path& p, const std::string& text) {
  gzFile f = gzopen(p.c_str(), "wb");
  gzwrite(f, text.data(), static_cast<unsigned>(text.size()));
  gzclose(f);
}

// A torch-profiler-style trace: `steps` Scheduler.run_batch Python spans every `period_us`, each
// with a model forward and a GPU kernel inside, plus the metadata torch writes.
inline nlohmann::json torch_style_trace(int steps, double period_us, double dur_us) {
  nlohmann::json ev = nlohmann::json::array();
  ev.push_back({{"ph", "M"}, {"name", "process_name"}, {"pid", 4242}, {"tid", 0}, {"args", {{"name", "python3"}}}});
  const double t0 = 1760576844482615.0;
  for (int i = 0; i < steps; ++i) {
    const double ts = t0 + i * period_us;
    ev.push_back({{"ph", "X"}, {"cat", "python_function"}, {"name", "sglang/srt/managers/scheduler.py(1178): run_batch"},
                  {"pid", 4242}, {"tid", 4242}, {"ts", ts}, {"dur", dur_us}, {"args", {{"Python id", 100 + i}}}});
    ev.push_back({{"ph", "X"}, {"cat", "python_function"},
                  {"name", "sglang/srt/model_executor/model_runner.py(2001): forward"}, {"pid", 4242},
                  {"tid", 4242}, {"ts", ts + 100}, {"dur", dur_us - 200}});
    ev.push_back({{"ph", "X"}, {"cat", "kernel"}, {"name", "void deep_gemm::fp8_gemm_kernel<128>(...)"}, {"pid", 0},
                  {"tid", 7}, {"ts", ts + 300}, {"dur", 1000.0}, {"args", {{"device", 0}, {"stream", 7}}}});
  }
  return {{"schemaVersion", 1}, {"deviceProperties", nlohmann::json::array()}, {"traceEvents", ev},
          {"traceName", "x"}, {"displayTimeUnit", "ms"}};
}

// A pdserve-style trace: run_batch spans with the batch in args.
inline nlohmann::json pdserve_style_trace(int steps, double period_us, int64_t batch) {
  nlohmann::json ev = nlohmann::json::array();
  for (int i = 0; i < steps; ++i)
    ev.push_back({{"ph", "X"}, {"cat", "scheduler"}, {"name", "run_batch"}, {"pid", 1}, {"tid", 0},
                  {"ts", 1000.0 + i * period_us}, {"dur", period_us * 0.9},
                  {"args", {{"batch_kind", "decode"}, {"batch_size", batch}}}});
  return {{"traceEvents", ev}};
}

}  // namespace pdserve::profile::test
