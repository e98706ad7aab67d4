// SIGTERM/SIGINT handling for the binaries (serve, router, bench).
//
// A signal handler may not take locks or allocate, so it cannot abort requests or stop a server.
// SignalWatcher turns the signal into an ordinary callback on its own thread (Asio's signal_set
// does the async-signal-safe part), where blocking calls such as Server::stop(grace) are fine.
#pragma once

#include <csignal>
#include <functional>
#include <memory>
#include <vector>

namespace pdserve::http {

class SignalWatcher {
 public:
  // Calls on_signal(signo) on the watcher's thread for every delivery of one of `signals`,
  // from construction until destruction. Typical use in a server main():
  //   SignalWatcher w([&](int) { abort_all("shutdown"); server.stop(5s); });
  //   server.run();  // returns once stop() finished; main returns 0
  explicit SignalWatcher(std::function<void(int signo)> on_signal,
                         std::vector<int> signals = {SIGINT, SIGTERM});
  // Restores default handling. Must not be destroyed from inside its own callback.
  ~SignalWatcher();
  SignalWatcher(const SignalWatcher&) = delete;
  SignalWatcher& operator=(const SignalWatcher&) = delete;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pdserve::http
