#include "router/upstream.h"

#include <boost/asio/executor_work_guard.hpp>

namespace pdserve::router {

UpstreamLoops::UpstreamLoops(std::size_t threads, http::ClientOptions options) {
  for (std::size_t i = 0; i < std::max<std::size_t>(threads, 1); ++i) {
    auto loop = std::make_unique<Loop>();
    loop->client = std::make_unique<http::AsyncClient>(loop->io.get_executor(), options);
    Loop* l = loop.get();
    loop->thread = std::thread([l] {
      auto guard = boost::asio::make_work_guard(l->io);  // idle loops wait for work
      l->io.run();
    });
    loops_.push_back(std::move(loop));
  }
}

UpstreamLoops::~UpstreamLoops() { stop(); }

UpstreamLoops::Loop& UpstreamLoops::next() {
  return *loops_[next_.fetch_add(1, std::memory_order_relaxed) % loops_.size()];
}

void UpstreamLoops::stop() {
  for (auto& l : loops_) l->io.stop();
  for (auto& l : loops_)
    if (l->thread.joinable()) l->thread.join();
}

}  // namespace pdserve::router

namespace pdserve::router {

UpstreamLanes::UpstreamLanes(boost::asio::io_context& io, std::size_t io_threads, http::ClientOptions options) {
  for (std::size_t i = 0; i < std::max<std::size_t>(io_threads, 1); ++i) {
    auto lane = std::make_unique<Lane>(io_threads > 1 ? Executor(boost::asio::make_strand(io)) : Executor(io.get_executor()));
    // The pool's sockets get the lane's executor too, so that their timeout timers run in it.
    lane->client = std::make_unique<http::AsyncClient>(lane->executor, options);
    lanes_.push_back(std::move(lane));
  }
}

UpstreamLanes::Lane& UpstreamLanes::next() {
  return *lanes_[next_.fetch_add(1, std::memory_order_relaxed) % lanes_.size()];
}

}  // namespace pdserve::router
