// Responders held by other threads while the Server is destroyed, and after it: every call
// returns (false once the connection is gone) and touches nothing freed. Before the server's
// WakeGate, a wake-up copied under the exchange's lock just before the server went posted to, and
// later destroyed, a strand of the destroyed io_context: a heap-use-after-free that ASan found in
// CI (bench_tests' stub server answering from detached threads). The race is timing-dependent, so
// the test repeats it; it is meant for the sanitizer builds, where a touch of freed memory fails it.
// Both I/O paths: one thread (the io_context's executor) and two (strands).
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "http/server.h"
#include "http/test_util.h"

namespace pdserve::http {
namespace {

using namespace std::chrono_literals;
using testing::eventually;
using testing::RawSocket;

class ServerLifetime : public ::testing::TestWithParam<int> {};

TEST_P(ServerLifetime, RespondersRacingTheServersDestructionAreHarmless) {
  constexpr int kRounds = 5, kClients = 8;
  for (int round = 0; round < kRounds; ++round) {
    ServerOptions options;
    options.io_threads = GetParam();
    auto server = std::make_unique<Server>(options);
    std::mutex mu;
    std::vector<std::shared_ptr<Responder>> held;
    server->route("GET", "/stream", [&](Request, std::shared_ptr<Responder> r) {
      r->start_stream(200, "text/plain");
      std::lock_guard lock(mu);
      held.push_back(std::move(r));
    });
    ASSERT_TRUE(server->start().has_value());
    std::vector<std::unique_ptr<RawSocket>> clients;
    for (int i = 0; i < kClients; ++i) {
      clients.push_back(std::make_unique<RawSocket>(server->port()));
      ASSERT_TRUE(clients.back()->send("GET /stream HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
    ASSERT_TRUE(eventually([&] {
      std::lock_guard lock(mu);
      return held.size() == kClients;
    }));

    // Every responder's thread streams chunks until its connection is gone, then keeps calling
    // for a while (the server destroyed meanwhile) and drops its copy.
    std::atomic<bool> go{false};
    std::atomic<int> refused{0};
    std::vector<std::thread> writers;
    for (auto& r : held)
      writers.emplace_back([r, &go, &refused] {
        while (!go.load()) std::this_thread::yield();
        int after_gone = 0;
        // A pause per chunk: writers spinning on every core would starve the I/O thread that
        // the server's shutdown needs (seconds on a 2-core machine).
        for (int i = 0; after_gone < 200; ++i) {
          if (!r->send_chunk("chunk " + std::to_string(i) + "\n")) ++after_gone;
          std::this_thread::sleep_for(20us);
        }
        if (!r->end_stream()) ++refused;
      });
    go = true;
    std::this_thread::sleep_for(std::chrono::microseconds(200 * (round + 1)));
    server.reset();  // while the writers wake their connections
    for (auto& w : writers) w.join();
    EXPECT_EQ(refused.load(), kClients) << "a stream ended after its server was destroyed";
    // The last references go after the server: nothing may touch its io_context.
    held.clear();
    for (auto& c : clients) {
      bool closed = false;
      c->read_until_close(2s, &closed);
      EXPECT_TRUE(closed);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(IoThreads, ServerLifetime, ::testing::Values(1, 2));

}  // namespace
}  // namespace pdserve::http
