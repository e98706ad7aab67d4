// Helpers for the PD end-to-end tests: pdserve processes started with environment variables, a
// request sent to a prefill and a decode at once (as the router does), and the KV accounting each
// server exposes in /server_info.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "server/server_process.h"
#include "test_time.h"

namespace pdserve::test {

using nlohmann::json;

// Every server of these tests: small KV, small chunks (so prompts > 64 tokens are chunked), unless
// `extra` names the flag itself.
inline std::vector<std::string> pd_flags(std::vector<std::string> extra) {
  const std::vector<std::pair<std::string, std::string>> defaults = {
      {"--max-total-tokens", "16384"}, {"--chunked-prefill-size", "64"}, {"--decode-log-interval", "1000"}};
  std::vector<std::string> f;
  for (const auto& [flag, value] : defaults)
    if (std::find(extra.begin(), extra.end(), flag) == extra.end()) f.insert(f.end(), {flag, value});
  f.insert(f.end(), extra.begin(), extra.end());
  return f;
}

using Env = std::vector<std::pair<std::string, std::string>>;

// How each running server was started, so that it can be started again (wait_ready_or_restart).
struct Launch {
  std::vector<std::string> flags;
  std::string name;
  Env env;
};
inline std::map<const ServerProcess*, Launch>& launches() {
  static std::map<const ServerProcess*, Launch> m;
  return m;
}

// Starts a server with `env` set for the child only (set around the fork, then restored).
inline std::unique_ptr<ServerProcess> start_server(std::vector<std::string> flags, const std::string& name, const Env& env = {}) {
  for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
  Launch launch{flags, name, env};
  auto p = std::make_unique<ServerProcess>(pd_flags(std::move(flags)), name);
  for (const auto& [k, v] : env) ::unsetenv(k.c_str());
  launches()[p.get()] = std::move(launch);
  return p;
}

// Waits until `s` is ready. free_port() keeps its ports below the ephemeral range and away from
// other test processes, but a process outside the tests may still bind one first: such a server
// exits with "cannot listen on", and is started again on a fresh port, twice at most.
inline bool wait_ready_or_restart(std::unique_ptr<ServerProcess>& s) {
  for (int attempt = 0;; ++attempt) {
    if (s->wait_ready()) return true;
    auto it = launches().find(s.get());
    if (attempt == 2 || it == launches().end() || s->log().find("cannot listen on") == std::string::npos) return false;
    Launch l = std::move(it->second);
    launches().erase(it);
    s = start_server(l.flags, l.name + "_again", l.env);
  }
}

struct Reply {
  int status = 0;
  json body;
  std::string error;  // transport error
};

// timeout_s stretches with PDSERVE_TEST_TIME_SCALE like the servers' own deadlines, so that a
// slow (instrumented) server's clean error reaches the test instead of a client-side timeout.
inline Reply post(const std::string& url, const json& body, int timeout_s = 120) {
  http::Client c;
  auto r = c.post_json(url, body.dump(), scaled(timeout_s));
  Reply out;
  if (!r) {
    out.error = r.error().message();
    return out;
  }
  out.status = r->status;
  out.body = json::parse(r->body, nullptr, false);
  return out;
}

inline json get_json(const std::string& url) {
  http::Client c;
  auto r = c.get(url, std::chrono::seconds(30));
  if (!r || r->status != 200) return json();
  return json::parse(r->body, nullptr, false);
}

// The request the router would send to both sides.
inline json pd_body(const std::vector<int32_t>& ids, int max_new_tokens, int bootstrap_port, uint64_t room) {
  return {{"input_ids", ids},
          {"sampling_params", {{"max_new_tokens", max_new_tokens}, {"temperature", 0}}},
          {"bootstrap_host", "127.0.0.1"},
          {"bootstrap_port", bootstrap_port},
          {"bootstrap_room", room}};
}

// Sends `body` to prefill and decode concurrently; returns {prefill reply, decode reply}.
inline std::pair<Reply, Reply> pd_generate(const ServerProcess& p, const ServerProcess& d, const json& body,
                                           int timeout_s = 120) {
  auto pf = std::async(std::launch::async, [&] { return post(p.url("/generate"), body, timeout_s); });
  Reply dr = post(d.url("/generate"), body, timeout_s);
  return {pf.get(), dr};
}

// KV pages owned by requests, summed over DP ranks (the prefix cache is not a leak), plus queued
// and running requests; -1 when the server does not answer.
struct KvState {
  int64_t in_requests = -1, busy = -1;
  bool consistent = false;
};
inline KvState kv_state(const ServerProcess& s) {
  json j = get_json(s.url("/server_info"));
  KvState k;
  if (!j.is_object() || !j.contains("internal_states")) return k;
  k.in_requests = 0;
  k.busy = 0;
  k.consistent = true;
  for (const auto& r : j["internal_states"]) {
    k.in_requests += r["memory_usage"]["kvcache_pages_in_requests"].get<int64_t>();
    k.busy += r["num_running_reqs"].get<int64_t>() + r["num_queue_reqs"].get<int64_t>() +
              r.value("num_prealloc_reqs", int64_t{0}) + r.value("num_inflight_reqs", int64_t{0}) +
              r.value("num_transfer_reqs", int64_t{0});
    k.consistent = k.consistent && r["kv_accounting_consistent"].get<bool>();
  }
  return k;
}

// Sum over DP ranks of one internal_state counter ("num_transfer_reqs", ...).
inline int64_t queue_count(const ServerProcess& s, const std::string& field) {
  json j = get_json(s.url("/server_info"));
  int64_t n = 0;
  if (j.is_object() && j.contains("internal_states"))
    for (const auto& r : j["internal_states"]) n += r.value(field, int64_t{0});
  return n;
}

// Waits until no page is owned by a request and nothing is queued or running.
inline bool wait_all_free(const ServerProcess& s, std::chrono::seconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    const KvState k = kv_state(s);
    if (k.consistent && k.in_requests == 0 && k.busy == 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return false;
}

// Called from concurrent client threads (std::async): the generator is shared, so it is locked. A
// data race here once gave two concurrent requests the same room, and the prefill then (rightly)
// refused to pair an 87-token prompt with the decode's pages for a 3-token one.
inline uint64_t random_room() {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mu);
  return rng() >> 1;  // [0, 2^63)
}

}  // namespace pdserve::test
