// Helpers for the reliability tests: a closed-loop load of greedy requests through the router,
// each answer judged against a single server's output for the same prompt, plus what /proc tells
// about a process (open descriptors, RSS) and what the servers expose about their KV accounting.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "router_e2e/process.h"
#include "test_time.h"

namespace pdserve::test {

using nlohmann::json;

// Descriptors a process holds (sockets included); -1 if /proc cannot be read.
inline int open_fds(pid_t pid) {
  std::error_code ec;
  int n = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec))
    ++n;
  return ec ? -1 : n;
}

// Resident set size in KiB (VmRSS), -1 if unknown.
inline int64_t rss_kib(pid_t pid) {
  const std::string status = read_file("/proc/" + std::to_string(pid) + "/status");
  const auto at = status.find("VmRSS:");
  return at == std::string::npos ? -1 : std::stoll(status.substr(at + 6));
}

// The process's TCP sockets by state ("ESTABLISHED", "CLOSE_WAIT", ...), from its descriptors'
// inodes and /proc/net/tcp{,6}. CLOSE_WAIT is the mark of a leak: the peer closed, we did not.
inline std::map<std::string, int> tcp_states(pid_t pid) {
  std::set<std::string> inodes;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    const std::string target = std::filesystem::read_symlink(it->path(), ec).string();
    if (!ec && target.rfind("socket:[", 0) == 0) inodes.insert(target.substr(8, target.size() - 9));
  }
  static const char* kStates[] = {"?", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT",
                                  "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING"};
  std::map<std::string, int> out;
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::istringstream in(read_file(table));
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream f(line);
      std::string sl, local, remote, st, queues, tr, retr, uid, timeout, inode;
      f >> sl >> local >> remote >> st >> queues >> tr >> retr >> uid >> timeout >> inode;
      if (!inodes.count(inode)) continue;
      const unsigned s = static_cast<unsigned>(std::stoul(st, nullptr, 16));
      ++out[s < std::size(kStates) ? kStates[s] : "?"];
    }
  }
  return out;
}

inline int total(const std::map<std::string, int>& by_state) {
  int n = 0;
  for (const auto& [state, count] : by_state) n += count;
  return n;
}

inline std::string to_text(const std::map<std::string, int>& m) {
  std::string s;
  for (const auto& [k, v] : m) s += (s.empty() ? "" : " ") + k + "=" + std::to_string(v);
  return s;
}

// Short prompts of token ids inside the tiny model's vocabulary (lengths 4..40).
inline std::vector<std::vector<int32_t>> short_prompts(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> id(10, 20000), len(4, 40);
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(n));
  for (auto& p : out) {
    p.resize(static_cast<size_t>(len(rng)));
    for (auto& t : p) t = id(rng);
  }
  return out;
}

constexpr int kOutputTokens = 8;

inline json greedy_body(const std::vector<int32_t>& prompt, bool stream) {
  return {{"input_ids", prompt},
          {"stream", stream},
          {"sampling_params", {{"max_new_tokens", kOutputTokens}, {"temperature", 0}, {"ignore_eos", true}}}};
}

// The message of an error answer in any of the shapes the router and the servers use
// ({"error": {"message"}}, {"error": "..."}, a finish_reason of type abort); empty if none.
inline std::string error_message(const json& j) {
  if (j.is_array() && !j.empty()) return error_message(j[0]);
  if (!j.is_object()) return "";
  if (j.contains("error")) {
    const json& e = j["error"];
    if (e.is_string()) return e.get<std::string>();
    if (e.is_object() && e.contains("message") && e["message"].is_string()) return e["message"].get<std::string>();
  }
  if (j.contains("message") && j["message"].is_string()) return j["message"].get<std::string>();
  if (j.contains("meta_info") && j["meta_info"].contains("finish_reason")) {
    const json& f = j["meta_info"]["finish_reason"];
    if (f.is_object() && f.value("type", "") == "abort") return f.value("message", "abort without a message");
  }
  return "";
}

enum class Outcome { kCorrect, kCleanError, kWrong, kNoAnswer };

struct Judged {
  Outcome outcome;
  std::string detail;  // the error message, or what was wrong
};

// One request; `want` is the single server's output_ids for the prompt. A transport error or a
// timeout is kNoAnswer (a hang or a dropped connection is not a clear error); a 200 with other
// tokens is kWrong; an error status or event with a message is kCleanError.
inline Judged send_and_judge(http::Client& c, const std::string& url, const std::vector<int32_t>& prompt, const json& want,
                             bool stream, std::chrono::seconds timeout) {
  const std::string body = greedy_body(prompt, stream).dump();
  if (!stream) {
    auto r = c.post_json(url, body, timeout);
    if (!r) return {Outcome::kNoAnswer, r.error().message()};
    const json j = json::parse(r->body, nullptr, false);
    if (r->status != 200) {
      const std::string m = error_message(j);
      return m.empty() ? Judged{Outcome::kWrong, "status " + std::to_string(r->status) + " without a message: " + r->body}
                       : Judged{Outcome::kCleanError, m};
    }
    if (const std::string m = error_message(j); !m.empty()) return {Outcome::kCleanError, m};
    if (!j.is_object() || j["output_ids"] != want) return {Outcome::kWrong, "got " + r->body + " want " + want.dump()};
    return {Outcome::kCorrect, ""};
  }
  json ids = json::array();
  std::string stream_error;
  bool done = false;
  auto r = c.stream(http::ClientRequest("POST", url, body, {{"Content-Type", "application/json"}}, timeout),
                    http::StreamCallbacks(nullptr, nullptr, [&](const http::SseEvent& e) {
                      if (e.data == "[DONE]") {
                        done = true;
                        return true;
                      }
                      const json j = json::parse(e.data, nullptr, false);
                      if (const std::string m = error_message(j); !m.empty()) stream_error = m;
                      if (j.is_object() && j.contains("output_ids"))  // streamed ids are the new ones per event
                        for (const auto& t : j["output_ids"]) ids.push_back(t);
                      return true;
                    }));
  if (!r) return stream_error.empty() ? Judged{Outcome::kNoAnswer, r.error().message()} : Judged{Outcome::kCleanError, stream_error};
  if (r->status != 200) {
    const std::string m = error_message(json::parse(r->body, nullptr, false));
    return m.empty() ? Judged{Outcome::kWrong, "status " + std::to_string(r->status) + " without a message: " + r->body}
                     : Judged{Outcome::kCleanError, m};
  }
  if (!stream_error.empty()) return {Outcome::kCleanError, stream_error};
  if (!done) return {Outcome::kWrong, "stream ended without [DONE] or an error event"};
  if (ids != want) return {Outcome::kWrong, "streamed " + ids.dump() + " want " + want.dump()};
  return {Outcome::kCorrect, ""};
}

// The single server's greedy output_ids for every prompt (empty json on failure).
inline std::vector<json> reference_outputs(const std::string& generate_url, const std::vector<std::vector<int32_t>>& prompts) {
  std::vector<json> out(prompts.size());
  std::atomic<size_t> next{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&] {
      http::Client c;
      for (size_t i = next++; i < prompts.size(); i = next++) {
        auto r = c.post_json(generate_url, greedy_body(prompts[i], false).dump(), test::scaled(60));
        if (r && r->status == 200) out[i] = json::parse(r->body, nullptr, false)["output_ids"];
      }
    });
  for (auto& t : threads) t.join();
  return out;
}

struct LoadResult {
  std::atomic<int> sent{0}, correct{0}, clean_error{0}, wrong{0}, no_answer{0};
  std::mutex mu;
  std::map<std::string, int> errors;  // clear error messages (truncated) -> count
  std::vector<std::string> bad;       // the first few kWrong / kNoAnswer details

  int finished() const { return correct + clean_error + wrong + no_answer; }
  std::string summary() {
    std::lock_guard<std::mutex> lock(mu);
    std::string s = "sent " + std::to_string(sent) + ", correct " + std::to_string(correct) + ", clear errors " +
                    std::to_string(clean_error) + ", wrong " + std::to_string(wrong) + ", no answer " + std::to_string(no_answer);
    for (const auto& [m, n] : errors) s += "\n  error x" + std::to_string(n) + ": " + m;
    for (const auto& b : bad) s += "\n  BAD: " + b;
    return s;
  }
};

// `concurrency` clients, each sending request after request (odd ones streamed) until `total`
// were sent, and then until `keep_going` (if given) turns false. Request i uses prompt i % size.
inline void run_load(const std::string& generate_url, const std::vector<std::vector<int32_t>>& prompts, const std::vector<json>& want,
                     int total, int concurrency, LoadResult& result, const std::atomic<bool>* keep_going = nullptr,
                     std::chrono::seconds request_timeout = std::chrono::seconds(90)) {
  std::vector<std::thread> clients;
  for (int t = 0; t < concurrency; ++t)
    clients.emplace_back([&] {
      auto c = std::make_unique<http::Client>();
      for (;;) {
        const int i = result.sent++;
        if (i >= total && !(keep_going && keep_going->load())) {
          --result.sent;
          return;
        }
        const size_t k = static_cast<size_t>(i) % prompts.size();
        const Judged j = send_and_judge(*c, generate_url, prompts[k], want[k], i % 2 == 1, request_timeout);
        {
          std::lock_guard<std::mutex> lock(result.mu);
          switch (j.outcome) {
            case Outcome::kCorrect: ++result.correct; break;
            case Outcome::kCleanError:
              ++result.clean_error;
              // Messages differ only in rid/room numbers: keep the text before them.
              ++result.errors[j.detail.substr(0, j.detail.find(" rid=")).substr(0, 160)];
              break;
            case Outcome::kWrong: ++result.wrong; break;
            case Outcome::kNoAnswer: ++result.no_answer; break;
          }
          if ((j.outcome == Outcome::kWrong || j.outcome == Outcome::kNoAnswer) && result.bad.size() < 5)
            result.bad.push_back(j.detail.substr(0, 400));
        }
        if (j.outcome != Outcome::kCorrect) c = std::make_unique<http::Client>();  // a fresh connection after trouble
      }
    });
  for (auto& t : clients) t.join();
}

// Sum of a Prometheus metric's samples (all label sets); -1 if /metrics does not answer.
inline double metric_sum(const std::string& metrics_url, const std::string& name) {
  http::Client c;
  auto r = c.get(metrics_url, std::chrono::seconds(10));
  if (!r || r->status != 200) return -1;
  double sum = 0;
  std::istringstream in(r->body);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(name, 0) == 0 && line.size() > name.size() && (line[name.size()] == '{' || line[name.size()] == ' '))
      sum += std::stod(line.substr(line.rfind(' ') + 1));
  return sum;
}

// A server's KV and queue accounting from /server_info, summed over DP ranks: pages owned by
// requests (the prefix cache is not a leak), requests in any queue, the PD rooms a prefill still
// tracks, and whether every rank's page accounting adds up.
struct Accounting {
  bool answered = false, consistent = false;
  int64_t pages_in_requests = 0, requests = 0, tracked_rooms = 0;
  std::string text() const {
    return "answered=" + std::to_string(answered) + " consistent=" + std::to_string(consistent) + " pages_in_requests=" +
           std::to_string(pages_in_requests) + " requests=" + std::to_string(requests) + " tracked_rooms=" + std::to_string(tracked_rooms);
  }
  bool all_free() const { return answered && consistent && pages_in_requests == 0 && requests == 0 && tracked_rooms == 0; }
};
inline Accounting accounting(const std::string& base_url) {
  http::Client c;
  auto r = c.get(base_url + "/server_info", std::chrono::seconds(10));
  Accounting a;
  if (!r || r->status != 200) return a;
  const json j = json::parse(r->body, nullptr, false);
  if (!j.is_object() || !j.contains("internal_states")) return a;
  a.answered = true;
  a.consistent = true;
  for (const auto& s : j["internal_states"]) {
    a.pages_in_requests += s["memory_usage"]["kvcache_pages_in_requests"].get<int64_t>();
    a.requests += s["num_running_reqs"].get<int64_t>() + s["num_queue_reqs"].get<int64_t>() + s.value("num_prealloc_reqs", int64_t{0}) +
                  s.value("num_inflight_reqs", int64_t{0}) + s.value("num_transfer_reqs", int64_t{0});
    a.consistent = a.consistent && s["kv_accounting_consistent"].get<bool>();
  }
  if (j.contains("disaggregation"))
    for (const auto& rank : j["disaggregation"]["ranks"]) a.tracked_rooms += rank.value("tracked_rooms", int64_t{0});
  return a;
}

// Polls until the server's accounting is all free (bounded); returns the last reading.
inline Accounting wait_all_free(const std::string& base_url, std::chrono::seconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  Accounting a = accounting(base_url);
  while (!a.all_free() && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    a = accounting(base_url);
  }
  return a;
}

// The router's in-flight count summed over workers (/get_loads "router_load"); -1 if unknown.
inline int64_t router_in_flight(const std::string& router_url) {
  http::Client c;
  auto r = c.get(router_url + "/get_loads", std::chrono::seconds(10));
  if (!r || r->status != 200) return -1;
  const json j = json::parse(r->body, nullptr, false);
  int64_t n = 0;
  for (const auto& w : j.value("workers", json::array())) n += w.value("router_load", int64_t{0});
  return n;
}

// The router's view of one worker ("healthy", "circuit_breaker", ...); null if not listed.
inline json router_worker(const std::string& router_url, const std::string& worker_url) {
  http::Client c;
  auto r = c.get(router_url + "/workers", std::chrono::seconds(10));
  const json all = r && r->status == 200 ? json::parse(r->body, nullptr, false) : json::object();
  for (const auto& w : all.value("workers", json::array()))
    if (w.value("url", "") == worker_url) return w;
  return json();
}

// Polls `pred` every 100 ms until it holds or `limit` passes.
inline bool eventually(const std::function<bool()>& pred, std::chrono::seconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return true;
}

}  // namespace pdserve::test
