// Responders held by other threads while the Server is destroyed, and after it: every call
// returns (false once the connection is gone) and touches nothing freed. Before the server's
// WakeGate, a wake-up taken under the exchange's lock just before the server went posted to, and
// later destroyed, a strand of the destroyed io_context: a heap-use-after-free that ASan found in
// CI (bench_tests' stub server answering from detached threads). The first test holds a thread in
// exactly that window (detail::wake_test_hook) while the server is destroyed; the second races
// many responders against the destruction. A touch of freed memory fails them in the sanitizer
// builds. Both I/O paths: one thread (the io_context's executor) and two (strands).
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "http/exchange.h"
#include "http/server.h"
#include "http/test_util.h"

namespace pdserve::http {
namespace {

using namespace std::chrono_literals;
using testing::eventually;
using testing::RawSocket;

class ServerLifetime : public ::testing::TestWithParam<int> {};

// The hook holds the thread marked `held_here` (once) until released.
std::atomic<bool> hook_armed{false}, hook_entered{false}, hook_release{false};
thread_local bool held_here = false;
void hold_in_wake() {
  if (!held_here || !hook_armed.exchange(false)) return;
  hook_entered = true;
  while (!hook_release.load()) std::this_thread::sleep_for(1ms);
}

TEST_P(ServerLifetime, AWakeUpUnderWayWhileTheServerIsDestroyedTouchesNothingFreed) {
  ServerOptions options;
  options.io_threads = GetParam();
  auto server = std::make_unique<Server>(options);
  std::mutex mu;
  std::shared_ptr<Responder> held;
  server->route("GET", "/later", [&](Request, std::shared_ptr<Responder> r) {
    std::lock_guard lock(mu);
    held = std::move(r);
  });
  ASSERT_TRUE(server->start().has_value());
  RawSocket client(server->port());
  ASSERT_TRUE(client.send("GET /later HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(eventually([&] {
    std::lock_guard lock(mu);
    return held != nullptr;
  }));
  std::shared_ptr<Responder> r;
  {
    std::lock_guard lock(mu);
    r = std::move(held);
  }
  hook_armed = true;
  hook_entered = hook_release = false;
  detail::wake_test_hook = &hold_in_wake;
  struct Unhook {  // also when an assertion below ends the test early
    ~Unhook() {
      hook_release = true;
      detail::wake_test_hook = nullptr;
    }
  } unhook;
  // The answer is queued; the thread then stops between taking the waker and calling it.
  std::thread answer([r = std::move(r)]() mutable {
    held_here = true;
    r->respond(200, "late", "text/plain");
    r.reset();  // the last reference goes after the server
  });
  ASSERT_TRUE(eventually([] { return hook_entered.load(); }));
  server.reset();       // closes the connection and destroys the io_context
  hook_release = true;  // the wake-up goes on, with its server gone
  answer.join();
  bool closed = false;
  client.read_until_close(2s, &closed);
  EXPECT_TRUE(closed);
}

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
