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
