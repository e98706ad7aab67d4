// The router's side towards the workers: a few single-threaded Asio loops, each with its own
// pool of keep-alive connections (http::AsyncClient wants a single-threaded executor). A request
// is pinned to one loop for its whole life, so its coroutines share state without locks.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <thread>
#include <vector>

#include <boost/asio/io_context.hpp>

#include "http/client.h"

namespace pdserve::router {

class UpstreamLoops {
 public:
  explicit UpstreamLoops(std::size_t threads, http::ClientOptions options = {});
  ~UpstreamLoops();  // stop()
  UpstreamLoops(const UpstreamLoops&) = delete;
  UpstreamLoops& operator=(const UpstreamLoops&) = delete;

  struct Loop {
    boost::asio::io_context io{1};
    std::unique_ptr<http::AsyncClient> client;
    std::thread thread;
  };
  // Round robin over the loops.
  Loop& next();
  // Stops the loops (unfinished coroutines are dropped) and joins the threads. Idempotent.
  void stop();

 private:
  std::vector<std::unique_ptr<Loop>> loops_;
  std::atomic<std::size_t> next_{0};
};

}  // namespace pdserve::router
