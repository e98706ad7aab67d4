// An in-process stand-in for a model server's /generate: answers every request at once with
// max_new_tokens SSE chunks (optionally after a delay), so a test measures the benchmark client
// alone and can count how many streams are open at the same time.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "http/server.h"
#include "http/sse.h"

namespace pdserve::bench::test {

class StubServer {
 public:
  explicit StubServer(std::chrono::milliseconds delay = std::chrono::milliseconds(0), int io_threads = 2) : delay_(delay) {
    http::ServerOptions o;
    o.io_threads = io_threads;
    server_ = std::make_unique<http::Server>(o);
    server_->route("POST", "/generate", [this](http::Request req, std::shared_ptr<http::Responder> r) {
      auto j = nlohmann::json::parse(req.body, nullptr, false);
      const int n = j.is_object() ? j["sampling_params"].value("max_new_tokens", 1) : 1;
      const int now = ++in_flight_;
      int seen = max_in_flight_.load();
      while (now > seen && !max_in_flight_.compare_exchange_weak(seen, now)) {
      }
      ++requests_;
      if (delay_.count() == 0) return answer(r, n);
      ++answering_;
      std::thread([this, r, n] {
        std::this_thread::sleep_for(delay_);
        answer(r, n);
        --answering_;
      }).detach();
    });
    (void)server_->start();
  }
  // A delayed answer's thread may still be ending its stream after the client saw [DONE]: wait for
  // it (bounded) before the server goes, or its Responder would wake a session whose io_context
  // is gone (ASan: heap-use-after-free in a strand's destructor, bench_tests).
  ~StubServer() {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (answering_.load() > 0 && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    server_->stop(std::chrono::milliseconds(100));
  }

  std::string url() const { return "http://127.0.0.1:" + std::to_string(server_->port()); }
  int max_in_flight() const { return max_in_flight_; }
  int requests() const { return requests_; }

 private:
  void answer(const std::shared_ptr<http::Responder>& r, int n) {
    r->start_stream(200);
    std::string text;
    for (int i = 1; i <= n; ++i) {
      text += "x";
      nlohmann::json c{{"text", text}, {"meta_info", {{"completion_tokens", i}}}};
      if (i == n) c["meta_info"]["finish_reason"] = {{"type", "length"}, {"length", n}};
      r->send_chunk(http::sse_event(c.dump()));
    }
    --in_flight_;
    r->send_chunk(http::sse_event("[DONE]"));
    r->end_stream();
  }

  std::chrono::milliseconds delay_;
  std::unique_ptr<http::Server> server_;
  std::atomic<int> in_flight_{0}, max_in_flight_{0}, requests_{0}, answering_{0};
};

}  // namespace pdserve::bench::test
