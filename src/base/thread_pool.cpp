#include "base/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <stdexcept>

namespace pdserve {

ThreadPool::ThreadPool(size_t num_threads) {
  if (num_threads == 0) num_threads = default_size();
  workers_.reserve(num_threads);
  for (size_t i = 0; i < num_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& w : workers_) w.join();
}

size_t ThreadPool::default_size() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : n;
}

void ThreadPool::enqueue(std::function<void()> job) {
  {
    std::lock_guard lock(mu_);
    if (stopping_) throw std::logic_error("ThreadPool: submit after shutdown began");
    queue_.push_back(std::move(job));
  }
  cv_.notify_one();
}

void ThreadPool::worker_loop() {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping and drained
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    job();  // packaged_task stores exceptions in the future; parallel_for jobs catch their own
  }
}

namespace {

// Shared by the caller and the helper tasks of one parallel_for. Helpers may start after the call
// returned (they were queued behind other work), so everything they touch lives here; they touch
// `fn` only after claiming a chunk, and every chunk is claimed before the call returns.
struct ForState {
  int64_t begin = 0, end = 0, chunk = 1, num_chunks = 0;
  const std::function<void(int64_t, int64_t)>* fn = nullptr;
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mu;
  std::condition_variable cv;
  int64_t done = 0;             // guarded by mu
  std::exception_ptr error;     // first exception, guarded by mu

  // Claims and runs chunks until none are left.
  void run() {
    for (;;) {
      const int64_t c = next.fetch_add(1);
      if (c >= num_chunks) return;
      std::exception_ptr e;
      if (!failed.load(std::memory_order_relaxed)) {
        const int64_t b = begin + c * chunk;
        try {
          (*fn)(b, std::min(end, b + chunk));
        } catch (...) {
          e = std::current_exception();
          failed = true;
        }
      }
      std::lock_guard lock(mu);
      if (e && !error) error = e;
      if (++done == num_chunks) cv.notify_all();
    }
  }
};

}  // namespace

void ThreadPool::parallel_for_chunks(int64_t begin, int64_t end, const std::function<void(int64_t, int64_t)>& fn,
                                     int64_t min_chunk) {
  if (end <= begin) return;
  const int64_t n = end - begin;
  const int64_t threads = static_cast<int64_t>(size()) + 1;  // the caller works too
  // A few chunks per thread evens out uneven work without much scheduling cost.
  int64_t chunk = std::max<int64_t>(std::max<int64_t>(min_chunk, 1), (n + threads * 4 - 1) / (threads * 4));
  const int64_t num_chunks = (n + chunk - 1) / chunk;
  if (num_chunks == 1 || size() == 0) {
    fn(begin, end);
    return;
  }
  auto st = std::make_shared<ForState>();
  st->begin = begin;
  st->end = end;
  st->chunk = chunk;
  st->num_chunks = num_chunks;
  st->fn = &fn;
  const int64_t helpers = std::min<int64_t>(static_cast<int64_t>(size()), num_chunks - 1);
  for (int64_t i = 0; i < helpers; ++i) enqueue([st] { st->run(); });
  st->run();
  std::unique_lock lock(st->mu);
  st->cv.wait(lock, [&] { return st->done == st->num_chunks; });
  if (st->error) std::rethrow_exception(st->error);
}

void ThreadPool::parallel_for(int64_t begin, int64_t end, const std::function<void(int64_t)>& fn, int64_t min_chunk) {
  parallel_for_chunks(
      begin, end,
      [&fn](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) fn(i);
      },
      min_chunk);
}

}  // namespace pdserve
