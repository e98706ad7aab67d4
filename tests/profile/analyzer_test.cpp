// The analyzer on SGLang-format logs and traces: the README's hand calculation reproduced exactly,
// the published log excerpt read as SGLang wrote it, and synthetic cases with known answers.
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "profile/analyzer.h"
#include "trace_test_util.h"

namespace pdserve::profile {
namespace {

namespace fs = std::filesystem;

fs::path fresh_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("pdserve_analyzer_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write_text(const fs::path& p, const std::string& s) { std::ofstream(p) << s; }

// The example of the published README (reference 000_09e959c10642bae9.txt, "Example workflow for
// computing throughput (e.g. for EP48)"): the Oct-2025 log format, one line per DP rank with the
// batches it lists, and the trace it opens (1760576844.4826152-TP-0.trace.json.gz, the old name
// without -DP-/-EP-) in the PyTorch profiler's format with 65 ms steps.
TEST(Analyzer, ReproducesTheReadmeHandCalculation) {
  const fs::path dir = fresh_dir("readme");
  const int batches[8] = {285, 256, 254, 265, 271, 227, 221, 269};
  std::string log = "[2025-10-15 18:07:20] The server is fired up and ready to roll!\n";
  for (int d = 0; d < 8; ++d) {
    const std::string p = fmt::format("[2025-10-15 18:07:2{{}} DP{0} TP{0} EP{0}] ", d);
    // A line before the window with another batch: it must not count.
    log += fmt::format(fmt::runtime(p), 3) +
           "Decode batch. #running-req: 1, #token: 64, token usage: 0.00, pre-allocated usage: 0.00, #retracted-req: 0, "
           "cuda graph: True, gen throughput (token/s): 25.99, #queue-req: 0, \n";
    log += fmt::format(fmt::runtime(p), 4) +
           "Profiling starts. Traces will be saved to: /lustre/fs1/portfolios/coreai/projects/coreai_devtech_all/users/"
           "shifangx/1.workspace/6.SGLang_PD/Scripts-SGLang/../torch_profiler (with profile id: 1760576844.4826152)\n";
    log += fmt::format(fmt::runtime(p), 4) +
           fmt::format("Decode batch. #running-req: {}, #token: 328960, token usage: 0.51, pre-allocated usage: 0.00, "
                       "#retracted-req: 0, cuda graph: True, gen throughput (token/s): 3344.60, #queue-req: 0, \n",
                       batches[d]);
    log += fmt::format(fmt::runtime(p), 5) + "Stop profiling...\n";
    log += fmt::format(fmt::runtime(p), 8) + "Profiling done. Traces are saved to: /lustre/torch_profiler\n";
    log += fmt::format(fmt::runtime(p), 9) +
           "Decode batch. #running-req: 7, #token: 64, token usage: 0.00, pre-allocated usage: 0.00, #retracted-req: 0, "
           "cuda graph: True, gen throughput (token/s): 25.99, #queue-req: 0, \n";
  }
  write_text(dir / "launch_server_decode_node_rank_0.log", log);
  fs::create_directories(dir / "torch_profiler");
  test::write_gz(dir / "torch_profiler" / "1760576844.4826152-TP-0.trace.json.gz",
                 test::torch_style_trace(5, 65000.0, 64000.0).dump());

  AnalyzeOptions o;
  o.decode_logs = {(dir / "launch_server_decode_node_rank_0.log").string()};
  o.trace_dir = (dir / "torch_profiler").string();
  auto r = analyze(o);
  ASSERT_TRUE(r) << r.error().message();
  ASSERT_EQ(r->windows.size(), 1u) << format_text(*r);
  const auto& w = r->windows[0];
  EXPECT_EQ(w.profile_id, "1760576844.4826152");
  EXPECT_EQ(w.role, "decode");
  ASSERT_EQ(w.ranks.size(), 8u);
  for (int d = 0; d < 8; ++d) EXPECT_EQ(w.ranks[d].batch, batches[d]);
  // Global batch: 285 + 256 + 254 + 265 + 271 + 227 + 221 + 269 = 2048.
  EXPECT_EQ(w.global_batch, 2048);
  // Step time: 5 run_batch spans 65 000 us apart -> (4 * 65 ms) / 4 = 65 ms.
  EXPECT_NEAR(w.step_time_s, 0.065, 1e-9);
  // 8 DP ranks, one GPU each.
  EXPECT_EQ(w.gpus, 8);
  // Per-GPU throughput: 2048 / 0.065 / 8 = 3938.4615... (the README's "≈ 3938 tokens/s/GPU").
  EXPECT_NEAR(w.tokens_per_s_per_gpu, 2048.0 / 0.065 / 8, 1e-6);
  EXPECT_EQ(static_cast<int>(w.tokens_per_s_per_gpu), 3938);
  // DP0 alone: 285 / 0.065 = 4384.6 tokens/s on its GPU.
  EXPECT_NEAR(w.ranks[0].throughput_per_gpu, 285 / 0.065, 1e-6);
  // Cross-check from the log: 8 x 3344.60 = 26756.8 tok/s, 3344.60 per GPU.
  ASSERT_TRUE(w.log_throughput_total);
  EXPECT_NEAR(*w.log_throughput_total, 26756.8, 1e-6);
  EXPECT_NEAR(*w.log_throughput_per_gpu, 3344.6, 1e-6);
  EXPECT_NE(w.step_time_source.find("trace"), std::string::npos);
  const std::string text = format_text(*r);
  EXPECT_NE(text.find("3938.46"), std::string::npos) << text;
  EXPECT_NE(text.find("2048.0"), std::string::npos);
  o.num_gpus = 16;  // an explicit GPU count wins
  EXPECT_NEAR(analyze(o)->windows[0].tokens_per_s_per_gpu, 2048.0 / 0.065 / 16, 1e-6);
  fs::remove_all(dir);
}

// The published log excerpt verbatim (S-1121 format, REPRO2): {"num_steps": 5} -> exactly 4
// Decode lines between "Profiling starts" and "Stop profiling...". Without a trace the step time
// is estimated from the log: mean gen throughput (6892.73 + 13324.23 + 13146.41 + 13180.73) / 4
// = 11636.025 tok/s at batch 1024 -> 1024 / 11636.025 = 88.0 ms per step.
TEST(Analyzer, ReadsThePublishedSglangLogExcerpt) {
  const std::string excerpt = R"([2025-11-22 23:24:43 DP0 TP0 EP0] Decode batch, #running-req: 1024, #token: 1922048, token usage: 0.62, pre-allocated usage: 0.00, #prealloc-req: 0, #transfer-req: 0, #retracted-req: 0, cuda graph: True, gen throughput (token/s): 12156.81, #queue-req: 853,
[2025-11-22 23:24:52 DP0 TP0 EP0] Profiling starts. Traces will be saved to: /lustre/fs1/portfolios/coreai/projects/coreai_devtech_all/users/shifangx/1.workspace/7.SGLang_PD/Scripts-SGLang/../torch_profiler (with profile id: 1763882692.8351896)
[2025-11-22 23:24:53 DP0 TP0 EP0] Decode batch, #running-req: 1024, #token: 2053120, token usage: 0.66, pre-allocated usage: 0.00, #prealloc-req: 0, #transfer-req: 0, #retracted-req: 0, cuda graph: True, gen throughput (token/s): 6892.73, #queue-req: 853,
[2025-11-22 23:24:53 DP0 TP0 EP0] Decode batch, #running-req: 1024, #token: 2053120, token usage: 0.66, pre-allocated usage: 0.00, #prealloc-req: 0, #transfer-req: 0, #retracted-req: 0, cuda graph: True, gen throughput (token/s): 13324.23, #queue-req: 853,
[2025-11-22 23:24:53 DP0 TP0 EP0] Decode batch, #running-req: 1024, #token: 2053120, token usage: 0.66, pre-allocated usage: 0.00, #prealloc-req: 0, #transfer-req: 0, #retracted-req: 0, cuda graph: True, gen throughput (token/s): 13146.41, #queue-req: 853,
[2025-11-22 23:24:53 DP0 TP0 EP0] Decode batch, #running-req: 1024, #token: 2053120, token usage: 0.66, pre-allocated usage: 0.00, #prealloc-req: 0, #transfer-req: 0, #retracted-req: 0, cuda graph: True, gen throughput (token/s): 13180.73, #queue-req: 853,
[2025-11-22 23:24:53 DP0 TP0 EP0] Stop profiling...
[2025-11-22 23:24:56 DP0 TP0 EP0] Profiling done. Traces are saved to: /lustre/fs1/portfolios/coreai/projects/coreai_devtech_all/users/shifangx/1.workspace/7.SGLang_PD/Scripts-SGLang/../torch_profiler
)";
  const fs::path dir = fresh_dir("excerpt");
  write_text(dir / "decode.log", excerpt);
  AnalyzeOptions o;
  o.decode_logs = {(dir / "decode.log").string()};
  auto r = analyze(o);
  ASSERT_TRUE(r) << r.error().message();
  ASSERT_EQ(r->windows.size(), 1u);
  const auto& w = r->windows[0];
  EXPECT_EQ(w.profile_id, "1763882692.8351896");
  EXPECT_EQ(w.trace_dir_in_log,
            "/lustre/fs1/portfolios/coreai/projects/coreai_devtech_all/users/shifangx/1.workspace/7.SGLang_PD/"
            "Scripts-SGLang/../torch_profiler");
  ASSERT_EQ(w.ranks.size(), 1u);
  EXPECT_EQ(w.ranks[0].log_lines, 4);
  EXPECT_EQ(w.global_batch, 1024);
  const double gen = (6892.73 + 13324.23 + 13146.41 + 13180.73) / 4;
  EXPECT_NEAR(*w.ranks[0].log_throughput, gen, 1e-9);
  EXPECT_NEAR(w.step_time_s, 1024 / gen, 1e-12);
  EXPECT_NE(w.step_time_source.find("log estimate"), std::string::npos);
  EXPECT_NEAR(w.tokens_per_s_per_gpu, gen, 1e-6);
  EXPECT_FALSE(r->warnings.empty());  // says the step time is an estimate
  fs::remove_all(dir);
}

// Two DP ranks with pdserve traces of different step times and a prefill server: every number is
// known in advance.
TEST(Analyzer, SyntheticDecodeAndPrefillAreExact) {
  const fs::path dir = fresh_dir("synthetic");
  std::string dlog;
  for (int d = 0; d < 2; ++d) {
    const int b = d == 0 ? 100 : 60;
    dlog += fmt::format("[2026-01-01 00:00:00 DP{}] Profiling starts. Traces will be saved to: /t (with profile id: 42.5)\n", d);
    for (int i = 0; i < 3; ++i)
      dlog += fmt::format("[2026-01-01 00:00:0{} DP{}] Decode batch, #running-req: {}, #token: 10, token usage: 0.01, "
                          "cuda graph: False, gen throughput (token/s): 1000.00, #queue-req: 0, \n",
                          i + 1, d, b + (i - 1) * 2);  // b-2, b, b+2: mean b
    dlog += fmt::format("[2026-01-01 00:00:05 DP{}] Stop profiling...\n", d);
  }
  write_text(dir / "d.log", dlog);
  write_text(dir / "p.log",
             "[2026-01-01 00:00:00] Profiling starts. Traces will be saved to: /t (with profile id: 7.25)\n"
             "[2026-01-01 00:00:01] Prefill batch, #new-seq: 4, #new-token: 4096, #cached-token: 0, token usage: 0.10, "
             "#running-req: 0, #queue-req: 3, input throughput (token/s): 40000.00, \n"
             "[2026-01-01 00:00:02] Prefill batch, #new-seq: 2, #new-token: 2048, #cached-token: 0, token usage: 0.10, "
             "#running-req: 0, #queue-req: 0, input throughput (token/s): 20000.00, \n"
             "[2026-01-01 00:00:03] Stop profiling...\n");
  test::write_gz(dir / "42.5-TP-0-DP-0.trace.json.gz", test::pdserve_style_trace(4, 20000, 100).dump());
  test::write_gz(dir / "42.5-TP-1-DP-1.trace.json.gz", test::pdserve_style_trace(4, 30000, 60).dump());
  // A plain (not gzip) trace in the bare-array format is read too.
  write_text(dir / "7.25-TP-0.trace.json", test::pdserve_style_trace(3, 100000, 4)["traceEvents"].dump());
  test::write_gz(dir / "99-TP-0.trace.json.gz", "not json");  // another run's file: never opened
  AnalyzeOptions o;
  o.decode_logs = {(dir / "d.log").string()};
  o.prefill_logs = {(dir / "p.log").string()};
  o.trace_dir = dir.string();
  auto r = analyze(o);
  ASSERT_TRUE(r) << r.error().message();
  ASSERT_EQ(r->windows.size(), 2u) << format_text(*r);
  const auto& d = r->windows[0];
  EXPECT_EQ(d.role, "decode");
  EXPECT_EQ(d.global_batch, 160);                    // 100 + 60
  EXPECT_NEAR(d.step_time_s, 0.025, 1e-12);          // (20 ms + 30 ms) / 2
  EXPECT_NEAR(d.tokens_per_s_per_gpu, 3200, 1e-6);   // 160 / 0.025 / 2
  EXPECT_NEAR(d.ranks[0].throughput_per_gpu, 5000, 1e-6);  // 100 / 0.020
  EXPECT_NEAR(d.ranks[1].throughput_per_gpu, 2000, 1e-6);  // 60 / 0.030
  EXPECT_EQ(d.step_periods_s.size(), 6u);
  const auto& p = r->windows[1];
  EXPECT_EQ(p.role, "prefill");
  EXPECT_EQ(p.global_batch, 3072);                   // (4096 + 2048) / 2 new tokens per batch
  EXPECT_NEAR(p.step_time_s, 0.1, 1e-12);
  EXPECT_NEAR(p.tokens_per_s_per_gpu, 30720, 1e-6);  // 3072 / 0.1 / 1
  EXPECT_NEAR(*p.log_throughput_total, 30000, 1e-9);
  // JSON and HTML carry the same numbers.
  const auto j = to_json(*r);
  EXPECT_NEAR(j["windows"][0]["tokens_per_s_per_gpu"].get<double>(), 3200, 1e-6);
  const std::string html = to_html(*r);
  EXPECT_NE(html.find("<svg"), std::string::npos);
  EXPECT_NE(html.find("Rank imbalance"), std::string::npos);
  EXPECT_NE(html.find("3200.00"), std::string::npos);
  // --profile-id selects one window.
  o.profile_id = "7.25";
  EXPECT_EQ(analyze(o)->windows.size(), 1u);
  fs::remove_all(dir);
}

// Decode logs of a server run with --enable-expert-distribution-metrics: the per-pass lines inside
// the window are averaged (the ones before it are not), in every output form; a log without them
// reports none.
TEST(Analyzer, ExpertBalancednessOfTheWindow) {
  const fs::path dir = fresh_dir("balancedness");
  auto pass = [](int id, double b) {
    return fmt::format("[2026-01-01 00:00:0{} DP0 TP0 EP0] [Expert Balancedness] forward_pass_id={} "
                       "current_pass_balancedness={:.3f} last_10_average_balancedness=0.500 "
                       "last_100_average_balancedness=0.500 last_1000_average_balancedness=0.500 "
                       "gpu_physical_count_sum=2048\n",
                       id % 10, id, b);
  };
  std::string log = pass(1, 0.2);  // before the window: not counted
  log += "[2026-01-01 00:00:02 DP0 TP0 EP0] Profiling starts. Traces will be saved to: /t (with profile id: 5.5)\n";
  log += "[2026-01-01 00:00:03 DP0 TP0 EP0] Decode batch, #running-req: 64, #token: 10, token usage: 0.01, "
         "cuda graph: True, gen throughput (token/s): 640.00, #queue-req: 0, \n";
  log += pass(3, 0.8) + pass(4, 0.9) + pass(5, 0.7);
  log += "[2026-01-01 00:00:06 DP0 TP0 EP0] Stop profiling...\n";
  log += pass(7, 0.1);  // after it: not counted
  write_text(dir / "d.log", log);
  AnalyzeOptions o;
  o.decode_logs = {(dir / "d.log").string()};
  o.trace_dir = dir.string();
  auto r = analyze(o);
  ASSERT_TRUE(r) << r.error().message();
  ASSERT_EQ(r->windows.size(), 1u);
  ASSERT_TRUE(r->windows[0].expert_balancedness.has_value());
  EXPECT_NEAR(*r->windows[0].expert_balancedness, 0.8, 1e-9);
  EXPECT_EQ(r->windows[0].balancedness_passes, 3);
  EXPECT_EQ(r->windows[0].global_batch, 64);  // the per-pass lines are not statistics lines
  EXPECT_NE(format_text(*r).find("expert balancedness: 0.800 (mean of 3 passes"), std::string::npos) << format_text(*r);
  EXPECT_NEAR(to_json(*r)["windows"][0]["expert_balancedness"].get<double>(), 0.8, 1e-9);
  EXPECT_NE(to_html(*r).find("Expert balancedness 0.800"), std::string::npos);
  write_text(dir / "plain.log",
             "[2026-01-01 00:00:02] Profiling starts. Traces will be saved to: /t (with profile id: 6.5)\n"
             "[2026-01-01 00:00:03] Decode batch, #running-req: 8, #token: 10, token usage: 0.01, cuda graph: True, "
             "gen throughput (token/s): 80.00, #queue-req: 0, \n"
             "[2026-01-01 00:00:04] Stop profiling...\n");
  o.decode_logs = {(dir / "plain.log").string()};
  auto plain = analyze(o);
  ASSERT_TRUE(plain);
  EXPECT_FALSE(plain->windows[0].expert_balancedness.has_value());
  EXPECT_TRUE(to_json(*plain)["windows"][0]["expert_balancedness"].is_null());
  fs::remove_all(dir);
}

TEST(Analyzer, ClearErrors) {
  AnalyzeOptions o;
  auto r = analyze(o);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("--log"), std::string::npos);
  o.decode_logs = {"/nonexistent/decode.log"};
  r = analyze(o);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("/nonexistent/decode.log"), std::string::npos);
  const fs::path dir = fresh_dir("errors");
  write_text(dir / "d.log", "[2026-01-01 00:00:00] nothing profiled here\n");
  o.decode_logs = {(dir / "d.log").string()};
  o.trace_dir = (dir / "missing").string();
  EXPECT_FALSE(analyze(o));
  o.trace_dir.clear();
  r = analyze(o);
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->windows.empty());
  ASSERT_FALSE(r->warnings.empty());
  EXPECT_NE(r->warnings.back().find("no profiling window"), std::string::npos);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace pdserve::profile
