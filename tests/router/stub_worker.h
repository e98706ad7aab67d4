// A stand-in for an SGLang worker (plain, prefill or decode) built on http::Server: it records
// every request it gets and answers generation routes through a test-supplied function, so the
// router's fan-out, retries and relaying are checked without a model. Also used by the router
// benchmark as the "fast upstream".
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "http/server.h"
#include "http/sse.h"

namespace pdserve::router::testing {

class StubWorker {
 public:
  using Gen = std::function<void(const http::Request&, std::shared_ptr<http::Responder>)>;

  // `name` appears in the default answers; `gen` answers /generate and the OpenAI routes.
  explicit StubWorker(std::string name, Gen gen = nullptr, int io_threads = 1) : name_(std::move(name)) {
    gen_ = gen ? std::move(gen) : default_gen(name_);
    http::ServerOptions o;
    o.io_threads = io_threads;
    o.max_connections = 100'000;
    server_ = std::make_unique<http::Server>(o);
    for (const char* path : {"/generate", "/v1/completions", "/v1/chat/completions"}) {
      server_->route("POST", path, [this](http::Request req, std::shared_ptr<http::Responder> r) {
        record(req);
        gen_(req, std::move(r));
      });
    }
    server_->route("GET", "/health", [this](http::Request, std::shared_ptr<http::Responder> r) {
      r->respond(health_status.load(), "", "text/plain");
    });
    server_->route("GET", "/health_generate", [this](http::Request req, std::shared_ptr<http::Responder> r) {
      record(req);
      r->respond(health_status.load(), "", "text/plain");
    });
    auto ok = [this](http::Request req, std::shared_ptr<http::Responder> r) {
      record(req);
      r->respond(200, "{}");
    };
    server_->route("POST", "/abort_request", ok);
    server_->route("POST", "/flush_cache", ok);
    server_->route("GET", "/get_load", [this](http::Request req, std::shared_ptr<http::Responder> r) {
      record(req);
      r->respond(200, R"([{"dp_rank":0,"num_reqs":0,"num_waiting_reqs":0,"num_tokens":0}])");
    });
    server_->route("GET", "/server_info", [this](http::Request req, std::shared_ptr<http::Responder> r) {
      record(req);
      r->respond(200, nlohmann::json{{"name", name_}, {"internal_states", {{{"last_gen_throughput", 1.5}}}}}.dump());
    });
    server_->route("GET", "/v1/models", [this](http::Request req, std::shared_ptr<http::Responder> r) {
      record(req);
      r->respond(200, nlohmann::json{{"object", "list"}, {"data", {{{"id", name_}, {"object", "model"}}}}}.dump());
    });
    (void)server_->start();
  }
  ~StubWorker() { server_->stop(std::chrono::milliseconds(0)); }

  std::string url() const { return "http://127.0.0.1:" + std::to_string(server_->port()); }
  const std::string& name() const { return name_; }
  void stop() { server_->stop(std::chrono::milliseconds(0)); }

  // Requests received on `path` (all paths when empty).
  std::vector<http::Request> got(const std::string& path = "") const {
    std::lock_guard lock(mu_);
    std::vector<http::Request> out;
    for (const auto& r : requests_)
      if (path.empty() || r.path == path) out.push_back(r);
    return out;
  }
  std::size_t count(const std::string& path) const { return got(path).size(); }

  std::atomic<int> health_status{200};
  std::atomic<bool> recording{true};  // off for benchmarks (no memory growth)

  // {"text": "<name>", "meta_info": {"id": rid}} or, with "stream": true, three SSE events + [DONE].
  static Gen default_gen(std::string name) {
    return [name](const http::Request& req, std::shared_ptr<http::Responder> r) {
      auto body = nlohmann::json::parse(req.body, nullptr, false);
      nlohmann::json rid = body.is_object() && body.contains("rid") ? body["rid"] : nlohmann::json(nullptr);
      if (body.is_object() && body.value("stream", false)) {
        r->start_stream(200);
        for (int i = 0; i < 3; ++i)
          r->send_chunk(http::sse_event(nlohmann::json{{"text", name + std::to_string(i)}, {"index", 0}}.dump()));
        r->send_chunk(http::sse_event("[DONE]"));
        r->end_stream();
        return;
      }
      r->respond(200, nlohmann::json{{"text", name}, {"meta_info", {{"id", rid}}}}.dump());
    };
  }

 private:
  void record(const http::Request& req) {
    if (!recording) return;
    std::lock_guard lock(mu_);
    requests_.push_back(req);
  }

  std::string name_;
  Gen gen_;
  std::unique_ptr<http::Server> server_;
  mutable std::mutex mu_;
  std::vector<http::Request> requests_;
};

}  // namespace pdserve::router::testing
