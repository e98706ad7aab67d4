#include "base/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <numeric>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace pdserve {
namespace {

TEST(ThreadPool, DefaultSizeIsPositive) {
  EXPECT_GE(ThreadPool::default_size(), 1u);
  ThreadPool pool(0);
  EXPECT_EQ(pool.size(), ThreadPool::default_size());
}

TEST(ThreadPool, SubmitReturnsResults) {
  ThreadPool pool(4);
  auto a = pool.submit([] { return 6 * 7; });
  auto b = pool.submit([] { return std::string("done"); });
  auto c = pool.submit([] {});
  EXPECT_EQ(a.get(), 42);
  EXPECT_EQ(b.get(), "done");
  c.get();
}

TEST(ThreadPool, SubmitAcceptsMoveOnlyCallables) {
  ThreadPool pool(2);
  auto p = std::make_unique<int>(9);
  auto f = pool.submit([p = std::move(p)] { return *p + 1; });
  EXPECT_EQ(f.get(), 10);
}

TEST(ThreadPool, SubmitPropagatesExceptions) {
  ThreadPool pool(2);
  auto f = pool.submit([]() -> int { throw std::runtime_error("task failed"); });
  try {
    f.get();
    FAIL() << "expected an exception";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "task failed");
  }
  // The worker survives a throwing task.
  EXPECT_EQ(pool.submit([] { return 1; }).get(), 1);
}

TEST(ThreadPool, ManyTasks) {
  ThreadPool pool(8);
  std::vector<std::future<int64_t>> fs;
  for (int64_t i = 0; i < 10000; ++i) fs.push_back(pool.submit([i] { return i * i; }));
  int64_t sum = 0;
  for (auto& f : fs) sum += f.get();
  int64_t expect = 0;
  for (int64_t i = 0; i < 10000; ++i) expect += i * i;
  EXPECT_EQ(sum, expect);
}

TEST(ThreadPool, DestructorRunsQueuedTasks) {
  std::atomic<int> ran{0};
  {
    ThreadPool pool(2);
    for (int i = 0; i < 100; ++i)
      (void)pool.submit([&ran] {
        std::this_thread::sleep_for(std::chrono::microseconds(50));
        ++ran;
      });
  }
  EXPECT_EQ(ran.load(), 100);
}

TEST(ThreadPool, ParallelForCoversEachIndexOnce) {
  ThreadPool pool(4);
  for (int64_t n : {0, 1, 2, 7, 100, 1001, 100000}) {
    std::vector<std::atomic<int>> hits(static_cast<size_t>(n) + 10);
    pool.parallel_for(5, 5 + n, [&](int64_t i) { hits[static_cast<size_t>(i)]++; });
    for (int64_t i = 0; i < n + 10; ++i) {
      int want = (i >= 5 && i < 5 + n) ? 1 : 0;
      ASSERT_EQ(hits[static_cast<size_t>(i)].load(), want) << "n=" << n << " i=" << i;
    }
  }
}

TEST(ThreadPool, ParallelForUsesSeveralThreads) {
  ThreadPool pool(4);
  std::mutex mu;
  std::set<std::thread::id> ids;
  pool.parallel_for(0, 64, [&](int64_t) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    std::lock_guard l(mu);
    ids.insert(std::this_thread::get_id());
  });
  EXPECT_GT(ids.size(), 1u);
}

TEST(ThreadPool, ParallelForChunksAreDisjointAndRespectMinChunk) {
  ThreadPool pool(3);
  std::mutex mu;
  std::vector<std::pair<int64_t, int64_t>> chunks;
  pool.parallel_for_chunks(
      10, 1010,
      [&](int64_t b, int64_t e) {
        std::lock_guard l(mu);
        chunks.emplace_back(b, e);
      },
      100);
  std::sort(chunks.begin(), chunks.end());
  ASSERT_FALSE(chunks.empty());
  EXPECT_EQ(chunks.front().first, 10);
  EXPECT_EQ(chunks.back().second, 1010);
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (i + 1 < chunks.size()) {
      EXPECT_EQ(chunks[i].second, chunks[i + 1].first);
      EXPECT_GE(chunks[i].second - chunks[i].first, 100);
    }
  }
}

TEST(ThreadPool, ParallelForRethrowsFirstException) {
  ThreadPool pool(4);
  std::atomic<int> calls{0};
  try {
    pool.parallel_for(0, 100000, [&](int64_t i) {
      ++calls;
      if (i == 0) throw std::out_of_range("index 0");
    });
    FAIL() << "expected an exception";
  } catch (const std::out_of_range& e) {
    EXPECT_STREQ(e.what(), "index 0");
  }
  EXPECT_LT(calls.load(), 100000);  // remaining chunks were skipped
  // The pool still works afterwards.
  std::atomic<int64_t> sum{0};
  pool.parallel_for(0, 100, [&](int64_t i) { sum += i; });
  EXPECT_EQ(sum.load(), 4950);
}

TEST(ThreadPool, NestedParallelForDoesNotDeadlock) {
  ThreadPool pool(2);
  std::atomic<int64_t> total{0};
  // Every worker blocks inside an outer task while the inner loops still complete.
  pool.parallel_for(0, 8, [&](int64_t) {
    pool.parallel_for(0, 1000, [&](int64_t j) { total += j; });
  });
  EXPECT_EQ(total.load(), 8 * 499500);
  auto f = pool.submit([&] {
    int64_t s = 0;
    std::mutex mu;
    pool.parallel_for(0, 10, [&](int64_t j) {
      std::lock_guard l(mu);
      s += j;
    });
    return s;
  });
  EXPECT_EQ(f.get(), 45);
}

}  // namespace
}  // namespace pdserve
