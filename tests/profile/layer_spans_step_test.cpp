// The step detection of `pdserve analyze` with the profiler's layer, op and kernel events in the
// trace: the many `layers.N` / op / kernel spans must not be taken for steps, nor move the period.
#include <unistd.h>

#include <filesystem>

#include <gtest/gtest.h>

#include "profile/trace_reader.h"
#include "trace_test_util.h"

namespace pdserve::profile {
namespace {

// `steps` batches every `period_us`: run_batch (optional), forward_decode inside it, 4 layer spans
// with two ops each inside the forward, and 10 kernels per batch on a GPU stream track.
nlohmann::json trace_with_spans(int steps, double period_us, bool with_run_batch) {
  nlohmann::json ev = nlohmann::json::array();
  for (int i = 0; i < steps; ++i) {
    const double t = 1.7e15 + i * period_us;
    nlohmann::json args = {{"batch_kind", "decode"}, {"batch_size", 8}};
    if (with_run_batch)
      ev.push_back({{"ph", "X"}, {"cat", "scheduler"}, {"name", "run_batch"}, {"pid", 9}, {"tid", 0}, {"ts", t},
                    {"dur", period_us * 0.95}, {"args", args}});
    ev.push_back({{"ph", "X"}, {"cat", "forward"}, {"name", "forward_decode"}, {"pid", 9}, {"tid", 0}, {"ts", t + 10},
                  {"dur", period_us * 0.9}, {"args", args}});
    for (int l = 0; l < 4; ++l) {
      const double lt = t + 20 + l * period_us * 0.2;
      ev.push_back({{"ph", "X"}, {"cat", "layer"}, {"name", "layers." + std::to_string(l)}, {"pid", 9}, {"tid", 0},
                    {"ts", lt}, {"dur", period_us * 0.19}, {"args", {{"layer", l}}}});
      for (const char* op : {"self_attn", "moe"})
        ev.push_back({{"ph", "X"}, {"cat", "op"}, {"name", op}, {"pid", 9}, {"tid", 0}, {"ts", lt + 1}, {"dur", 5.0}});
    }
    for (int k = 0; k < 10; ++k)
      ev.push_back({{"ph", "X"}, {"cat", "kernel"}, {"name", "void pdserve::ops::cuda::rms_norm_kernel<128>(...)"},
                    {"pid", 9}, {"tid", 1000007}, {"ts", t + 30 + k * 50}, {"dur", 40.0}});
  }
  return {{"traceEvents", ev}};
}

TEST(LayerSpansStep, StepsComeFromRunBatchOrForwardSpansOnly) {
  const auto p = std::filesystem::temp_directory_path() / ("pdserve_layer_spans_" + std::to_string(::getpid()) + ".json.gz");
  for (bool run_batch : {true, false}) {
    test::write_gz(p, trace_with_spans(5, 20000, run_batch).dump());
    auto t = read_chrome_trace(p.string());
    ASSERT_TRUE(t) << t.error().message();
    auto st = step_timing(*t);
    ASSERT_TRUE(st) << st.error().message();
    EXPECT_EQ(st->marker, run_batch ? "run_batch" : "forward_decode/forward_extend");
    EXPECT_EQ(st->starts_s.size(), 5u);  // not the 20 layer or 50 kernel spans
    EXPECT_NEAR(st->period_s, 0.02, 1e-9);
    EXPECT_NEAR(period_of_kind(*st, "decode"), 0.02, 1e-9);
    EXPECT_EQ(st->batch_sizes, (std::vector<int64_t>(5, 8)));
  }
  std::filesystem::remove(p);
}

}  // namespace
}  // namespace pdserve::profile
