// The router in-process against stub workers on loopback: plain and PD forwarding, the bootstrap
// fields, streaming relay, retries, pass-through of client errors, limits, aborts, health, the
// worker API and /metrics.
#include <condition_variable>
#include <thread>

#include <gtest/gtest.h>

#include "http/client.h"
#include "router/router.h"
#include "stub_worker.h"

namespace pdserve::router {
namespace {

using json = nlohmann::json;
using testing::StubWorker;
using namespace std::chrono_literals;

RouterArgs base_args() {
  RouterArgs a;
  a.host = "127.0.0.1";
  a.port = 0;
  a.prometheus_port = -1;
  a.policy = "round_robin";
  a.health_check_interval_secs = 1;
  a.health_failure_threshold = 1;
  a.health_success_threshold = 1;
  a.health_check_timeout_secs = 1;
  a.worker_startup_check_interval = 1;
  a.worker_startup_timeout_secs = 10;
  a.retry_initial_backoff_ms = 1;
  a.retry_max_backoff_ms = 5;
  return a;
}

RouterArgs pd_args(std::vector<std::vector<std::string>> prefill, std::vector<std::string> decode) {
  RouterArgs a = base_args();
  a.pd_disaggregation = true;
  a.prefill_groups = std::move(prefill);
  a.decode = std::move(decode);
  return a;
}

std::unique_ptr<Router> start(RouterArgs a) {
  auto st = a.resolve();
  EXPECT_TRUE(st) << (st ? "" : st.error().message());
  auto r = Router::create(a);
  EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message());
  auto s = (*r)->start();
  EXPECT_TRUE(s) << (s ? "" : s.error().message());
  return std::move(*r);
}

std::string url(const Router& r, const std::string& path) { return "http://127.0.0.1:" + std::to_string(r.port()) + path; }

// POSTs a streamed /generate through the router; the events' data land in `events`, and
// `on_event` (if any) runs after each one.
Result<http::Response> stream_events(const Router& r, const std::string& body, std::vector<std::string>& events,
                                     std::function<void()> on_event = nullptr) {
  http::Client c;
  return c.stream(http::ClientRequest("POST", url(r, "/generate"), body, {{"Content-Type", "application/json"}}, 20s),
                  http::StreamCallbacks(nullptr, nullptr, [&](const http::SseEvent& e) {
                    events.push_back(e.data);
                    if (on_event) on_event();
                    return true;
                  }));
}

TEST(RouterProxy, PlainRoundRobinPassesAnswersThrough) {
  StubWorker a("A"), b("B");
  auto args = base_args();
  args.worker_urls = {a.url(), b.url()};
  auto r = start(args);
  http::Client c;
  std::map<std::string, int> seen;
  for (int i = 0; i < 10; ++i) {
    auto resp = c.post_json(url(*r, "/generate"), R"({"text":"hi","sampling_params":{"max_new_tokens":1}})");
    ASSERT_TRUE(resp);
    ASSERT_EQ(resp->status, 200) << resp->body;
    ++seen[json::parse(resp->body)["text"]];
  }
  EXPECT_EQ(seen["A"], 5);
  EXPECT_EQ(seen["B"], 5);
  // The body reached the worker unchanged but for the rid the router adds for aborts.
  json sent = json::parse(a.got("/generate")[0].body);
  EXPECT_EQ(sent["text"], "hi");
  EXPECT_EQ(sent["sampling_params"]["max_new_tokens"], 1);
  EXPECT_TRUE(sent["rid"].is_string());
  EXPECT_FALSE(sent.contains("bootstrap_room"));
}

TEST(RouterProxy, PdFanOutSendsTheSameBodyWithBootstrapFields) {
  StubWorker p("P"), d1("D1"), d2("D2");
  auto args = pd_args({{p.url(), "8998"}}, {d1.url(), d2.url()});
  auto r = start(args);
  http::Client c;
  auto resp = c.post_json(url(*r, "/generate"), R"({"text":"hello","sampling_params":{"temperature":0}})");
  ASSERT_TRUE(resp);
  ASSERT_EQ(resp->status, 200);
  EXPECT_EQ(json::parse(resp->body)["text"], "D1");  // the decode's answer
  ASSERT_EQ(p.count("/generate"), 1u);
  ASSERT_EQ(d1.count("/generate"), 1u);
  EXPECT_EQ(p.got("/generate")[0].body, d1.got("/generate")[0].body);
  json sent = json::parse(p.got("/generate")[0].body);
  EXPECT_EQ(sent["bootstrap_host"], "127.0.0.1");
  EXPECT_EQ(sent["bootstrap_port"], 8998);
  EXPECT_TRUE(sent["bootstrap_room"].is_number_unsigned());
  EXPECT_LT(sent["bootstrap_room"].get<uint64_t>(), uint64_t{1} << 63);

  // A batch gets one room per item; the second request goes to the other decode (round robin).
  resp = c.post_json(url(*r, "/generate"), R"({"text":["a","b","c"]})");
  ASSERT_TRUE(resp);
  ASSERT_EQ(d2.count("/generate"), 1u);
  json batch = json::parse(d2.got("/generate")[0].body);
  ASSERT_EQ(batch["bootstrap_room"].size(), 3u);
  EXPECT_NE(batch["bootstrap_room"][0], batch["bootstrap_room"][1]);
  EXPECT_EQ(batch["bootstrap_port"], json({8998, 8998, 8998}));
  EXPECT_EQ(batch["rid"].size(), 3u);

  // OpenAI routes: scalar fields.
  resp = c.post_json(url(*r, "/v1/chat/completions"), R"({"messages":[{"role":"user","content":"x"}]})");
  ASSERT_TRUE(resp);
  json chat = json::parse(p.got("/v1/chat/completions")[0].body);
  EXPECT_TRUE(chat["bootstrap_room"].is_number());
}

TEST(RouterProxy, PdMergesInputLogprobs) {
  StubWorker p("P", [](const http::Request&, std::shared_ptr<http::Responder> r) {
    r->respond(200, R"({"text":"","meta_info":{"input_token_logprobs":[[null,1,null]]}})");
  });
  StubWorker d("D", [](const http::Request&, std::shared_ptr<http::Responder> r) {
    r->respond(200, R"({"text":"out","meta_info":{"input_token_logprobs":[[-1.0,2,null]]}})");
  });
  auto args = pd_args({{p.url()}}, {d.url()});
  auto r = start(args);
  http::Client c;
  auto resp = c.post_json(url(*r, "/generate"), R"({"text":"x","return_logprob":true})");
  ASSERT_TRUE(resp);
  json out = json::parse(resp->body);
  EXPECT_EQ(out["meta_info"]["input_token_logprobs"], json::parse("[[null,1,null],[-1.0,2,null]]"));
  EXPECT_TRUE(json::parse(p.got("/generate")[0].body)["bootstrap_port"].is_null());
}

// The decode streams one event, then waits until the client has seen it: through a router that
// buffered the stream the client would see nothing until the decode gave up waiting.
TEST(RouterProxy, PdStreamRelaysEventsAsTheyCome) {
  std::mutex mu;
  std::condition_variable cv;
  bool client_saw_first = false;
  std::atomic<bool> relayed_in_time{false};
  std::vector<std::thread> senders;
  StubWorker p("P");
  StubWorker d("D", [&](const http::Request&, std::shared_ptr<http::Responder> r) {
    r->start_stream(200);
    r->send_chunk(http::sse_event(R"({"text":"first"})"));
    senders.emplace_back([&, r] {
      std::unique_lock lock(mu);
      relayed_in_time = cv.wait_for(lock, 5s, [&] { return client_saw_first; });
      r->send_chunk(http::sse_event(R"({"text":"second"})"));
      r->send_chunk(http::sse_event("[DONE]"));
      r->end_stream();
    });
  });
  auto args = pd_args({{p.url()}}, {d.url()});
  auto r = start(args);
  std::vector<std::string> events;
  auto resp = stream_events(*r, R"({"text":"x","stream":true})", events, [&] {
    std::lock_guard lock(mu);
    client_saw_first = true;
    cv.notify_all();
  });
  for (auto& t : senders) t.join();
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->status, 200);
  EXPECT_TRUE(relayed_in_time);
  EXPECT_EQ(events, (std::vector<std::string>{R"({"text":"first"})", R"({"text":"second"})", "[DONE]"}));
}

TEST(RouterProxy, PlainStreamIsRelayed) {
  StubWorker w("W");
  auto args = base_args();
  args.worker_urls = {w.url()};
  auto r = start(args);
  std::vector<std::string> events;
  auto resp = stream_events(*r, R"({"text":"x","stream":true})", events);
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->status, 200);
  EXPECT_EQ(resp->headers.get_or("content-type", ""), "text/event-stream");
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(json::parse(events[2])["text"], "W2");
  EXPECT_EQ(events[3], "[DONE]");
}

// A client that reads slowly: the router must slow the worker down rather than queue the whole
// stream (past 16 MiB queued the server would drop the client).
TEST(RouterProxy, SlowClientBackpressuresTheWorker) {
  constexpr std::size_t kTotal = 40u << 20, kChunk = 64u << 10;
  std::vector<std::thread> producers;
  StubWorker w("W", [&](const http::Request&, std::shared_ptr<http::Responder> r) {
    r->start_stream(200, "application/octet-stream");
    producers.emplace_back([r] {
      for (std::size_t sent = 0; sent < kTotal && r->is_open(); sent += kChunk) {
        while (r->is_open() && r->queued_bytes() > (4u << 20)) std::this_thread::sleep_for(1ms);
        r->send_chunk(std::string(kChunk, 'x'));
      }
      r->end_stream();
    });
  });
  auto args = base_args();
  args.worker_urls = {w.url()};
  auto r = start(args);
  http::Client c;
  std::size_t got = 0, next_pause = 0;
  // About 20 MB/s: far slower than the stub writes.
  auto resp = c.stream(http::ClientRequest("POST", url(*r, "/generate"), R"({"stream":true})", {}, 60s),
                       http::StreamCallbacks(nullptr, [&](std::string_view d) {
                         got += d.size();
                         if (got >= next_pause) {
                           next_pause += 1u << 20;
                           std::this_thread::sleep_for(50ms);
                         }
                         return true;
                       }, nullptr));
  for (auto& t : producers) t.join();
  ASSERT_TRUE(resp) << resp.error().message();
  EXPECT_EQ(got, kTotal);
}

TEST(RouterProxy, PdStreamWithLogprobsPrependsPrefillLogprobs) {
  StubWorker p("P", [](const http::Request&, std::shared_ptr<http::Responder> r) {
    r->start_stream(200);
    r->send_chunk(http::sse_event(R"({"meta_info":{"input_token_logprobs":[[null,5,null]]}})"));
    r->send_chunk(http::sse_event("[DONE]"));
    r->end_stream();
  });
  StubWorker d("D", [](const http::Request&, std::shared_ptr<http::Responder> r) {
    r->start_stream(200);
    r->send_chunk(http::sse_event(R"({"text":"a","meta_info":{"input_token_logprobs":[]}})"));
    r->send_chunk(http::sse_event("[DONE]"));
    r->end_stream();
  });
  auto args = pd_args({{p.url()}}, {d.url()});
  auto r = start(args);
  std::vector<std::string> events;
  auto resp = stream_events(*r, R"({"text":"x","stream":true,"return_logprob":true})", events);
  ASSERT_TRUE(resp);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(json::parse(events[0])["meta_info"]["input_token_logprobs"], json::parse("[[null,5,null]]"));
  EXPECT_EQ(events[1], "[DONE]");
}

TEST(RouterProxy, RetriesOn5xxWithAnotherWorker) {
  StubWorker bad("BAD", [](const http::Request&, std::shared_ptr<http::Responder> r) { r->respond_error(503, "busy"); });
  StubWorker good("GOOD");
  auto args = base_args();
  args.worker_urls = {bad.url(), good.url()};
  auto r = start(args);
  http::Client c;
  for (int i = 0; i < 6; ++i) {
    auto resp = c.post_json(url(*r, "/generate"), R"({"text":"x"})");
    ASSERT_TRUE(resp);
    EXPECT_EQ(resp->status, 200);
    EXPECT_EQ(json::parse(resp->body)["text"], "GOOD");
  }
  EXPECT_GE(bad.count("/generate"), 3u);
  EXPECT_GE(r->metrics().counter("sgl_router_retries_total", {{"route", "/generate"}}), 3);
}

TEST(RouterProxy, PdPrefillErrorIsRetriedOnAnotherPair) {
  StubWorker bad("PBAD", [](const http::Request&, std::shared_ptr<http::Responder> r) { r->respond_error(500, "boom"); });
  StubWorker good("PGOOD"), d("D");
  auto args = pd_args({{bad.url()}, {good.url()}}, {d.url()});
  auto r = start(args);
  http::Client c;
  for (int i = 0; i < 4; ++i) {
    auto resp = c.post_json(url(*r, "/generate"), R"({"text":"x"})");
    ASSERT_TRUE(resp);
    EXPECT_EQ(resp->status, 200) << resp->body;
  }
  EXPECT_GE(bad.count("/generate"), 1u);
  // The decode half of a failed pair was told to give up (its KV would never come).
  EXPECT_GE(d.count("/abort_request"), 1u);
}

TEST(RouterProxy, ClientErrorsPassThroughWithoutRetry) {
  const std::string body = R"({"error":{"message":"temperature must be >= 0","code":400}})";
  StubWorker w("W", [&](const http::Request&, std::shared_ptr<http::Responder> r) { r->respond(400, body); });
  auto args = base_args();
  args.worker_urls = {w.url()};
  auto r = start(args);
  http::Client c;
  auto resp = c.post_json(url(*r, "/generate"), R"({"text":"x","sampling_params":{"temperature":-1}})");
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->status, 400);
  EXPECT_EQ(resp->body, body);
  EXPECT_EQ(w.count("/generate"), 1u);
  auto workers = json::parse(c.get(url(*r, "/workers"))->body);
  EXPECT_EQ(workers["workers"][0]["healthy"], true);
  EXPECT_EQ(workers["workers"][0]["circuit_breaker"], "closed");
}

TEST(RouterProxy, BadInputAndLimits) {
  StubWorker w("W");
  auto args = base_args();
  args.worker_urls = {w.url()};
  args.max_payload_size = 1000;
  args.api_key = "secret";
  auto r = start(args);
  http::Client c;
  http::Headers auth{{"Authorization", "Bearer secret"}, {"Content-Type", "application/json"}};
  auto resp = c.request("POST", url(*r, "/generate"), R"({"text":"x"})", {{"Content-Type", "application/json"}});
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->status, 401);
  resp = c.request("POST", url(*r, "/generate"), "{not json", auth);
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->status, 400);
  resp = c.request("POST", url(*r, "/generate"), std::string(2000, ' '), auth);
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->status, 413);
  resp = c.request("POST", url(*r, "/generate"), R"({"text":"x"})", auth);
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->status, 200);
  EXPECT_EQ(w.got("/generate").back().headers.get_or("authorization", ""), "Bearer secret");
  EXPECT_EQ(c.get(url(*r, "/health"))->status, 200);  // probes need no key
}

TEST(RouterProxy, NoAvailableWorkersIs503) {
  StubWorker w("W");
  auto args = base_args();
  args.worker_urls = {w.url()};
  args.disable_retries = true;
  auto r = start(args);
  r->workers().all()[0]->set_healthy(false);
  http::Client c;
  auto resp = c.post_json(url(*r, "/generate"), R"({"text":"x"})");
  ASSERT_TRUE(resp);
  EXPECT_EQ(resp->status, 503);
  EXPECT_NE(resp->body.find("No available workers"), std::string::npos);
  EXPECT_EQ(c.get(url(*r, "/readiness"))->status, 503);
}

TEST(RouterProxy, ConcurrencyLimitQueuesThenRejects) {
  std::mutex mu;
  std::vector<std::shared_ptr<http::Responder>> held;
  StubWorker w("W", [&](const http::Request&, std::shared_ptr<http::Responder> r) {
    std::lock_guard lock(mu);
    held.push_back(std::move(r));
  });
  auto args = base_args();
  args.worker_urls = {w.url()};
  args.max_concurrent_requests = 1;
  args.queue_size = 1;
  auto r = start(args);
  std::vector<int> statuses(3, 0);
  std::vector<std::thread> clients;
  for (int i = 0; i < 3; ++i) {
    clients.emplace_back([&, i] {
      std::this_thread::sleep_for(std::chrono::milliseconds(100 * i));  // in order: run, queue, reject
      http::Client c;
      auto resp = c.post_json(url(*r, "/generate"), R"({"text":"x"})");
      statuses[i] = resp ? resp->status : -1;
    });
  }
  clients[2].join();
  EXPECT_EQ(statuses[2], 429);
  // Answer the running one; the queued one then reaches the worker and is answered too.
  for (int round = 0; round < 2; ++round) {
    for (int k = 0; k < 100; ++k) {
      {
        std::lock_guard lock(mu);
        if (!held.empty()) break;
      }
      std::this_thread::sleep_for(20ms);
    }
    std::lock_guard lock(mu);
    ASSERT_FALSE(held.empty());
    held.back()->respond(200, R"({"text":"W"})");
    held.clear();
  }
  clients[0].join();
  clients[1].join();
  EXPECT_EQ(statuses[0], 200);
  EXPECT_EQ(statuses[1], 200);
}

TEST(RouterProxy, ClientDisconnectAbortsOnBothWorkers) {
  std::mutex mu;
  std::vector<std::shared_ptr<http::Responder>> held;
  auto hold = [&](const http::Request&, std::shared_ptr<http::Responder> r) {
    r->start_stream(200);
    r->send_chunk(http::sse_event(R"({"text":"first"})"));
    std::lock_guard lock(mu);
    held.push_back(std::move(r));
  };
  StubWorker p("P", hold), d("D", hold);
  auto args = pd_args({{p.url()}}, {d.url()});
  auto r = start(args);
  http::Client c;
  auto resp = c.stream(http::ClientRequest("POST", url(*r, "/generate"), R"({"text":"x","stream":true})"),
                       http::StreamCallbacks(nullptr, nullptr, [&](const http::SseEvent&) { return false; }));
  ASSERT_TRUE(resp);
  for (int i = 0; i < 100 && (p.count("/abort_request") == 0 || d.count("/abort_request") == 0); ++i)
    std::this_thread::sleep_for(20ms);
  ASSERT_EQ(p.count("/abort_request"), 1u);
  ASSERT_EQ(d.count("/abort_request"), 1u);
  const std::string rid = json::parse(d.got("/generate")[0].body)["rid"];
  EXPECT_EQ(json::parse(d.got("/abort_request")[0].body)["rid"], rid);
  EXPECT_EQ(json::parse(p.got("/abort_request")[0].body)["rid"], rid);
  std::lock_guard lock(mu);
  for (auto& h : held) h->end_stream();
}

TEST(RouterProxy, HealthChecksMarkWorkersDownAndUp) {
  StubWorker a("A"), b("B");
  auto args = base_args();
  args.worker_urls = {a.url(), b.url()};
  auto r = start(args);
  a.health_status = 503;
  auto wait_for = [&](bool healthy) {
    for (int i = 0; i < 50; ++i) {
      if (r->workers().all()[0]->healthy() == healthy) return true;
      std::this_thread::sleep_for(100ms);
    }
    return false;
  };
  ASSERT_TRUE(wait_for(false));
  http::Client c;
  for (int i = 0; i < 4; ++i) EXPECT_EQ(json::parse(c.post_json(url(*r, "/generate"), R"({"text":"x"})")->body)["text"], "B");
  a.health_status = 200;
  ASSERT_TRUE(wait_for(true));
}

TEST(RouterProxy, WorkerApiInfoRoutesAndMetrics) {
  StubWorker p("P"), d("D"), d2("D2");
  auto args = pd_args({{p.url(), "9000"}}, {d.url()});
  auto r = start(args);
  http::Client c;
  auto add = c.post_json(url(*r, "/workers"), json{{"url", d2.url()}, {"worker_type", "decode"}}.dump());
  ASSERT_TRUE(add);
  EXPECT_EQ(add->status, 200) << add->body;
  EXPECT_EQ(c.post_json(url(*r, "/workers"), json{{"url", d2.url()}, {"worker_type", "regular"}}.dump())->status, 400);
  auto typed = c.post_json(url(*r, "/workers"), json{{"url", d2.url()}, {"worker_type", 7}}.dump());
  ASSERT_TRUE(typed);
  EXPECT_EQ(typed->status, 400);  // a wrong type is a clear 400, not a dropped connection
  EXPECT_NE(typed->body.find("'worker_type' must be a string"), std::string::npos) << typed->body;
  EXPECT_EQ(json::parse(c.get(url(*r, "/workers"))->body)["total"], 3);

  auto info = json::parse(c.get(url(*r, "/server_info"))->body);
  EXPECT_EQ(info["prefill"].size(), 1u);
  EXPECT_EQ(info["decode"].size(), 2u);
  EXPECT_EQ(info["internal_states"].size(), 2u);  // one per decode server
  EXPECT_EQ(json::parse(c.get(url(*r, "/v1/models"))->body)["data"][0]["id"], "P");
  EXPECT_EQ(c.post_json(url(*r, "/flush_cache"), "")->status, 200);
  EXPECT_EQ(p.count("/flush_cache") + d.count("/flush_cache") + d2.count("/flush_cache"), 3u);
  EXPECT_EQ(json::parse(c.get(url(*r, "/get_loads"))->body)["workers"].size(), 3u);
  EXPECT_EQ(c.get(url(*r, "/health_generate"))->status, 200);

  auto del = c.request("DELETE", url(*r, "/workers?url=" + d2.url()));
  ASSERT_TRUE(del);
  EXPECT_EQ(del->status, 200) << del->body;
  EXPECT_EQ(c.request("DELETE", url(*r, "/workers/" + d2.url()))->status, 404);
  EXPECT_EQ(json::parse(c.get(url(*r, "/workers"))->body)["total"], 2);

  ASSERT_EQ(c.post_json(url(*r, "/generate"), R"({"text":"x"})")->status, 200);
  auto metrics = c.get(url(*r, "/metrics"));
  ASSERT_TRUE(metrics);
  for (const char* name : {"sgl_router_requests_total{route=\"/generate\"} 1", "sgl_router_pd_requests_total",
                           "sgl_router_worker_health{worker=", "sgl_router_active_workers 2",
                           "sgl_router_pd_prefill_requests_total{worker="})
    EXPECT_NE(metrics->body.find(name), std::string::npos) << name;
}

}  // namespace
}  // namespace pdserve::router
