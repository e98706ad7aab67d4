#include "launch/repro.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/cli.h"
#include "base/logging.h"
#include "base/status.h"
#include "http/client.h"
#include "http/signals.h"
#include "launch/child_process.h"
#include "launch/extra_args.h"
#include "profile/log_parser.h"

namespace pdserve::launch {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr const char* kReadyLine = "The server is fired up and ready to roll!";
constexpr const char* kRouterReadyLine = "listening on";
constexpr const char* kProfileDoneLine = "Profiling done. Traces are saved to:";

std::chrono::milliseconds ms(double seconds) { return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)); }

// Follows a growing log file: complete lines only, read from where the last call stopped, so
// polling a decode log that grows by a line per step stays cheap.
class LogFollower {
 public:
  explicit LogFollower(fs::path path) : path_(std::move(path)) {}

  void update() {
    std::ifstream f(path_, std::ios::binary);
    if (!f) return;
    f.seekg(static_cast<std::streamoff>(offset_));
    std::string chunk((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const auto end = chunk.rfind('\n');
    if (end == std::string::npos) return;
    offset_ += end + 1;
    std::istringstream lines(chunk.substr(0, end + 1));
    for (std::string line; std::getline(lines, line);) on_line(line);
  }

  bool saw(const std::string& text) const { return std::find(seen_.begin(), seen_.end(), text) != seen_.end(); }
  void watch(const std::string& text) { watched_.push_back(text); }
  int count(const std::string& text) const {
    auto it = counts_.find(text);
    return it == counts_.end() ? 0 : it->second;
  }
  // Sum over DP ranks of each rank's latest `#running-req` (the global batch).
  int64_t running() const {
    int64_t sum = 0;
    for (const auto& [dp, n] : running_) sum += n;
    return sum;
  }

 private:
  void on_line(const std::string& line) {
    for (const auto& w : watched_) {
      if (line.find(w) != std::string::npos) {
        ++counts_[w];
        if (!saw(w)) seen_.push_back(w);
      }
    }
    auto parsed = profile::parse_log_line(line);
    if (!parsed) return;
    if (auto d = profile::parse_decode_batch(parsed->message)) running_[parsed->dp.value_or(0)] = d->running;
  }

  fs::path path_;
  std::size_t offset_ = 0;
  std::vector<std::string> watched_, seen_;
  std::map<std::string, int> counts_;
  std::map<int, int64_t> running_;
};

// The last lines of a log, indented, for an error message about the process that wrote it.
std::string log_tail(const fs::path& path, std::size_t lines = 3) {
  std::ifstream f(path);
  std::vector<std::string> last;
  for (std::string line; std::getline(f, line);) {
    last.push_back(line);
    if (last.size() > lines) last.erase(last.begin());
  }
  std::string out;
  for (const auto& l : last) out += "\n    " + l;
  return out.empty() ? out : "; it ended with:" + out;
}

std::atomic<int> g_signal{0};

class Repro {
 public:
  explicit Repro(ReproOptions o) : o_(std::move(o)) {}

  ~Repro() { stop_all(); }

  int run() {
    auto st = steps();
    if (!st) {
      stop_all();
      if (g_signal.load()) {
        log::error("repro: interrupted by signal {} during step '{}'; all processes stopped", g_signal.load(), step_);
        return 130;
      }
      log::error("repro: step '{}' failed: {}", step_, st.error().message());
      return 1;
    }
    return 0;
  }

 private:
  Status steps() {
    step_ = "setup";
    PDSERVE_RETURN_IF_ERROR(setup());
    step_ = "start prefill and decode servers";
    PDSERVE_RETURN_IF_ERROR(start_servers());
    step_ = "start router";
    PDSERVE_RETURN_IF_ERROR(start_router());
    step_ = "start benchmark";
    PDSERVE_RETURN_IF_ERROR(start_bench());
    if (hold_fill()) {
      // The hold releases itself (target or timeout): no release step, no sleeping batch to wait for.
      step_ = "hold fill";
      PDSERVE_RETURN_IF_ERROR(fill_by_hold());
    } else {
      step_ = "slow-down fill";
      PDSERVE_RETURN_IF_ERROR(fill());
      step_ = "release slow-down";
      PDSERVE_RETURN_IF_ERROR(post_decode("/slow_down", json{{"forward_sleep_time", nullptr}}));
      // The batch running when the release arrives may still be in its sleep; profiling it would
      // count the sleep as step time. Let it finish first.
      std::this_thread::sleep_for(std::chrono::duration<double>(o_.slow_down_time + 0.25));
    }
    step_ = "profile";
    PDSERVE_RETURN_IF_ERROR(profile());
    step_ = "wait for benchmark";
    PDSERVE_RETURN_IF_ERROR(wait_bench());
    step_ = "shutdown";
    stop_all();
    for (const auto& [name, code] : exit_codes_) {
      if (code != 0) log::warning("repro: {} exited with code {} on shutdown; see {}", name, code, (out_ / (name + ".log")).string());
    }
    step_ = "analyze";
    PDSERVE_RETURN_IF_ERROR(analyze());
    return ok_status();
  }

  Status setup() {
    std::error_code ec;
    fs::create_directories(o_.output_dir, ec);
    if (ec) return make_error(ErrorCode::kIo, "cannot create --output-dir {}: {}", o_.output_dir, ec.message());
    out_ = fs::absolute(o_.output_dir);
    traces_ = out_ / "traces";
    fs::create_directories(traces_, ec);
    if (!fs::is_directory(o_.model_path)) return make_error(ErrorCode::kNotFound, "--model-path {} is not a folder", o_.model_path);
    model_ = fs::absolute(o_.model_path).string();
    if (o_.load_format.empty()) {
      bool has_weights = false;
      for (const auto& e : fs::directory_iterator(model_)) has_weights = has_weights || e.path().extension() == ".safetensors";
      o_.load_format = has_weights ? "auto" : "dummy";
    }
    if (o_.target_running <= 0) o_.target_running = std::min(o_.num_prompts, o_.max_concurrency);
    PDSERVE_ASSIGN_OR_RETURN(prefill_extra_, split_command_line(o_.prefill_extra_args));
    PDSERVE_ASSIGN_OR_RETURN(decode_extra_, split_command_line(o_.decode_extra_args));
    PDSERVE_RETURN_IF_ERROR(check_extra_server_args(prefill_extra_, "--prefill-extra-args"));
    PDSERVE_RETURN_IF_ERROR(check_extra_server_args(decode_extra_, "--decode-extra-args"));
    for (int* port : {&prefill_port_, &decode_port_, &router_port_, &bootstrap_port_}) {
      PDSERVE_ASSIGN_OR_RETURN(*port, free_port());
    }
    binary_ = self_binary();
    log::info("repro: model {} (load format {}, device {}), output in {}", model_, o_.load_format, o_.device, out_.string());
    return ok_status();
  }

  Result<ChildProcess*> spawn(const std::string& name, std::vector<std::string> args) {
    // The servers may write traces only under their profiler folder: make it this run's.
    auto c = ChildProcess::spawn(name, binary_, args, out_ / (name + ".log"),
                                 {"SGLANG_TORCH_PROFILER_DIR=" + traces_.string()});
    if (!c) return c.error();
    children_.push_back(std::make_unique<ChildProcess>(std::move(*c)));
    log::info("repro: started {} (pid {}), log {}", name, children_.back()->pid(), children_.back()->log_path().string());
    return children_.back().get();
  }

  // Polls until `done` holds; fails on timeout, on a signal, or when a child of `alive` exited.
  Status wait_until(const std::function<bool()>& done, double timeout_s, const std::string& what,
                    const std::vector<ChildProcess*>& alive) {
    const auto until = Clock::now() + ms(timeout_s);
    while (!done()) {
      if (g_signal.load()) return make_error(ErrorCode::kInternal, "interrupted");
      for (auto* c : alive) {
        if (auto code = c->poll()) {
          return make_error(ErrorCode::kInternal, "{} exited with code {} while waiting for {}; see its log {}{}", c->name(),
                            *code, what, c->log_path().string(), log_tail(c->log_path()));
        }
      }
      if (Clock::now() >= until) return make_error(ErrorCode::kInternal, "timed out after {} s waiting for {}", timeout_s, what);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return ok_status();
  }

  std::vector<std::string> serve_args(const std::string& mode, int port, int dp) const {
    std::vector<std::string> args = {
        "serve", "--model-path", model_, "--load-format", o_.load_format, "--device", o_.device,
        "--host", "127.0.0.1", "--port", std::to_string(port), "--disaggregation-mode", mode,
        "--disaggregation-bootstrap-port", std::to_string(bootstrap_port_), "--dp-size", std::to_string(dp),
        "--json-model-override-args", o_.json_model_override_args,
        // One Decode line per step: the fill watches #running-req and analyze averages it.
        "--decode-log-interval", "1"};
    const auto& extra = mode == "prefill" ? prefill_extra_ : decode_extra_;
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  }

  Status start_servers() {
    PDSERVE_ASSIGN_OR_RETURN(prefill_, spawn("prefill", serve_args("prefill", prefill_port_, o_.prefill_dp_size)));
    PDSERVE_ASSIGN_OR_RETURN(decode_, spawn("decode", serve_args("decode", decode_port_, o_.decode_dp_size)));
    LogFollower fp(prefill_->log_path()), fd(decode_->log_path());
    fp.watch(kReadyLine);
    fd.watch(kReadyLine);
    auto ready = [&] {
      fp.update();
      fd.update();
      return fp.saw(kReadyLine) && fd.saw(kReadyLine);
    };
    auto st = wait_until(ready, o_.ready_timeout, "the servers to be ready", {prefill_, decode_});
    if (!st && st.error().message().starts_with("timed out")) {
      auto* late = fp.saw(kReadyLine) ? decode_ : prefill_;
      return make_error(ErrorCode::kInternal, "{} server did not log '{}' within {} s; see {}", late->name(), kReadyLine,
                        o_.ready_timeout, late->log_path().string());
    }
    PDSERVE_RETURN_IF_ERROR(st);
    log::info("repro: prefill on :{} (bootstrap :{}), decode on :{} are ready", prefill_port_, bootstrap_port_, decode_port_);
    return ok_status();
  }

  Status start_router() {
    PDSERVE_ASSIGN_OR_RETURN(
        router_, spawn("router", {"router", "--pd-disaggregation", "--prefill", url(prefill_port_), std::to_string(bootstrap_port_),
                                  "--decode", url(decode_port_), "--host", "127.0.0.1", "--port", std::to_string(router_port_),
                                  "--prometheus-port", "-1"}));
    LogFollower f(router_->log_path());
    f.watch(kRouterReadyLine);
    return wait_until([&] { f.update(); return f.saw(kRouterReadyLine); }, o_.ready_timeout,
                      fmt::format("router readiness ('{}') in {}", kRouterReadyLine, router_->log_path().string()),
                      {prefill_, decode_, router_});
  }

  Status start_bench() {
    PDSERVE_ASSIGN_OR_RETURN(
        bench_, spawn("bench", {"bench", "--backend", "sglang", "--base-url", url(router_port_), "--dataset-name", "random",
                                "--random-input-len", std::to_string(o_.input_len), "--random-output-len",
                                std::to_string(o_.output_len), "--random-range-ratio", "1", "--num-prompts",
                                std::to_string(o_.num_prompts), "--max-concurrency", std::to_string(o_.max_concurrency),
                                "--tokenizer", model_, "--warmup-requests", "0", "--output-file", (out_ / "bench.jsonl").string(), "--disable-tqdm"}));
    return ok_status();
  }

  Status post_decode(const std::string& route, const json& body, double timeout_s = 0) {
    if (timeout_s <= 0) timeout_s = o_.slow_down_time + 60;
    // A client per call: a kept-alive connection left open would hold up the decode's shutdown.
    http::Client client;
    auto r = client.post_json(url(decode_port_) + route, body.dump(), ms(timeout_s));
    if (!r) return make_error(ErrorCode::kIo, "POST {} {} to decode: {}; see {}", route, body.dump(), r.error().message(),
                              decode_->log_path().string());
    if (r->status != 200)
      return make_error(ErrorCode::kIo, "POST {} {} to decode answered {}: {}", route, body.dump(), r->status, r->body);
    return ok_status();
  }

  // SGLang's fill: every decode batch sleeps, so requests the prefill finishes pile into the next
  // batch until #running-req (summed over DP ranks) reaches the target.
  Status fill() {
    const auto t0 = Clock::now();
    PDSERVE_RETURN_IF_ERROR(post_decode("/slow_down", json{{"forward_sleep_time", o_.slow_down_time}}));
    LogFollower f(decode_->log_path());
    auto st = wait_until([&] { f.update(); return f.running() >= o_.target_running; }, o_.fill_timeout,
                         fmt::format("#running-req >= {} in {}", o_.target_running, decode_->log_path().string()),
                         {prefill_, decode_, router_});
    fill_seconds_ = std::chrono::duration<double>(Clock::now() - t0).count();
    fill_reached_ = f.running();
    if (!st) {
      if (g_signal.load() || !st.error().message().starts_with("timed out")) return st;
      log::warning("repro: fill reached #running-req {} of {} within {} s; profiling anyway", fill_reached_,
                   o_.target_running, o_.fill_timeout);
    } else {
      log::info("repro: fill reached #running-req {} (target {}) in {:.1f} s", fill_reached_, o_.target_running, fill_seconds_);
    }
    return ok_status();
  }

  bool hold_fill() const { return o_.fill == "hold"; }

  // The hold fill (server/decode_hold.h): decode runs no step until Σ #running-req reaches the
  // target, then the server releases it; we poll its state (the log has no Decode lines meanwhile).
  Status fill_by_hold() {
    const auto t0 = Clock::now();
    PDSERVE_RETURN_IF_ERROR(
        post_decode("/hold_decode", json{{"until_running", o_.target_running}, {"timeout", o_.fill_timeout}}));
    json state;
    auto released = [&] {
      http::Client client;
      auto r = client.get(url(decode_port_) + "/hold_decode", ms(10));
      if (!r || r->status != 200) return false;
      state = json::parse(r->body, nullptr, false);
      return state.is_object() && !state.value("holding", true);
    };
    // The server ends the hold by itself at the timeout; the margin covers a slow last poll.
    PDSERVE_RETURN_IF_ERROR(wait_until(released, o_.fill_timeout + 30,
                                       fmt::format("the decode hold to release (GET {}/hold_decode)", url(decode_port_)),
                                       {prefill_, decode_, router_}));
    fill_seconds_ = std::chrono::duration<double>(Clock::now() - t0).count();
    fill_reached_ = state["running_at_release"].is_number_integer() ? state["running_at_release"].get<int64_t>() : 0;
    fill_released_by_ = state.value("released_by", "");
    if (fill_released_by_ == "target") {
      log::info("repro: hold fill reached #running-req {} (target {}) in {:.1f} s", fill_reached_, o_.target_running,
                fill_seconds_);
    } else {
      log::warning("repro: hold fill released by {} at #running-req {} of {} after {:.1f} s; profiling anyway",
                   fill_released_by_, fill_reached_, o_.target_running, fill_seconds_);
    }
    return ok_status();
  }

  std::string fill_description() const {
    if (hold_fill())
      return fmt::format("hold (POST /hold_decode: no decode step until the target; released by {})", fill_released_by_);
    return fmt::format("SGLang-style fixed sleep ({} s per decode batch)", o_.slow_down_time);
  }

  Status profile() {
    LogFollower f(decode_->log_path());
    f.update();
    f.watch(kProfileDoneLine);
    PDSERVE_RETURN_IF_ERROR(post_decode("/start_profile", json{{"num_steps", o_.profile_steps}, {"output_dir", traces_.string()}}));
    const int ranks = o_.decode_dp_size;
    auto done = [&] { f.update(); return f.count(kProfileDoneLine) >= ranks; };
    // The batch can drain before num_steps batches ran (then no step ends the capture): stop it.
    auto st = wait_until([&] { return done() || bench_->poll().has_value(); }, o_.profile_timeout,
                         fmt::format("'{}' in {}", kProfileDoneLine, decode_->log_path().string()), {prefill_, decode_, router_});
    PDSERVE_RETURN_IF_ERROR(st);
    if (!done()) {
      log::warning("repro: the benchmark ended before {} profiled steps; stopping the profile", o_.profile_steps);
      PDSERVE_RETURN_IF_ERROR(post_decode("/stop_profile", json::object()));
      PDSERVE_RETURN_IF_ERROR(wait_until(done, 60, fmt::format("'{}' in {}", kProfileDoneLine, decode_->log_path().string()),
                                         {decode_}));
    }
    log::info("repro: profile written to {}", traces_.string());
    return ok_status();
  }

  Status wait_bench() {
    PDSERVE_RETURN_IF_ERROR(wait_until([&] { return bench_->poll().has_value(); }, o_.bench_timeout,
                                       "the benchmark to finish", {prefill_, decode_, router_}));
    if (*bench_->poll() != 0)
      return make_error(ErrorCode::kInternal, "bench exited with code {}; see {}", *bench_->poll(), bench_->log_path().string());
    return ok_status();
  }

  // Children in reverse start order (bench, router, decode, prefill): SIGTERM, SIGKILL after the grace.
  void stop_all() {
    for (auto it = children_.rbegin(); it != children_.rend(); ++it) {
      auto& c = **it;
      if (c.pid() <= 0) continue;
      const bool was_running = !c.poll().has_value();
      const int code = c.stop(ms(o_.shutdown_grace));
      if (was_running) exit_codes_[c.name()] = code;
      else if (!exit_codes_.count(c.name())) exit_codes_[c.name()] = code;
    }
  }

  Status analyze() {
    auto a = ChildProcess::spawn("analyze", binary_,
                                 {"analyze", "--log", decode_->log_path().string(), "--trace-dir", traces_.string(),
                                  "--output-json", (out_ / "report.json").string(), "--html", (out_ / "report.html").string()},
                                 out_ / "report.txt");
    if (!a) return a.error();
    std::optional<int> code;
    while (!(code = a->wait_for(std::chrono::milliseconds(200)))) {
      if (g_signal.load()) return make_error(ErrorCode::kInternal, "interrupted");
    }
    std::ifstream report(out_ / "report.txt");
    std::cout << report.rdbuf();
    if (*code != 0) return make_error(ErrorCode::kInternal, "analyze exited with code {}; see {}", *code, (out_ / "report.txt").string());
    write_summary();
    std::cout << fmt::format(
        "\nfill: {}, #running-req {} of target {} after {:.1f} s\n"
        "files in {}: prefill.log decode.log router.log bench.log bench.jsonl traces/ report.txt report.json "
        "report.html repro.json\n",
        fill_description(), fill_reached_, o_.target_running, fill_seconds_, out_.string());
    std::cout.flush();
    return ok_status();
  }

  void write_summary() {
    json j = {{"model_path", model_},
              {"load_format", o_.load_format},
              {"device", o_.device},
              {"num_prompts", o_.num_prompts},
              {"random_input_len", o_.input_len},
              {"random_output_len", o_.output_len},
              {"max_concurrency", o_.max_concurrency},
              {"prefill_dp_size", o_.prefill_dp_size},
              {"decode_dp_size", o_.decode_dp_size},
              {"prefill_extra_args", prefill_extra_},
              {"decode_extra_args", decode_extra_},
              {"fill", {{"method", hold_fill() ? "hold" : "slow_down"},
                        {"forward_sleep_time", hold_fill() ? json(nullptr) : json(o_.slow_down_time)},
                        {"released_by", hold_fill() ? json(fill_released_by_) : json(nullptr)},
                        {"target_running", o_.target_running}, {"reached_running", fill_reached_}, {"seconds", fill_seconds_}}},
              {"profile_steps", o_.profile_steps},
              {"ports", {{"prefill", prefill_port_}, {"decode", decode_port_}, {"router", router_port_}, {"bootstrap", bootstrap_port_}}},
              {"exit_codes", exit_codes_}};
    std::ifstream r(out_ / "report.json");
    if (auto rep = json::parse(r, nullptr, false); !rep.is_discarded()) j["report"] = std::move(rep);
    std::ofstream(out_ / "repro.json") << j.dump(2) << "\n";
  }

  static std::string url(int port) { return "http://127.0.0.1:" + std::to_string(port); }

  ReproOptions o_;
  std::string step_ = "setup", binary_, model_;
  fs::path out_, traces_;
  std::vector<std::string> prefill_extra_, decode_extra_;  // --prefill-extra-args / --decode-extra-args, split
  int prefill_port_ = 0, decode_port_ = 0, router_port_ = 0, bootstrap_port_ = 0;
  std::vector<std::unique_ptr<ChildProcess>> children_;
  ChildProcess *prefill_ = nullptr, *decode_ = nullptr, *router_ = nullptr, *bench_ = nullptr;
  double fill_seconds_ = 0;
  int64_t fill_reached_ = 0;
  std::string fill_released_by_;  // hold fill: "target" | "timeout" | ...
  std::map<std::string, int> exit_codes_;
};

}  // namespace

int run_repro(const ReproOptions& options) {
  g_signal.store(0);
  // The children are in their own process groups: a Ctrl-C reaches only us, and we stop them.
  http::SignalWatcher watcher([](int signo) { g_signal.store(signo); });
  Repro repro(options);
  return repro.run();
}

std::function<int()> add_repro_command(CLI::App& root) {
  auto o = std::make_shared<ReproOptions>();
  auto* app = root.add_subcommand("repro", "The whole PD reproduction workflow on this machine (docs/repro.md)");
  app->add_option("--model-path", o->model_path, "Model folder")->capture_default_str();
  app->add_option("--load-format", o->load_format, "auto | safetensors | dummy (default: dummy when the folder has no weights)");
  app->add_option("--device", o->device, "Passed to both servers: auto | cuda | cpu")->capture_default_str();
  app->add_option("--json-model-override-args", o->json_model_override_args,
                  "Passed to both servers: JSON object replacing config.json fields")
      ->capture_default_str();
  app->add_option("--output-dir", o->output_dir, "Logs, traces and reports go here")->capture_default_str();
  app->add_option("--num-prompts", o->num_prompts)->capture_default_str()->check(CLI::PositiveNumber);
  app->add_option("--random-input-len,--input-len", o->input_len)->capture_default_str()->check(CLI::PositiveNumber);
  app->add_option("--random-output-len,--output-len", o->output_len)->capture_default_str()->check(CLI::PositiveNumber);
  app->add_option("--max-concurrency", o->max_concurrency)->capture_default_str()->check(CLI::PositiveNumber);
  app->add_option("--prefill-dp-size", o->prefill_dp_size)->capture_default_str()->check(CLI::PositiveNumber);
  app->add_option("--decode-dp-size", o->decode_dp_size)->capture_default_str()->check(CLI::PositiveNumber);
  app->add_option("--prefill-extra-args", o->prefill_extra_args,
                  "More `pdserve serve` flags for the prefill server, as on a command line");
  app->add_option("--decode-extra-args", o->decode_extra_args,
                  "More `pdserve serve` flags for the decode server, e.g. \"--enable-dp-attention --moe-a2a-backend deepep\"");
  app->add_option("--target-running", o->target_running, "Fill until decode's #running-req reaches this (0: min(prompts, concurrency))")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  app->add_option("--fill", o->fill,
                  "How decode's batch is filled: hold (/hold_decode: no decode step until the target, fast) | "
                  "slow-down (SGLang's /slow_down fixed sleep, the published procedure)")
      ->capture_default_str()
      ->transform(CLI::Transformer(std::map<std::string, std::string>{{"slow_down", "slow-down"}}))
      ->check(CLI::IsMember({"hold", "slow-down"}));
  app->add_option("--slow-down-time,--forward-sleep-time", o->slow_down_time, "Seconds each decode batch sleeps during a slow-down fill")
      ->capture_default_str()->check(CLI::PositiveNumber);
  app->add_option("--profile-steps,--num-steps", o->profile_steps, "/start_profile num_steps")->capture_default_str()->check(CLI::Range(2, 1000));
  app->add_option("--ready-timeout", o->ready_timeout, "Seconds each server may take to be ready")->capture_default_str();
  app->add_option("--fill-timeout", o->fill_timeout, "Seconds the fill may take (then profile anyway)")->capture_default_str();
  app->add_option("--profile-timeout", o->profile_timeout)->capture_default_str();
  app->add_option("--bench-timeout", o->bench_timeout)->capture_default_str();
  app->add_option("--shutdown-grace", o->shutdown_grace, "Seconds between SIGTERM and SIGKILL")->capture_default_str();
  return [o] { return run_repro(*o); };
}

}  // namespace pdserve::launch
