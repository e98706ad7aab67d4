#include "cache/page_allocator.h"

#include <algorithm>
#include <set>
#include <stdexcept>
#include <vector>

#include <gtest/gtest.h>

namespace pdserve::cache {
namespace {

TEST(PageAllocator, HandsOutEveryPageOnceLowestFirst) {
  PageAllocator a(8);
  EXPECT_EQ(a.capacity(), 8);
  EXPECT_EQ(a.free_count(), 8);
  auto p = a.allocate(3);
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(*p, (std::vector<int32_t>{0, 1, 2}));
  std::vector<int32_t> rest;
  ASSERT_TRUE(a.allocate_append(5, rest));
  EXPECT_EQ(a.free_count(), 0);
  EXPECT_EQ(a.used_count(), 8);
  std::set<int32_t> all(p->begin(), p->end());
  all.insert(rest.begin(), rest.end());
  EXPECT_EQ(all.size(), 8u);
  EXPECT_EQ(*all.begin(), 0);
  EXPECT_EQ(*all.rbegin(), 7);
  for (int32_t q : all) EXPECT_TRUE(a.is_allocated(q));
}

TEST(PageAllocator, AllOrNothing) {
  PageAllocator a(4);
  ASSERT_TRUE(a.allocate(3).has_value());
  EXPECT_FALSE(a.allocate(2).has_value());
  EXPECT_EQ(a.free_count(), 1);  // the failed call took nothing
  std::vector<int32_t> out{42};
  EXPECT_FALSE(a.allocate_append(2, out));
  EXPECT_EQ(out, std::vector<int32_t>{42});
  auto zero = a.allocate(0);
  ASSERT_TRUE(zero.has_value());
  EXPECT_TRUE(zero->empty());
  EXPECT_THROW((void)a.allocate(-1), std::logic_error);
}

TEST(PageAllocator, FreeReturnsPagesAndReusesLastFreedFirst) {
  PageAllocator a(4);
  auto p = *a.allocate(4);
  a.free(p[1]);
  a.free(p[3]);
  EXPECT_EQ(a.free_count(), 2);
  EXPECT_TRUE(a.is_free(p[3]));
  EXPECT_FALSE(a.is_allocated(p[3]));
  EXPECT_EQ(*a.allocate(1), std::vector<int32_t>{p[3]});
}

TEST(PageAllocator, DoubleFreeThrowsAndChangesNothing) {
  PageAllocator a(6);
  auto p = *a.allocate(4);
  a.free(p[0]);
  EXPECT_THROW(a.free(p[0]), std::logic_error);
  // A span whose third page is bad: the first two must not be freed either.
  const std::vector<int32_t> batch{p[1], p[2], p[0]};
  EXPECT_THROW(a.free(batch), std::logic_error);
  EXPECT_TRUE(a.is_allocated(p[1]));
  EXPECT_TRUE(a.is_allocated(p[2]));
  EXPECT_EQ(a.free_count(), 3);
  // The same page twice in one call is a double free too.
  const std::vector<int32_t> twice{p[3], p[3]};
  EXPECT_THROW(a.free(twice), std::logic_error);
  EXPECT_TRUE(a.is_allocated(p[3]));
  EXPECT_EQ(a.free_count(), 3);
}

TEST(PageAllocator, ForeignAndReservedPagesThrow) {
  PageAllocator a(5, /*num_reserved=*/2);
  EXPECT_EQ(a.capacity(), 3);
  auto p = *a.allocate(3);
  for (int32_t q : p) EXPECT_GE(q, 2);  // reserved pages are never handed out
  EXPECT_FALSE(a.allocate(1).has_value());
  EXPECT_THROW(a.free(0), std::logic_error);
  EXPECT_THROW(a.free(5), std::logic_error);
  EXPECT_THROW(a.free(-1), std::logic_error);
  EXPECT_FALSE(a.is_free(0));
  EXPECT_FALSE(a.is_allocated(0));
  a.free(p);
  EXPECT_EQ(a.free_count(), 3);
}

TEST(PageAllocator, RejectsBadSizes) {
  EXPECT_THROW(PageAllocator(0), std::invalid_argument);
  EXPECT_THROW(PageAllocator(4, 4), std::invalid_argument);
  EXPECT_THROW(PageAllocator(4, -1), std::invalid_argument);
}

}  // namespace
}  // namespace pdserve::cache
