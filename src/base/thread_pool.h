// A fixed-size pool of worker threads for CPU work (CPU reference ops, weight loading, tests).
//
// parallel_for lets the calling thread take chunks too and waits only for chunks, never for queued
// helper tasks, so it is safe to call from inside a pool task (nested use cannot deadlock).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace pdserve {

class ThreadPool {
 public:
  // num_threads == 0 means default_size().
  explicit ThreadPool(size_t num_threads = default_size());
  // Runs every task already submitted, then joins the workers.
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  // std::thread::hardware_concurrency(), at least 1.
  static size_t default_size();
  size_t size() const { return workers_.size(); }

  // Runs f() on a worker; the future yields its result or rethrows its exception.
  template <class F>
  auto submit(F&& f) -> std::future<std::invoke_result_t<std::decay_t<F>&>> {
    using R = std::invoke_result_t<std::decay_t<F>&>;
    // packaged_task is move-only; the queue holds copyable std::function, hence the shared_ptr.
    auto task = std::make_shared<std::packaged_task<R()>>(std::forward<F>(f));
    std::future<R> result = task->get_future();
    enqueue([task] { (*task)(); });
    return result;
  }

  // Calls fn(i) for every i in [begin, end), spread over the workers and the calling thread, and
  // returns when all are done. If any call throws, the remaining chunks are skipped and the first
  // exception is rethrown here. `min_chunk` is the fewest indices one chunk holds (use it when
  // fn is cheap so that scheduling does not dominate).
  void parallel_for(int64_t begin, int64_t end, const std::function<void(int64_t)>& fn, int64_t min_chunk = 1);
  // Like parallel_for but hands out whole chunks: fn(chunk_begin, chunk_end).
  void parallel_for_chunks(int64_t begin, int64_t end, const std::function<void(int64_t, int64_t)>& fn,
                           int64_t min_chunk = 1);

 private:
  void enqueue(std::function<void()> job);
  void worker_loop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace pdserve
