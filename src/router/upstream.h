// The router's side towards the workers.
//
// UpstreamLanes (the request path): strands of the client-facing server's own io_context, each
// with its own pool of keep-alive connections. A client request and its upstream exchange run on
// the same I/O threads (no hand-over to another thread and back), and with one I/O thread
// everything of a request happens on that one thread, as in one nginx worker. A request is
// pinned to one lane (strand) for its whole life, so its coroutines share state without locks.
//
// UpstreamLoops (everything else: health checks, fan-outs, proxied info routes): a few
// single-threaded Asio loops of their own, which also work before the server has started
// (the start-up health wait) and from blocking callers (the health thread).
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <thread>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/strand.hpp>

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

class UpstreamLanes {
 public:
  using Executor = boost::asio::any_io_executor;
  // `lanes` lanes on `io`, which `io_threads` threads run: strands when several threads run it
  // (one lane per thread lets every thread work); with one thread, `io`'s plain executor, since
  // nothing can run concurrently and a strand would only add a queue to every completion.
  UpstreamLanes(boost::asio::io_context& io, std::size_t io_threads, http::ClientOptions options = {});
  UpstreamLanes(const UpstreamLanes&) = delete;
  UpstreamLanes& operator=(const UpstreamLanes&) = delete;

  struct Lane {
    explicit Lane(Executor e) : executor(std::move(e)) {}
    Executor executor;
    std::unique_ptr<http::AsyncClient> client;
  };
  // Round robin over the lanes.
  Lane& next();

 private:
  std::vector<std::unique_ptr<Lane>> lanes_;
  std::atomic<std::size_t> next_{0};
};

}  // namespace pdserve::router
