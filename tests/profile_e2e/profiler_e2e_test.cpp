// The profiler in a real `pdserve serve` (tiny model): SGLang's /start_profile semantics
// (num_steps N captures N - 1 batches), file names per rank, valid gzip Chrome traces with the
// step spans, SGLang's log lines, clear errors; then `analyze` on that server's own log and traces.
#include <thread>

#include <gtest/gtest.h>

#include "base/clock.h"
#include "profile/analyzer.h"
#include "profile/trace_reader.h"
#include "server/server_process.h"

namespace pdserve::profile {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

fs::path fresh_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("pdserve_prof_e2e_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::vector<fs::path> wait_files(const fs::path& dir, size_t n, std::chrono::seconds limit = std::chrono::seconds(60)) {
  const auto until = std::chrono::steady_clock::now() + limit;
  std::vector<fs::path> files;
  while (std::chrono::steady_clock::now() < until) {
    files.clear();
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().string().ends_with(".trace.json.gz")) files.push_back(e.path());
    if (files.size() >= n) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::sort(files.begin(), files.end());
  return files;
}

int count_named(const Trace& t, const std::string& name) {
  int n = 0;
  for (const auto& e : t.events) n += e.ph == "X" && e.name == name;
  return n;
}

std::string generate_body(int tokens) {
  return json{{"text", "The capital of France is"},
              {"sampling_params", {{"max_new_tokens", tokens}, {"ignore_eos", true}, {"temperature", 0}}}}
      .dump();
}

TEST(ProfilerE2E, NumStepsFilesLogLinesErrorsAndAnalyze) {
  test::ServerProcess server({"--decode-log-interval", "1"}, "profiler_e2e");
  ASSERT_TRUE(server.wait_ready()) << server.log();
  http::Client c;
  const fs::path dir = fresh_dir("a");

  // Bad bodies are 400 with a message, and start nothing.
  // Including folders outside the profiler root (/tmp here): elsewhere, `..`, a symlink leading out,
  // and a file-name prefix that is a path.
  const fs::path link = fs::temp_directory_path() / ("pdserve_profiler_link_" + std::to_string(::getpid()));
  fs::remove(link);
  fs::create_directory_symlink("/etc", link);
  const std::vector<std::string> bads = {
      R"({"num_steps": 0})", R"({"activities": ["TPU"]})", R"({"bogus": 1})", "not json", R"({"num_steps": "5"})",
      R"({"output_dir": "/etc"})", R"({"output_dir": "/tmp/../etc/pdserve"})",
      json{{"output_dir", (link / "sub").string()}}.dump(), R"({"profile_prefix": "../x"})",
      R"({"profile_prefix": "a/b"})"};
  for (const auto& bad : bads) {
    auto r = c.post_json(server.url("/start_profile"), bad);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400) << bad << " -> " << r->body;
  }
  fs::remove(link);
  auto stop = c.post_json(server.url("/stop_profile"), "");
  ASSERT_TRUE(stop);
  EXPECT_EQ(stop->status, 400);
  EXPECT_NE(stop->body.find("not in progress"), std::string::npos);

  auto r = c.post_json(server.url("/start_profile"), json{{"num_steps", 5}, {"output_dir", dir.string()}}.dump());
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(r->body, "Start profiling.\n");
  auto again = c.post_json(server.url("/start_profile"), json{{"num_steps", 5}, {"output_dir", dir.string()}}.dump());
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 400);
  EXPECT_NE(again->body.find("Profiling is already in progress. Call /stop_profile first."), std::string::npos);

  auto g = c.post_json(server.url("/generate"), generate_body(12));
  ASSERT_TRUE(g);
  ASSERT_EQ(g->status, 200) << g->body;
  auto files = wait_files(dir, 1);
  ASSERT_EQ(files.size(), 1u);
  // dp_size 1, tp 1, ep 1: "{id}-TP-0.trace.json.gz"; the id is SGLang's str(time.time()).
  auto name = parse_trace_name(files[0].filename().string());
  ASSERT_TRUE(name) << files[0];
  EXPECT_EQ(name->tp, 0);
  EXPECT_FALSE(name->dp);
  EXPECT_FALSE(name->ep);
  EXPECT_NEAR(std::stod(name->profile_id), pdserve::Clock::unix_seconds(), 120);
  auto t = read_chrome_trace(files[0].string());
  ASSERT_TRUE(t) << t.error().message();
  // num_steps 5 -> the 5th batch stops the profiler before it runs: 4 batches captured.
  EXPECT_EQ(count_named(*t, "run_batch"), 4);
  int forwards = 0;
  for (const auto& e : t->events)
    if (e.ph == "X" && e.cat == "forward") {
      ++forwards;
      EXPECT_TRUE(e.args.contains("batch_size"));
      EXPECT_TRUE(e.args["batch_kind"] == "prefill" || e.args["batch_kind"] == "decode");
      EXPECT_GT(e.dur, 0);
    }
  EXPECT_EQ(forwards, 4);
  auto st = step_timing(*t);
  ASSERT_TRUE(st);
  EXPECT_GT(st->period_s, 0);

  // Runs until /stop_profile without num_steps.
  const fs::path dir2 = fresh_dir("b");
  r = c.post_json(server.url("/start_profile"), json{{"output_dir", dir2.string()}}.dump());
  ASSERT_TRUE(r && r->status == 200);
  g = c.post_json(server.url("/generate"), generate_body(6));
  ASSERT_TRUE(g && g->status == 200);
  stop = c.post_json(server.url("/stop_profile"), "");
  ASSERT_TRUE(stop);
  EXPECT_EQ(stop->status, 200);
  EXPECT_EQ(stop->body, "Stop profiling. This will take some time.\n");
  auto files2 = wait_files(dir2, 1);
  ASSERT_EQ(files2.size(), 1u);
  EXPECT_EQ(count_named(*read_chrome_trace(files2[0].string()), "run_batch"), 6);  // 1 prefill + 5 decode

  // profile_by_stage: separate EXTEND and DECODE traces of num_steps batches of each kind. One
  // request has one prefill batch, so DECODE completes by itself and /stop_profile ends EXTEND.
  const fs::path dir3 = fresh_dir("stage");
  r = c.post_json(server.url("/start_profile"),
                  json{{"num_steps", 2}, {"profile_by_stage", true}, {"output_dir", dir3.string()}}.dump());
  ASSERT_TRUE(r && r->status == 200);
  g = c.post_json(server.url("/generate"), generate_body(6));
  ASSERT_TRUE(g && g->status == 200);
  auto decode_file = wait_files(dir3, 1);
  ASSERT_EQ(decode_file.size(), 1u);
  EXPECT_TRUE(decode_file[0].string().ends_with("-TP-0-DECODE.trace.json.gz")) << decode_file[0];
  EXPECT_EQ(count_named(*read_chrome_trace(decode_file[0].string()), "run_batch"), 2);
  stop = c.post_json(server.url("/stop_profile"), "");
  ASSERT_TRUE(stop && stop->status == 200);
  auto both = wait_files(dir3, 2);
  ASSERT_EQ(both.size(), 2u);
  EXPECT_TRUE(both[1].string().ends_with("-TP-0-EXTEND.trace.json.gz")) << both[1];
  EXPECT_EQ(count_named(*read_chrome_trace(both[1].string()), "run_batch"), 1);
  fs::remove_all(dir3);

  const std::string log = server.log();
  EXPECT_NE(log.find("Profiling starts. Traces will be saved to: " + dir.string() + " (with profile id: " +
                     name->profile_id + ")"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("Stop profiling..."), std::string::npos);
  EXPECT_NE(log.find("Profiling done. Traces are saved to: " + dir.string()), std::string::npos);

  // The analyzer reads this server's log and trace: one window per profile, batch 1, step from the trace.
  const fs::path log_path = dir / "server.log";
  std::ofstream(log_path) << log;
  AnalyzeOptions o;
  o.decode_logs = {log_path.string()};
  o.trace_dir = dir.string();
  o.profile_id = name->profile_id;
  auto rep = analyze(o);
  ASSERT_TRUE(rep) << rep.error().message();
  ASSERT_EQ(rep->windows.size(), 1u) << format_text(*rep);
  const auto& w = rep->windows[0];
  EXPECT_EQ(w.global_batch, 1);
  // The decode step time: consecutive decode steps only (the first captured batch is the prefill).
  const double decode_step = period_of_kind(*st, "decode");
  EXPECT_NEAR(w.step_time_s, decode_step, 1e-12);
  EXPECT_NEAR(w.tokens_per_s_per_gpu, 1 / decode_step, 1e-9);
  EXPECT_EQ(server.terminate(), 0);
  fs::remove_all(dir);
  fs::remove_all(dir2);
}

TEST(ProfilerE2E, OneFilePerDpRank) {
  test::ServerProcess server({"--dp-size", "2"}, "profiler_dp_e2e");
  ASSERT_TRUE(server.wait_ready()) << server.log();
  const fs::path dir = fresh_dir("dp");
  http::Client c;
  auto r = c.post_json(server.url("/start_profile"), json{{"num_steps", 3}, {"output_dir", dir.string()}}.dump());
  ASSERT_TRUE(r && r->status == 200);
  // Two requests: round robin gives each rank one, so both reach their third batch.
  std::thread other([&] {
    http::Client c2;
    (void)c2.post_json(server.url("/generate"), generate_body(8));
  });
  auto g = c.post_json(server.url("/generate"), generate_body(8));
  other.join();
  ASSERT_TRUE(g && g->status == 200);
  auto files = wait_files(dir, 2);
  ASSERT_EQ(files.size(), 2u);
  std::set<int> dps;
  for (const auto& f : files) {
    auto n = parse_trace_name(f.filename().string());
    ASSERT_TRUE(n && n->dp) << f;
    EXPECT_EQ(n->tp, *n->dp);  // DP attention: each DP rank is its own TP rank
    dps.insert(*n->dp);
    EXPECT_EQ(count_named(*read_chrome_trace(f.string()), "run_batch"), 2);
  }
  EXPECT_EQ(dps, (std::set<int>{0, 1}));
  EXPECT_EQ(server.terminate(), 0);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace pdserve::profile
