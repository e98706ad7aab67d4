#include "cache/request_slot_table.h"

#include <stdexcept>
#include <vector>

#include <gtest/gtest.h>

namespace pdserve::cache {
namespace {

std::vector<int32_t> vec(std::span<const int32_t> s) { return {s.begin(), s.end()}; }

TEST(RequestSlotTable, AcquireUntilFullThenReuse) {
  RequestSlotTable t(3, 4);
  EXPECT_EQ(t.free_slots(), 3);
  EXPECT_EQ(t.acquire(), 0);
  EXPECT_EQ(t.acquire(), 1);
  EXPECT_EQ(t.acquire(), 2);
  EXPECT_FALSE(t.acquire().has_value());
  EXPECT_EQ(t.used_slots(), 3);
  t.release(1);
  EXPECT_FALSE(t.in_use(1));
  EXPECT_EQ(t.acquire(), 1);
  EXPECT_THROW(t.release(7), std::logic_error);
  t.release(2);
  EXPECT_THROW(t.release(2), std::logic_error);  // double release
}

TEST(RequestSlotTable, AppendReadSetTruncate) {
  RequestSlotTable t(2, 4);
  const int32_t s = *t.acquire();
  const std::vector<int32_t> a{7, 3};
  t.append(s, a);
  t.append(s, std::vector<int32_t>{9});
  EXPECT_EQ(t.num_pages(s), 3);
  EXPECT_EQ(vec(t.pages(s)), (std::vector<int32_t>{7, 3, 9}));
  t.set(s, 1, 5);
  EXPECT_EQ(vec(t.pages(s)), (std::vector<int32_t>{7, 5, 9}));
  EXPECT_THROW(t.set(s, 3, 1), std::logic_error);
  t.truncate(s, 1);
  EXPECT_EQ(vec(t.pages(s)), (std::vector<int32_t>{7}));
  EXPECT_THROW(t.truncate(s, 2), std::logic_error);
  EXPECT_THROW(t.append(s, std::vector<int32_t>{1, 2, 3, 4}), std::logic_error);  // 5 > 4
  EXPECT_EQ(t.num_pages(s), 1);  // the refused append wrote nothing
  EXPECT_THROW((void)t.pages(1), std::logic_error);  // slot 1 not acquired
}

TEST(RequestSlotTable, ContiguousRowsForTheDeviceMirror) {
  RequestSlotTable t(3, 4);
  const int32_t s0 = *t.acquire(), s1 = *t.acquire();
  t.append(s0, std::vector<int32_t>{1, 2});
  t.append(s1, std::vector<int32_t>{10, 11, 12, 13});
  EXPECT_EQ(t.row_stride(), 4);
  const int32_t* d = t.data();
  EXPECT_EQ(d[s0 * 4 + 0], 1);
  EXPECT_EQ(d[s0 * 4 + 1], 2);
  EXPECT_EQ(d[s0 * 4 + 2], RequestSlotTable::kUnusedPage);
  EXPECT_EQ(d[s1 * 4 + 3], 13);
  t.release(s1);  // released rows are cleared, so a stale id never reaches a kernel
  for (int i = 0; i < 4; ++i) EXPECT_EQ(d[s1 * 4 + i], RequestSlotTable::kUnusedPage);
  EXPECT_EQ(*t.acquire(), s1);
  EXPECT_EQ(t.num_pages(s1), 0);
}

TEST(RequestSlotTable, RejectsBadSizes) {
  EXPECT_THROW(RequestSlotTable(0, 4), std::invalid_argument);
  EXPECT_THROW(RequestSlotTable(4, 0), std::invalid_argument);
}

}  // namespace
}  // namespace pdserve::cache
