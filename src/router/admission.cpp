#include "router/admission.h"

#include <vector>

namespace pdserve::router {

std::shared_ptr<Admission> Admission::create(int64_t max_concurrent, int64_t queue_size,
                                             std::chrono::milliseconds queue_timeout) {
  std::shared_ptr<Admission> a(new Admission());
  a->max_ = max_concurrent;
  a->queue_size_ = queue_size > 0 ? static_cast<std::size_t>(queue_size) : 0;
  a->timeout_ = queue_timeout;
  return a;
}

Admission::Ticket::~Ticket() {
  if (owner_) owner_->release();
}

Admission::Outcome Admission::admit(const std::shared_ptr<http::Responder>& responder, Start start) {
  if (max_ <= 0) {
    start(nullptr);  // unlimited: no slot to give back
    return Outcome::kStarted;
  }
  {
    std::unique_lock lock(mu_);
    if (running_ < max_) {
      ++running_;
      lock.unlock();
      start(std::make_shared<Ticket>(shared_from_this()));
      return Outcome::kStarted;
    }
    if (waiting_.size() < queue_size_) {
      waiting_.push_back({responder, std::move(start), std::chrono::steady_clock::now() + timeout_});
      return Outcome::kQueued;
    }
    ++rejected_;
  }
  responder->respond_error(429, "Too many requests: the router's queue is full");
  return Outcome::kRejected;
}

void Admission::release() {
  Waiter next;
  {
    std::lock_guard lock(mu_);
    if (closed_) {
      --running_;
      return;
    }
    // A waiter whose client left is dropped, not started.
    while (!waiting_.empty() && !waiting_.front().responder->is_open()) waiting_.pop_front();
    if (waiting_.empty()) {
      --running_;
      return;
    }
    next = std::move(waiting_.front());
    waiting_.pop_front();
  }
  // The slot passes straight to the waiter (running_ unchanged).
  next.start(std::make_shared<Ticket>(shared_from_this()));
}

void Admission::close() {
  std::deque<Waiter> dropped;
  {
    std::lock_guard lock(mu_);
    closed_ = true;
    dropped.swap(waiting_);
  }
  for (auto& w : dropped) w.responder->respond_error(503, "router shutting down");
}

void Admission::expire(std::chrono::steady_clock::time_point now) {
  std::vector<std::shared_ptr<http::Responder>> late;
  {
    std::lock_guard lock(mu_);
    while (!waiting_.empty() && (waiting_.front().deadline <= now || !waiting_.front().responder->is_open())) {
      if (waiting_.front().responder->is_open()) {
        late.push_back(std::move(waiting_.front().responder));
        ++timed_out_;
      }
      waiting_.pop_front();
    }
  }
  for (auto& r : late) r->respond_error(408, "Request timed out waiting in the router's queue");
}

int64_t Admission::running() const {
  std::lock_guard lock(mu_);
  return running_;
}
std::size_t Admission::queued() const {
  std::lock_guard lock(mu_);
  return waiting_.size();
}
uint64_t Admission::rejected() const {
  std::lock_guard lock(mu_);
  return rejected_;
}
uint64_t Admission::timed_out() const {
  std::lock_guard lock(mu_);
  return timed_out_;
}

}  // namespace pdserve::router
