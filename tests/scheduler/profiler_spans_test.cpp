// Layer and op spans in the profiler's trace (base/trace_spans.h, step_profiler.h): a profile of
// the tiny model has, inside every forward span, one `layers.N` span per decoder layer with the op
// spans nested in it, and nothing is recorded outside the capture.
#include <zlib.h>

#include <filesystem>
#include <map>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "base/trace_spans.h"
#include "scheduler/scheduler.h"

namespace pdserve::scheduler {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

json read_gzip_json(const fs::path& p) {
  gzFile f = gzopen(p.c_str(), "rb");
  EXPECT_NE(f, nullptr) << p;
  if (!f) return {};
  std::string text;
  char buf[1 << 16];
  for (int n; (n = gzread(f, buf, sizeof buf)) > 0;) text.append(buf, static_cast<size_t>(n));
  gzclose(f);
  return json::parse(text);
}

TEST(TraceSpansTest, RecordsOnlyWithABufferAndNestsByDepth) {
  { trace::ScopedSpan s("ignored"); }  // no buffer installed: nothing to record into
  trace::SpanBuffer buf;
  {
    trace::SpanRecordingScope rec(&buf);
    trace::ScopedSpan layer("layers", 3);
    { trace::ScopedSpan op("self_attn"); }
  }
  { trace::ScopedSpan after("after"); }  // the scope restored "no buffer"
  ASSERT_EQ(buf.records.size(), 2u);
  EXPECT_STREQ(buf.records[0].name, "layers");
  EXPECT_EQ(buf.records[0].index, 3);
  EXPECT_EQ(buf.records[0].depth, 0);
  EXPECT_STREQ(buf.records[1].name, "self_attn");
  EXPECT_EQ(buf.records[1].depth, 1);
  EXPECT_LE(buf.records[0].start_ns, buf.records[1].start_ns);
  EXPECT_LE(buf.records[1].end_ns, buf.records[0].end_ns);
  EXPECT_EQ(buf.depth, 0);
  EXPECT_EQ(trace::tls_span_buffer, nullptr);
}

TEST(ProfilerSpansTest, EveryForwardHasOneSpanPerLayerWithItsOps) {
  auto model = model::DeepseekV3Model::load(std::string(PDSERVE_SOURCE_DIR) + "/tests/golden/data/tiny-bf16", {});
  ASSERT_TRUE(model.has_value());
  const int64_t layers = (*model)->config().num_hidden_layers;
  auto runner = std::make_shared<DeepseekV3Runner>(std::shared_ptr<const model::DeepseekV3Model>(std::move(*model)), 4096, 16);
  int finished = 0;
  Scheduler s(SchedulerConfig{}, runner, nullptr, [&](RequestOutput&& o) { finished += o.finished; });
  const fs::path dir = fs::temp_directory_path() / ("pdserve_spans_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  ProfileRequest req;
  req.profile_id = "spans";
  req.output_dir = dir.string();
  req.num_steps = 4;  // SGLang's semantics: 3 batches captured
  auto started = s.control("start_profile", to_json(req));
  for (int i = 0; i < 2; ++i) {
    GenerateInput in;
    in.rid = "r" + std::to_string(i);
    in.input_ids = {5, 6, 7, 8, 9};
    in.sampling.max_new_tokens = 8;
    in.sampling.temperature = 0;
    in.sampling.ignore_eos = true;
    s.submit(std::move(in));
  }
  for (int i = 0; i < 100 && finished < 2; ++i) s.step();
  ASSERT_EQ(started.get().value("success", false), true);
  ASSERT_EQ(finished, 2);
  EXPECT_EQ(trace::tls_span_buffer, nullptr);  // nothing left recording after the capture

  const json doc = read_gzip_json(dir / "spans-TP-0.trace.json.gz");
  std::vector<json> forwards, layer_spans, ops;
  for (const auto& e : doc["traceEvents"]) {
    if (e["ph"] != "X") continue;
    const std::string cat = e["cat"];
    if (cat == "forward") forwards.push_back(e);
    else if (cat == "layer") layer_spans.push_back(e);
    else if (cat == "op") ops.push_back(e);
  }
  ASSERT_EQ(forwards.size(), 3u);
  EXPECT_EQ(layer_spans.size(), forwards.size() * static_cast<size_t>(layers));
  auto inside = [](const json& in, const json& out) {
    const double t = in["ts"], d = in["dur"], t0 = out["ts"], d0 = out["dur"];
    return t >= t0 - 1e-3 && t + d <= t0 + d0 + 1e-3;
  };
  for (const auto& f : forwards) {
    std::map<int, int> per_layer;
    for (const auto& l : layer_spans)
      if (inside(l, f)) {
        ++per_layer[l["args"]["layer"].get<int>()];
        EXPECT_EQ(l["name"], "layers." + std::to_string(l["args"]["layer"].get<int>()));
      }
    ASSERT_EQ(per_layer.size(), static_cast<size_t>(layers)) << f.dump();
    for (const auto& [layer, n] : per_layer) EXPECT_EQ(n, 1) << "layer " << layer;
    std::map<std::string, int> op_count;
    for (const auto& o : ops)
      if (inside(o, f)) ++op_count[o["name"].get<std::string>()];
    EXPECT_EQ(op_count["self_attn"], layers);
    EXPECT_EQ(op_count["input_layernorm"], layers);
    EXPECT_EQ(op_count["post_attention_layernorm"], layers);
    EXPECT_EQ(op_count["mlp"] + op_count["moe"], layers);
    EXPECT_EQ(op_count["moe_gate"], op_count["moe"]);
    EXPECT_GT(op_count["moe"], 0);
    EXPECT_EQ(op_count["embed_tokens"], 1);
    EXPECT_EQ(op_count["lm_head"], 1);
  }
  // Each layer's ops lie inside that layer's span (the nesting Perfetto draws).
  for (const auto& o : ops) {
    const std::string name = o["name"];
    if (name == "embed_tokens" || name == "norm" || name == "lm_head") continue;
    int containing = 0;
    for (const auto& l : layer_spans) containing += inside(o, l);
    EXPECT_EQ(containing, 1) << o.dump();
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace pdserve::scheduler
