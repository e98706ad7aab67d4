// --max-concurrent-requests with a bounded wait queue, as the Rust router's rate limiter: up to
// `max_concurrent` requests run; up to `queue_size` more wait (FIFO) for at most `queue_timeout`
// (then 408); beyond that a request is refused at once with 429. A Ticket is one running slot:
// dropping it starts the next waiting request.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>

#include "http/server.h"

namespace pdserve::router {

class Admission : public std::enable_shared_from_this<Admission> {
 public:
  class Ticket {
   public:
    explicit Ticket(std::shared_ptr<Admission> owner) : owner_(std::move(owner)) {}
    ~Ticket();
    Ticket(const Ticket&) = delete;
    Ticket& operator=(const Ticket&) = delete;

   private:
    std::shared_ptr<Admission> owner_;  // null when unlimited
  };
  using TicketPtr = std::shared_ptr<Ticket>;
  using Start = std::function<void(TicketPtr)>;
  enum class Outcome { kStarted, kQueued, kRejected };

  // max_concurrent <= 0: unlimited (no queue).
  static std::shared_ptr<Admission> create(int64_t max_concurrent, int64_t queue_size,
                                           std::chrono::milliseconds queue_timeout);

  // Runs `start` now (on this thread), later (on the thread that frees a slot), or never: a full
  // queue answers 429 through `responder` and a timed-out wait 408. Unlimited admission passes a
  // null ticket (there is no slot to give back).
  Outcome admit(const std::shared_ptr<http::Responder>& responder, Start start);
  // No --max-concurrent-requests: admit() would start every request at once.
  bool unlimited() const { return max_ <= 0; }
  // Shutdown: waiters get 503 and no request starts any more.
  void close();
  // Answers 408 to waiters past their deadline; called periodically.
  void expire(std::chrono::steady_clock::time_point now);
  int64_t running() const;
  std::size_t queued() const;
  uint64_t rejected() const;
  uint64_t timed_out() const;

 private:
  Admission() = default;
  void release();

  struct Waiter {
    std::shared_ptr<http::Responder> responder;
    Start start;
    std::chrono::steady_clock::time_point deadline;
  };
  int64_t max_ = 0;
  std::size_t queue_size_ = 0;
  std::chrono::milliseconds timeout_{0};
  mutable std::mutex mu_;
  int64_t running_ = 0;
  bool closed_ = false;
  uint64_t rejected_ = 0, timed_out_ = 0;
  std::deque<Waiter> waiting_;
};

}  // namespace pdserve::router
