#include "bench/runner.h"

#include <deque>
#include <memory>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "base/clock.h"
#include "bench/arrival.h"
#include "bench/progress.h"
#include "http/client.h"

namespace pdserve::bench {

namespace asio = boost::asio;

namespace {

// A counting semaphore for coroutines on one single-threaded io_context.
class Semaphore {
 public:
  Semaphore(asio::any_io_executor ex, int64_t n) : ex_(std::move(ex)), count_(n) {}
  asio::awaitable<void> acquire() {
    if (count_ > 0) {
      --count_;
      co_return;
    }
    auto t = std::make_shared<asio::steady_timer>(ex_, asio::steady_timer::time_point::max());
    waiters_.push_back(t);
    boost::system::error_code ec;
    co_await t->async_wait(asio::redirect_error(asio::use_awaitable, ec));  // cancelled = our turn
  }
  void release() {
    if (waiters_.empty()) {
      ++count_;
      return;
    }
    auto t = std::move(waiters_.front());  // the slot passes straight to the next waiter
    waiters_.pop_front();
    t->cancel();
  }

 private:
  asio::any_io_executor ex_;
  int64_t count_;
  std::deque<std::shared_ptr<asio::steady_timer>> waiters_;
};

class Runner {
 public:
  Runner(const std::vector<DatasetRequest>& reqs, const RunOptions& o)
      : reqs_(reqs), o_(o), client_(io_.get_executor(), client_options(reqs.size())),
        bar_(static_cast<int64_t>(reqs.size()), o.progress) {
    if (o.max_concurrency && *o.max_concurrency > 0)
      sem_ = std::make_unique<Semaphore>(io_.get_executor(), *o.max_concurrency);
    url_ = o.base_url + backend_path(o.request.backend);
    out_.outputs.resize(reqs.size());
  }

  RunResult run() {
    times_ = arrival_times(reqs_.size(), o_.request_rate, o_.burstiness, o_.seed);
    t0_ = Clock::monotonic();
    last_end_ = t0_;
    asio::co_spawn(io_, [this]() -> asio::awaitable<void> { co_await release_all(); }, asio::detached);
    io_.run();
    out_.duration = last_end_ - t0_;
    return std::move(out_);
  }

 private:
  static http::ClientOptions client_options(size_t n) {
    http::ClientOptions co;
    co.max_idle_per_host = std::max<size_t>(n, 16);
    co.user_agent = "pdserve-bench";
    return co;
  }

  asio::awaitable<void> release_all() {
    asio::steady_timer timer(io_);
    for (size_t i = 0; i < reqs_.size(); ++i) {
      const double wait = t0_ + times_[i] - Clock::monotonic();
      if (wait > 0) {
        timer.expires_after(std::chrono::duration_cast<asio::steady_timer::duration>(std::chrono::duration<double>(wait)));
        boost::system::error_code ec;
        co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      }
      asio::co_spawn(io_, [this, i]() -> asio::awaitable<void> { co_await one(i); }, asio::detached);
    }
  }

  asio::awaitable<void> one(size_t i) {
    if (sem_) co_await sem_->acquire();
    const DatasetRequest& r = reqs_[i];
    const int64_t out_len = o_.output_len.value_or(r.output_len);
    std::string body = request_body(r, out_len, o_.request).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    const double send = Clock::monotonic();
    ResponseReader reader(o_.request.backend, send - t0_);
    http::Headers h{{"Content-Type", "application/json"}};
    Result<http::Response> resp = make_error(ErrorCode::kInternal, "not sent");
    if (o_.request.stream) {
      resp = co_await client_.stream(
          http::ClientRequest("POST", url_, std::move(body), h, o_.timeout),
          http::StreamCallbacks(nullptr, nullptr, [&reader, send](const http::SseEvent& e) {
            return reader.on_data(e.data, Clock::monotonic() - send);
          }));
    } else {
      resp = co_await client_.request(http::ClientRequest("POST", url_, std::move(body), h, o_.timeout));
      if (resp && resp->status / 100 == 2) reader.on_data(resp->body, Clock::monotonic() - send);
    }
    const double end = Clock::monotonic();
    RequestResult rr;
    if (resp) {
      rr = reader.finish(end - send, resp->status, resp->body);
    } else {
      rr = reader.finish(end - send, 200, "");
      rr.success = false;
      rr.error = resp.error().message();
    }
    rr.prompt_len = r.prompt_len;
    out_.outputs[i] = std::move(rr);
    last_end_ = std::max(last_end_, end);
    bar_.update();
    if (sem_) sem_->release();
  }

  const std::vector<DatasetRequest>& reqs_;
  const RunOptions& o_;
  asio::io_context io_{1};
  http::AsyncClient client_;
  ProgressBar bar_;
  std::unique_ptr<Semaphore> sem_;
  std::string url_;
  std::vector<double> times_;
  double t0_ = 0, last_end_ = 0;
  RunResult out_;
};

}  // namespace

RunResult run_requests(const std::vector<DatasetRequest>& requests, const RunOptions& o) {
  Runner r(requests, o);
  return r.run();
}

}  // namespace pdserve::bench
