// Parsing of SGLang's log line formats (three versions) and of trace files and names.
#include <filesystem>

#include <gtest/gtest.h>

#include "profile/log_parser.h"
#include "profile/trace_reader.h"
#include "trace_test_util.h"

namespace pdserve::profile {
namespace {

TEST(LogParser, PrefixAndRanks) {
  auto l = parse_log_line("[2025-11-22 23:24:43 DP3 TP3 EP3] Decode batch, #running-req: 1024, ");
  ASSERT_TRUE(l);
  EXPECT_EQ(*l->dp, 3);
  EXPECT_EQ(*l->tp, 3);
  EXPECT_EQ(*l->ep, 3);
  EXPECT_EQ(l->timestamp, "2025-11-22 23:24:43");
  auto h = parse_log_line("[2025-11-22 18:06:33] The server is fired up and ready to roll!");
  ASSERT_TRUE(h);
  EXPECT_FALSE(h->dp);
  EXPECT_EQ(h->message, "The server is fired up and ready to roll!");
  EXPECT_EQ(l->time - h->time, 5 * 3600 + 18 * 60 + 10);
  EXPECT_FALSE(parse_log_line("Traceback (most recent call last):"));
}

TEST(LogParser, DecodeLinesOfEveryVersion) {
  // S-1121 (trailing ", "), Oct 2025 ("Decode batch."), S-0506 (no trailing comma), with iteration.
  for (const char* m :
       {"Decode batch, #running-req: 1024, #token: 1922048, token usage: 0.62, pre-allocated usage: 0.00, #prealloc-req: "
        "0, #transfer-req: 0, #retracted-req: 0, cuda graph: True, gen throughput (token/s): 12112.66, #queue-req: 853, ",
        "Decode batch. #running-req: 1024, #token: 1922048, token usage: 0.51, pre-allocated usage: 0.00, #retracted-req: "
        "0, cuda graph: True, gen throughput (token/s): 12112.66, #queue-req: 853, ",
        "Decode batch. #running-req: 1024, #token: 1922048, token usage: 0.51, cuda graph: True, gen throughput "
        "(token/s): 12112.66, #queue-req: 853",
        "Decode batch [12345], #running-req: 1024, #token: 1922048, token usage: 0.62, cuda graph: True, gen throughput "
        "(token/s): 12112.66, #queue-req: 853, "}) {
    auto d = parse_decode_batch(m);
    ASSERT_TRUE(d) << m;
    EXPECT_EQ(d->running, 1024);
    EXPECT_EQ(d->tokens, 1922048);
    EXPECT_EQ(d->queue, 853);
    EXPECT_DOUBLE_EQ(*d->gen_throughput, 12112.66);
  }
  EXPECT_FALSE(parse_decode_batch("Decode batches are great"));
  EXPECT_FALSE(parse_decode_batch("Prefill batch, #new-seq: 1, #new-token: 5, "));
}

TEST(LogParser, PrefillLines) {
  auto p = parse_prefill_batch(
      "Prefill batch, #new-seq: 4, #new-token: 8192, #cached-token: 0, token usage: 0.00, #running-req: 0, #queue-req: 3, "
      "#prealloc-req: 0, #inflight-req: 4, input throughput (token/s): 34521.09, ");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->new_seq, 4);
  EXPECT_EQ(p->new_token, 8192);
  EXPECT_EQ(p->queue, 3);
  EXPECT_DOUBLE_EQ(*p->input_throughput, 34521.09);
  auto old = parse_prefill_batch(
      "Prefill batch. #new-seq: 1, #new-token: 100, #cached-token: 0, token usage: 0.00, #running-req: 0, "
      "#unbootstrapped-req: 0, #queue-req: 0, #transferring-req: 0 ");
  ASSERT_TRUE(old);
  EXPECT_EQ(old->new_token, 100);
  EXPECT_FALSE(old->input_throughput);
}

TEST(LogParser, ProfilerLines) {
  auto s = parse_profile_start("Profiling starts. Traces will be saved to: /a b/c (with profile id: 1763882692.8351896)");
  ASSERT_TRUE(s);
  EXPECT_EQ(s->dir, "/a b/c");
  EXPECT_EQ(s->profile_id, "1763882692.8351896");
  auto old = parse_profile_start("Profiling starts. Traces will be saved to: /tmp (with id 1746000000.1)");
  ASSERT_TRUE(old);
  EXPECT_EQ(old->profile_id, "1746000000.1");
  auto st = parse_profile_start("Profiling starts for DECODE. Traces will be saved to: /tmp (with profile id: 5)");
  ASSERT_TRUE(st);
  EXPECT_EQ(st->stage, "DECODE");
  EXPECT_TRUE(is_profile_stop("Stop profiling..."));
  EXPECT_TRUE(is_profile_stop("Stop profiling-DECODE..."));
  EXPECT_FALSE(is_profile_stop("Profiling done. Traces are saved to: /tmp"));
}

TEST(TraceReader, NamesOfEveryVersion) {
  auto n = parse_trace_name("1763882692.8351896-TP-0-DP-0-EP-0.trace.json.gz");
  ASSERT_TRUE(n);
  EXPECT_EQ(n->profile_id, "1763882692.8351896");
  EXPECT_EQ(n->tp, 0);
  EXPECT_EQ(*n->dp, 0);
  EXPECT_EQ(*n->ep, 0);
  auto old = parse_trace_name("1760576844.4826152-TP-7.trace.json.gz");
  ASSERT_TRUE(old);
  EXPECT_EQ(old->tp, 7);
  EXPECT_FALSE(old->dp);
  auto stage = parse_trace_name("prefix1.5-TP-1-DP-1-DECODE.trace.json.gz");
  ASSERT_TRUE(stage);
  EXPECT_EQ(stage->stage, "DECODE");
  EXPECT_EQ(stage->profile_id, "prefix1.5");
  EXPECT_FALSE(parse_trace_name("1.5-TP-0-memory.pickle"));
}

TEST(TraceReader, StepsFromTorchAndPdserveTraces) {
  const auto dir = std::filesystem::temp_directory_path();
  const auto p = dir / ("pdserve_trace_read_" + std::to_string(::getpid()) + ".json.gz");
  test::write_gz(p, test::torch_style_trace(6, 50000, 45000).dump());
  auto t = read_chrome_trace(p.string());
  ASSERT_TRUE(t) << t.error().message();
  auto st = step_timing(*t);
  ASSERT_TRUE(st) << st.error().message();
  EXPECT_EQ(st->marker, "run_batch");  // the run_batch spans win over the nested forward spans
  EXPECT_EQ(st->starts_s.size(), 6u);
  EXPECT_NEAR(st->period_s, 0.05, 1e-9);
  EXPECT_NEAR(st->mean_duration_s, 0.045, 1e-9);
  test::write_gz(p, test::pdserve_style_trace(3, 10000, 17).dump());
  st = step_timing(*read_chrome_trace(p.string()));
  ASSERT_TRUE(st);
  EXPECT_EQ(st->batch_sizes, (std::vector<int64_t>{17, 17, 17}));
  // A mixed server: decode's step time comes from consecutive decode steps only.
  nlohmann::json mixed = nlohmann::json::array();
  const char* kinds[] = {"prefill", "decode", "decode", "prefill", "decode", "decode"};
  const double starts[] = {0, 100000, 110000, 120000, 220000, 232000};
  for (int i = 0; i < 6; ++i)
    mixed.push_back({{"ph", "X"}, {"name", "run_batch"}, {"pid", 1}, {"tid", 0}, {"ts", starts[i]}, {"dur", 5000},
                     {"args", {{"batch_kind", kinds[i]}, {"batch_size", 4}}}});
  test::write_gz(p, mixed.dump());
  st = step_timing(*read_chrome_trace(p.string()));
  ASSERT_TRUE(st);
  EXPECT_NEAR(period_of_kind(*st, "decode"), 0.011, 1e-12);  // (10 ms + 12 ms) / 2
  EXPECT_NEAR(period_of_kind(*st, "prefill"), st->period_s, 1e-12);  // no prefill pair: the overall period
  EXPECT_NEAR(st->period_s, 0.232 / 5, 1e-12);
  test::write_gz(p, R"({"traceEvents": [{"ph": "X", "name": "aten::mm", "ts": 1, "dur": 2}]})");
  EXPECT_FALSE(step_timing(*read_chrome_trace(p.string())));
  test::write_gz(p, "{\"traceEvents\": [");
  auto bad = read_chrome_trace(p.string());
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("not valid JSON"), std::string::npos);
  EXPECT_FALSE(read_chrome_trace((dir / "does_not_exist.json.gz").string()));
  std::filesystem::remove(p);
}

}  // namespace
}  // namespace pdserve::profile
