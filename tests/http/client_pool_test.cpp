// The AsyncClient pool drops idle keep-alive connections whose peer closed them. Without that the
// router kept its connections to a killed or restarted worker in CLOSE_WAIT until a burst of
// requests reached the bottom of the pool's stack, and forever for a worker it no longer used
// (docs/reliability.md, "Bugs found"; tests/reliability checks the router end to end).
#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <fmt/format.h>
#include <gtest/gtest.h>

#include "http/client.h"
#include "http/server.h"

namespace pdserve::http {
namespace {

using namespace std::chrono_literals;
namespace asio = boost::asio;

std::unique_ptr<Server> started_server() {
  auto s = std::make_unique<Server>(ServerOptions{});
  s->route("GET", "/x", [](Request, std::shared_ptr<Responder> r) { r->respond(200, "x", "text/plain"); });
  if (!s->start().has_value()) return nullptr;
  return s;
}

// Runs `n` requests to `url` at once on `client` (all acquire a connection before any returns).
int run_at_once(asio::io_context& io, AsyncClient& client, const std::string& url, int n) {
  int ok = 0;
  for (int i = 0; i < n; ++i)
    asio::co_spawn(io, [&]() -> asio::awaitable<void> {
      auto r = co_await client.request(ClientRequest{"GET", url, {}, {}, 10s});
      if (r.has_value() && r->status == 200) ++ok;
    }, asio::detached);
  io.run();
  io.restart();
  return ok;
}

TEST(AsyncClientPool, IdleConnectionsClosedByThePeerAreDropped) {
  auto dying = started_server(), live = started_server();
  ASSERT_TRUE(dying && live);
  asio::io_context io(1);
  AsyncClient client(io.get_executor());
  const std::string dying_url = fmt::format("http://127.0.0.1:{}/x", dying->port());
  ASSERT_EQ(run_at_once(io, client, dying_url, 8), 8);
  ASSERT_EQ(client.idle_connections(), 8u);

  dying->stop(0ms);  // closes its end of the 8 pooled connections
  dying.reset();
  std::this_thread::sleep_for(1100ms);  // the pool sweeps at most once a second
  ASSERT_EQ(run_at_once(io, client, fmt::format("http://127.0.0.1:{}/x", live->port()), 1), 1);
  EXPECT_EQ(client.idle_connections(), 1u) << "connections closed by the peer stayed in the pool";
}

// After the last request of a burst nothing completes, so the sweep above never runs again: with
// idle_sweep_interval (the router's setting) a timer drops the connections a peer closed later.
// The loop runs until stopped, as the router's does (the timer would keep run_at_once's io.run()
// from returning while connections are idle).
TEST(AsyncClientPool, SweepTimerDropsClosedConnectionsWithoutTraffic) {
  auto dying = started_server();
  ASSERT_TRUE(dying);
  asio::io_context io(1);
  auto guard = asio::make_work_guard(io);
  std::thread loop([&] { io.run(); });
  ClientOptions options;
  options.idle_sweep_interval = 100ms;
  auto client = std::make_unique<AsyncClient>(io.get_executor(), options);
  const std::string url = fmt::format("http://127.0.0.1:{}/x", dying->port());
  std::atomic<int> ok{0}, done{0};
  for (int i = 0; i < 8; ++i)
    asio::co_spawn(io, [&]() -> asio::awaitable<void> {
      auto r = co_await client->request(ClientRequest{"GET", url, {}, {}, 10s});
      if (r.has_value() && r->status == 200) ++ok;
      ++done;
    }, asio::detached);
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (done < 8 && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(ok, 8);
  std::this_thread::sleep_for(300ms);  // three sweeps: open connections stay pooled
  EXPECT_EQ(client->idle_connections(), 8u);
  dying->stop(0ms);  // closes its end of the pooled connections; no request follows
  dying.reset();
  const auto swept = std::chrono::steady_clock::now() + 5s;
  while (client->idle_connections() != 0 && std::chrono::steady_clock::now() < swept) std::this_thread::sleep_for(20ms);
  EXPECT_EQ(client->idle_connections(), 0u) << "connections closed by the peer stayed in the pool without traffic";
  // The client goes first (on the loop, where its timer lives), then the loop.
  asio::post(io, [&] { client.reset(); });
  guard.reset();
  loop.join();
}

}  // namespace
}  // namespace pdserve::http
