// Client side: URL parsing, headers, the async pool under many concurrent requests, reuse and
// reconnects, timeouts, IPv6, and the signal watcher.
#include <atomic>
#include <csignal>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <fmt/format.h>
#include <gtest/gtest.h>

#include "http/client.h"
#include "http/server.h"
#include "http/signals.h"
#include "http/sse.h"
#include "http/test_util.h"

namespace pdserve::http {
namespace {

using namespace std::chrono_literals;
namespace asio = boost::asio;

TEST(Url, Parses) {
  auto u = Url::parse("http://127.0.0.1:30000/generate?x=1#frag");
  ASSERT_TRUE(u.has_value());
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->port, 30000);
  EXPECT_EQ(u->target, "/generate?x=1");
  EXPECT_EQ(u->authority(), "127.0.0.1:30000");

  u = Url::parse("HTTP://[::1]:8000");
  ASSERT_TRUE(u.has_value());
  EXPECT_EQ(u->host, "::1");
  EXPECT_EQ(u->target, "/");
  EXPECT_EQ(u->authority(), "[::1]:8000");

  u = Url::parse("http://localhost?q");
  ASSERT_TRUE(u.has_value());
  EXPECT_EQ(u->port, 80);
  EXPECT_EQ(u->target, "/?q");

  EXPECT_EQ(Url::parse("https://x/").error().code(), ErrorCode::kUnsupported);
  for (const char* bad : {"ftp://x", "http://", "http://:80/", "http://h:0/", "http://h:65536/",
                          "http://h:8x/", "http://::1/", "http://[::1/", "http://[::1]x/", "x"}) {
    EXPECT_FALSE(Url::parse(bad).has_value()) << bad;
  }
}

TEST(Headers, CaseInsensitive) {
  Headers h{{"Content-Type", "a"}, {"X-Multi", "1"}, {"x-multi", "2"}};
  EXPECT_EQ(h.get_or("content-type", ""), "a");
  EXPECT_EQ(h.get_or("X-MULTI", ""), "1");
  h.set("x-MULTI", "3");
  EXPECT_EQ(h.size(), 2u);
  EXPECT_EQ(h.get_or("x-multi", ""), "3");
  h.remove("CONTENT-type");
  EXPECT_FALSE(h.contains("content-type"));
  EXPECT_EQ(reason_phrase(413), "Payload Too Large");
}

// 200 requests are all in flight at once (the handler answers none until all have arrived), on a
// server with 2 I/O threads, from 200 coroutines on one client thread.
TEST(AsyncClient, TwoHundredConcurrentConnections) {
  constexpr int kN = 200;
  ServerOptions o;
  o.io_threads = 2;
  Server server(o);
  std::mutex mu;
  std::vector<std::shared_ptr<Responder>> waiting;
  server.route("GET", "/gate", [&](Request req, std::shared_ptr<Responder> r) {
    std::vector<std::shared_ptr<Responder>> release;
    {
      std::lock_guard lock(mu);
      waiting.push_back(std::move(r));
      if (waiting.size() == kN) release.swap(waiting);
    }
    for (auto& w : release) w->respond(200, "go", "text/plain");
    (void)req;
  });
  ASSERT_TRUE(server.start().has_value());

  asio::io_context io(1);
  AsyncClient client(io.get_executor());
  std::atomic<int> ok{0}, failed{0};
  std::size_t peak_connections = 0;
  for (int i = 0; i < kN; ++i) {
    asio::co_spawn(io, [&]() -> asio::awaitable<void> {
      auto r = co_await client.request(ClientRequest{"GET", fmt::format("http://127.0.0.1:{}/gate", server.port()), {}, {}, 10s});
      if (r.has_value() && r->status == 200 && r->body == "go") {
        ++ok;
      } else {
        ++failed;
      }
      peak_connections = std::max(peak_connections, server.connection_count());
    }, asio::detached);
  }
  io.run();
  EXPECT_EQ(ok.load(), kN);
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(peak_connections, static_cast<std::size_t>(kN));
  EXPECT_EQ(client.idle_connections(), static_cast<std::size_t>(kN));  // all pooled for reuse
}

TEST(AsyncClient, ConcurrentSseStreamsAndReuse) {
  ServerOptions o;
  o.io_threads = 2;
  Server server(o);
  std::mutex mu;
  std::set<std::string> remotes;
  server.route("POST", "/generate", [&](Request req, std::shared_ptr<Responder> r) {
    {
      std::lock_guard lock(mu);
      remotes.insert(req.remote_address);
    }
    r->start_stream(200);
    for (int i = 0; i < 20; ++i) r->send_chunk(sse_event(std::to_string(i)));
    r->send_chunk(sse_event("[DONE]"));
    r->end_stream();
  });
  ASSERT_TRUE(server.start().has_value());
  asio::io_context io(1);
  AsyncClient client(io.get_executor());
  constexpr int kStreams = 50;
  std::atomic<int> good{0};
  auto one_round = [&] {
    for (int s = 0; s < kStreams; ++s) {
      asio::co_spawn(io, [&]() -> asio::awaitable<void> {
        std::vector<std::string> got;
        auto r = co_await client.stream(
            ClientRequest{"POST", fmt::format("http://127.0.0.1:{}/generate", server.port()), "{}", {}, 10s},
            StreamCallbacks{nullptr, nullptr, [&](const SseEvent& e) { got.push_back(e.data); return true; }});
        bool in_order = got.size() == 21 && got.back() == "[DONE]";
        for (int i = 0; in_order && i < 20; ++i) in_order = got[i] == std::to_string(i);
        if (r.has_value() && in_order) ++good;
      }, asio::detached);
    }
    io.restart();
    io.run();
  };
  one_round();
  one_round();
  EXPECT_EQ(good.load(), 2 * kStreams);
  // The second round reused the first round's connections.
  EXPECT_EQ(remotes.size(), static_cast<std::size_t>(kStreams));
}

TEST(Client, ReconnectsAfterServerClosedIdleConnection) {
  ServerOptions o;
  o.idle_timeout = 100ms;
  Server server(o);
  server.route("GET", "/", [](Request, std::shared_ptr<Responder> r) { r->respond(200, "x", "text/plain"); });
  ASSERT_TRUE(server.start().has_value());
  Client client;
  std::string u = fmt::format("http://127.0.0.1:{}/", server.port());
  ASSERT_EQ(client.get(u)->status, 200);
  std::this_thread::sleep_for(300ms);  // the server drops the idle connection
  auto r = client.get(u);
  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_EQ(r->status, 200);
}

TEST(Client, TimeoutAndRefusedAreErrors) {
  Server server({});
  std::atomic<int> closes{0};
  std::mutex mu;
  std::vector<std::shared_ptr<Responder>> held;
  server.route("GET", "/hang", [&](Request, std::shared_ptr<Responder> r) {
    r->on_close([&] { ++closes; });
    std::lock_guard lock(mu);
    held.push_back(std::move(r));
  });
  server.route("GET", "/err", [&](Request, std::shared_ptr<Responder> r) { r->respond_error(422, "bad input"); });
  ASSERT_TRUE(server.start().has_value());
  Client client;
  auto t0 = std::chrono::steady_clock::now();
  auto r = client.get(fmt::format("http://127.0.0.1:{}/hang", server.port()), 200ms);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), ErrorCode::kIo);
  EXPECT_NE(r.error().message().find("timed out"), std::string::npos) << r.error().message();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  EXPECT_TRUE(testing::eventually([&] { return closes.load() == 1; }));  // the server saw the client leave

  // A non-2xx answer to a streamed request comes back as a body, not as events.
  int events = 0;
  auto e = client.stream(ClientRequest("GET", fmt::format("http://127.0.0.1:{}/err", server.port())),
                         StreamCallbacks{nullptr, nullptr, [&](const SseEvent&) { ++events; return true; }});
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->status, 422);
  EXPECT_NE(e->body.find("bad input"), std::string::npos);
  EXPECT_EQ(events, 0);

  std::uint16_t port = server.port();
  server.stop(0ms);
  r = client.get(fmt::format("http://127.0.0.1:{}/x", port), 1s);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), ErrorCode::kIo);
}

TEST(Client, Ipv6Loopback) {
  ServerOptions o;
  o.host = "::1";
  Server server(o);
  server.route("GET", "/", [](Request req, std::shared_ptr<Responder> r) { r->respond(200, req.remote_address, "text/plain"); });
  if (!server.start().has_value()) GTEST_SKIP() << "no IPv6 loopback here";
  Client client;
  auto r = client.get(fmt::format("http://[::1]:{}/", server.port()));
  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_EQ(r->status, 200);
  EXPECT_TRUE(r->body.starts_with("[::1]:")) << r->body;
}

TEST(Client, LocalhostResolves) {
  Server server({});
  server.route("GET", "/", [](Request, std::shared_ptr<Responder> r) { r->respond(200, "hi", "text/plain"); });
  ASSERT_TRUE(server.start().has_value());
  // "localhost" may resolve to ::1 first; the client tries each address until one connects.
  Client client;
  auto r = client.get(fmt::format("http://localhost:{}/", server.port()));
  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_EQ(r->body, "hi");
}

TEST(SignalWatcher, RunsCallbackAndCanStopAServer) {
  Server server({});
  ASSERT_TRUE(server.start().has_value());
  std::atomic<int> seen{0};
  {
    SignalWatcher watcher([&](int signo) {
      seen = signo;
      server.stop(100ms);
    }, {SIGUSR2});
    std::raise(SIGUSR2);
    server.wait();  // returns because the callback stopped the server
  }
  EXPECT_EQ(seen.load(), SIGUSR2);
  EXPECT_TRUE(server.stopping());
}

}  // namespace
}  // namespace pdserve::http
