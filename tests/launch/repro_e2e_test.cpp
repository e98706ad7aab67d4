// `pdserve repro` end to end: the real binary starts prefill, decode, router and bench processes
// on loopback with the tiny model, fills, profiles and analyzes. Checks the exit code, the files,
// the report's numbers, and that no child outlives it (after success, a failure and a SIGINT).
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "launch/child_process.h"
#include "launch/extra_args.h"
#include "profile/trace_reader.h"
#include "server/server_process.h"
#include "test_time.h"

namespace {

using namespace pdserve;
using test::read_file;
namespace fs = std::filesystem;
using json = nlohmann::json;

fs::path fresh_dir(const std::string& name) {
  auto d = fs::temp_directory_path() / ("pdserve_repro_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// `pdserve repro` with the tiny sizes, `overrides` replacing flags; output goes to `console`.
launch::ChildProcess start_repro(const fs::path& out, const fs::path& console, const std::map<std::string, std::string>& overrides = {}) {
  std::map<std::string, std::string> flags = {
      {"--model-path", std::string(PDSERVE_SOURCE_DIR) + "/models/tiny-deepseek-v3"},
      {"--load-format", "dummy"}, {"--device", "cpu"}, {"--num-prompts", "8"}, {"--random-input-len", "16"},
      {"--random-output-len", "64"}, {"--max-concurrency", "8"}, {"--slow-down-time", "0.5"}, {"--profile-steps", "3"},
      {"--fill-timeout", "30"}, {"--ready-timeout", "60"}, {"--output-dir", out.string()}};
  for (const auto& [k, v] : overrides) flags[k] = v;
  std::vector<std::string> args = {"repro"};
  for (const auto& [k, v] : flags) {
    args.push_back(k);
    args.push_back(v);
  }
  auto child = launch::ChildProcess::spawn("repro", PDSERVE_BINARY, args, console);
  EXPECT_TRUE(child.has_value());
  return std::move(*child);
}

// Exit code (128 + signal when killed); -1 after `limit` (the process is then killed).
int wait_exit(launch::ChildProcess& p, std::chrono::seconds limit) {
  if (auto code = p.wait_for(limit)) return *code;
  p.stop(std::chrono::milliseconds(0));
  return -1;
}

// The children repro logged as "started NAME (pid N)".
std::vector<pid_t> child_pids(const std::string& console) {
  std::vector<pid_t> pids;
  static const std::regex re(R"(started \w+ \(pid (\d+)\))");
  for (auto it = std::sregex_iterator(console.begin(), console.end(), re); it != std::sregex_iterator(); ++it)
    pids.push_back(std::stoi((*it)[1]));
  return pids;
}

// A pid is gone once it no longer exists or is a zombie nobody reaps (init reaps orphans quickly;
// a zombie of our own would not be a running server either).
bool gone(pid_t pid) {
  if (::kill(pid, 0) != 0) return true;
  const std::string stat = read_file("/proc/" + std::to_string(pid) + "/stat");
  const auto close = stat.rfind(')');
  return close != std::string::npos && close + 2 < stat.size() && stat[close + 2] == 'Z';
}

void expect_no_children_left(const std::string& console, size_t expected) {
  const auto pids = child_pids(console);
  EXPECT_EQ(pids.size(), expected) << console;
  for (pid_t p : pids) EXPECT_TRUE(gone(p)) << "child pid " << p << " outlived repro";
}

// The whole run with the given fill; checks everything but the fill's own lines.
void run_and_check(const std::string& fill, const std::string& expected_fill_line, const std::string& method) {
  const auto out = fresh_dir("ok_" + method);
  const auto console = out.parent_path() / (out.filename().string() + ".console");
  auto repro = start_repro(out, console, fill.empty() ? std::map<std::string, std::string>{} : std::map<std::string, std::string>{{"--fill", fill}});
  const int rc = wait_exit(repro, test::scaled(80));
  const std::string text = read_file(console);
  ASSERT_EQ(rc, 0) << text;

  for (const char* f : {"prefill.log", "decode.log", "router.log", "bench.log", "bench.jsonl", "report.txt", "report.json",
                        "report.html", "repro.json"}) {
    EXPECT_TRUE(fs::exists(out / f)) << f;
    EXPECT_GT(fs::file_size(out / f), 0u) << f;
  }
  int traces = 0;
  for (const auto& e : fs::directory_iterator(out / "traces")) traces += e.path().string().ends_with("-TP-0.trace.json.gz");
  EXPECT_EQ(traces, 1);
  for (const char* f : {"prefill.log", "decode.log"})
    EXPECT_NE(read_file(out / f).find("The server is fired up and ready to roll!"), std::string::npos) << f;
  EXPECT_NE(read_file(out / "bench.log").find("Successful requests:                     8"), std::string::npos);

  // The report on stdout: the formula line with the fill's full batch of 8 and a positive rate.
  std::smatch m;
  static const std::regex formula(R"(output tokens/s per GPU = ([0-9.]+) / ([0-9.]+) s / 1 GPUs = ([0-9.]+))");
  ASSERT_TRUE(std::regex_search(text, m, formula)) << text;
  EXPECT_DOUBLE_EQ(std::stod(m[1]), 8.0);
  const double step = std::stod(m[2]), rate = std::stod(m[3]);
  EXPECT_GT(step, 0);
  EXPECT_NEAR(rate, 8.0 / step, 0.01 * rate + 0.5);
  EXPECT_NE(text.find(expected_fill_line), std::string::npos) << text;

  const json summary = json::parse(read_file(out / "repro.json"));
  EXPECT_EQ(summary["fill"]["method"], method);
  EXPECT_EQ(summary["fill"]["reached_running"], 8);
  for (const char* c : {"prefill", "decode", "router", "bench"}) EXPECT_EQ(summary["exit_codes"][c], 0) << c;
  const auto& window = summary["report"]["windows"][0];
  EXPECT_EQ(window["global_batch"], 8.0);
  EXPECT_GT(window["tokens_per_s_per_gpu"].get<double>(), 0);
  expect_no_children_left(text, 4);
  if (method == "hold") {
    EXPECT_EQ(summary["fill"]["released_by"], "target");
  }
  // The profile of the filled batch carries the model's layer spans (base/trace_spans.h): one per
  // decoder layer of the tiny model (4) in every forward.
  for (const auto& e : fs::directory_iterator(out / "traces")) {
    auto trace = profile::read_chrome_trace(e.path().string());
    ASSERT_TRUE(trace.has_value());
    size_t forwards = 0, layers = 0;
    for (const auto& ev : trace->events) {
      forwards += ev.ph == "X" && ev.cat == "forward";
      layers += ev.ph == "X" && ev.cat == "layer";
    }
    EXPECT_GT(forwards, 0u);
    EXPECT_EQ(layers, 4 * forwards);
  }
  fs::remove_all(out);
  fs::remove(console);
}

TEST(ReproE2E, RunsTheWorkflowAndReportsPerGpuThroughput) {
  // The default fill: decode holds its batches (/hold_decode) until #running-req reaches 8.
  run_and_check("", "fill: hold (POST /hold_decode: no decode step until the target; released by target), #running-req 8 of target 8",
                "hold");
}

TEST(ReproE2E, SlowDownFillIsThePublishedOne) {
  run_and_check("slow-down", "fill: SGLang-style fixed sleep (0.5 s per decode batch), #running-req 8 of target 8", "slow_down");
}

TEST(ReproE2E, SigintStopsEveryChild) {
  const auto out = fresh_dir("sigint");
  const auto console = out.parent_path() / (out.filename().string() + ".console");
  // A fill that cannot finish (target above the requests) keeps repro busy until the signal.
  auto repro = start_repro(out, console, {{"--target-running", "100"}, {"--fill-timeout", "120"}});
  const auto until = std::chrono::steady_clock::now() + test::scaled(60);
  while (read_file(console).find("started bench") == std::string::npos && std::chrono::steady_clock::now() < until &&
         repro.running())
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_NE(read_file(console).find("started bench"), std::string::npos) << read_file(console);
  ::kill(repro.pid(), SIGINT);
  const int rc = wait_exit(repro, std::chrono::seconds(30));
  const std::string text = read_file(console);
  EXPECT_EQ(rc, 130) << text;
  EXPECT_NE(text.find("interrupted by signal 2 during step 'hold fill'"), std::string::npos) << text;
  expect_no_children_left(text, 4);
  fs::remove_all(out);
  fs::remove(console);
}

TEST(ReproE2E, FailedServerIsNamedWithItsLog) {
  const auto out = fresh_dir("bad");
  const auto console = out.parent_path() / (out.filename().string() + ".console");
  // An unknown load format makes both servers exit at startup.
  auto repro = start_repro(out, console, {{"--load-format", "nonsense"}});
  const int rc = wait_exit(repro, std::chrono::seconds(30));
  const std::string text = read_file(console);
  EXPECT_EQ(rc, 1) << text;
  EXPECT_NE(text.find("step 'start prefill and decode servers' failed"), std::string::npos) << text;
  EXPECT_TRUE(std::regex_search(text, std::regex(R"((prefill|decode) exited with code \d+ .*see its log .*(prefill|decode)\.log)")))
      << text;
  expect_no_children_left(text, 2);
  fs::remove_all(out);
  fs::remove(console);
}

// The H100 blog's shape (sglang-spec §1.1) on CPU ranks: an EP prefill (normal mode, redundant
// experts, dynamic dispatch) and an EP decode (low-latency mode, redundant experts rebalanced
// online while the benchmark runs), each over 2 DP ranks; the report counts the decode's 2 GPUs.
TEST(ReproE2E, ExpertParallelPrefillAndDecodeAsPublished) {
  const auto out = fresh_dir("ep");
  const auto console = out.parent_path() / (out.filename().string() + ".console");
  const std::string common = "--enable-dp-attention --moe-a2a-backend deepep --ep-num-redundant-experts 2 "
                             "--moe-dense-tp-size 1 --enable-dp-lm-head --disable-radix-cache ";
  auto repro = start_repro(out, console,
                           {{"--prefill-dp-size", "2"},
                            {"--prefill-extra-args", common + "--deepep-mode normal --ep-dispatch-algorithm dynamic "
                                                              "--enable-two-batch-overlap --attention-backend fa3"},
                            {"--decode-dp-size", "2"},
                            {"--decode-extra-args", common + "--deepep-mode low_latency --enable-eplb "
                                                             "--eplb-rebalance-num-iterations 5"}});
  const int rc = wait_exit(repro, test::scaled(80));
  const std::string text = read_file(console);
  ASSERT_EQ(rc, 0) << text;
  EXPECT_NE(text.find("/ 2 GPUs = "), std::string::npos) << text;
  EXPECT_NE(read_file(out / "bench.log").find("Successful requests:                     8"), std::string::npos);
  const std::string prefill = read_file(out / "prefill.log"), decode = read_file(out / "decode.log");
  for (const std::string* log : {&prefill, &decode})
    EXPECT_NE(log->find("DeepEP MoE: 2 EP ranks, 9 routed experts each (18 physical in all)"), std::string::npos) << *log;
  EXPECT_NE(prefill.find("ep-dispatch-algorithm=dynamic"), std::string::npos) << prefill;
  EXPECT_NE(prefill.find("--attention-backend fa3: no effect"), std::string::npos) << prefill;
  EXPECT_NE(decode.find("[EPLBManager] rebalance end"), std::string::npos) << decode;
  const json summary = json::parse(read_file(out / "repro.json"));
  EXPECT_EQ(summary["decode_extra_args"].size(), 14u);
  expect_no_children_left(text, 4);
  fs::remove_all(out);
  fs::remove(console);
}

TEST(ReproE2E, ExtraArgsThatReproSetsItselfAreRefusedBeforeStartingAnything) {
  const auto out = fresh_dir("owned");
  const auto console = out.parent_path() / (out.filename().string() + ".console");
  auto repro = start_repro(out, console, {{"--decode-extra-args", "--enable-dp-attention --dp-size 4"}});
  EXPECT_EQ(wait_exit(repro, std::chrono::seconds(10)), 1);
  EXPECT_NE(read_file(console).find("--decode-extra-args: --dp-size is set by repro itself; use --prefill-dp-size / "
                                    "--decode-dp-size"),
            std::string::npos)
      << read_file(console);
  expect_no_children_left(read_file(console), 0);
  fs::remove_all(out);
  fs::remove(console);
}

TEST(ReproExtraArgs, SplitsLikeAShellForFlagsAndInlineJson) {
  auto words = launch::split_command_line(R"(  --a 1	--b '{"x": [1, 2]}' --c "say \"hi\"" --d=''  )");
  ASSERT_TRUE(words.has_value()) << words.error().message();
  EXPECT_EQ(*words, (std::vector<std::string>{"--a", "1", "--b", R"({"x": [1, 2]})", "--c", R"(say "hi")", "--d="}));
  EXPECT_TRUE(launch::split_command_line("")->empty());
  EXPECT_FALSE(launch::split_command_line("--b '{\"x\": 1").has_value());  // unterminated quote
  EXPECT_TRUE(launch::check_extra_server_args({"--enable-eplb", "--cuda-graph-bs", "1", "2"}, "--x").has_value());
  auto owned = launch::check_extra_server_args({"--port=9"}, "--prefill-extra-args");
  ASSERT_FALSE(owned.has_value());
  EXPECT_NE(owned.error().message().find("--prefill-extra-args: --port is set by repro itself"), std::string::npos);
}

TEST(ReproE2E, MissingModelFailsBeforeStartingAnything) {
  const auto out = fresh_dir("nomodel");
  const auto console = out.parent_path() / (out.filename().string() + ".console");
  auto repro = start_repro(out, console, {{"--model-path", "/nonexistent/model"}});
  EXPECT_EQ(wait_exit(repro, std::chrono::seconds(10)), 1);
  EXPECT_NE(read_file(console).find("--model-path /nonexistent/model is not a folder"), std::string::npos) << read_file(console);
  fs::remove_all(out);
  fs::remove(console);
}

}  // namespace
