// Fixed-capacity table request slot -> KV page ids (SGLang's req_to_token_pool, at page
// granularity). The storage is one contiguous row-major int32 array [max_requests,
// max_pages_per_request] so the scheduler can mirror it to the GPU with one copy and CUDA graphs
// can index it by slot without pointer chasing.
//
// The table only records ids; it never frees pages (KvCacheManager decides who owns each entry).
// Entries past num_pages(slot) hold kUnusedPage. Misuse (releasing a free slot, overflowing a row,
// touching a slot that is not acquired) is a caller bug and throws std::logic_error.
//
// Not thread safe.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace pdserve::cache {

class RequestSlotTable {
 public:
  static constexpr int32_t kUnusedPage = -1;

  // Throws std::invalid_argument unless both sizes are positive.
  RequestSlotTable(int32_t max_requests, int32_t max_pages_per_request);

  int32_t max_requests() const { return max_requests_; }
  int32_t max_pages_per_request() const { return max_pages_; }
  int32_t free_slots() const { return static_cast<int32_t>(free_.size()); }
  int32_t used_slots() const { return max_requests_ - free_slots(); }

  // A free slot with zero pages, or nullopt when all are in use. Lowest ids first at start; later
  // the most recently released slot first.
  std::optional<int32_t> acquire();
  // Marks the slot free and resets its row to kUnusedPage. The pages are NOT freed here.
  void release(int32_t slot);
  bool in_use(int32_t slot) const;

  // Appends page ids to the slot's row; throws std::logic_error past max_pages_per_request().
  void append(int32_t slot, std::span<const int32_t> pages);
  // Replaces entry `index` (< num_pages(slot)); used when a page is swapped for the radix tree's
  // copy of the same prefix.
  void set(int32_t slot, int32_t index, int32_t page);
  // Drops entries from `new_size` on (they become kUnusedPage).
  void truncate(int32_t slot, int32_t new_size);

  int32_t num_pages(int32_t slot) const;
  std::span<const int32_t> pages(int32_t slot) const;

  // The whole table for a device mirror: row `slot` starts at data() + slot * row_stride().
  const int32_t* data() const { return table_.data(); }
  int64_t row_stride() const { return max_pages_; }

 private:
  void check_in_use(int32_t slot, const char* what) const;
  int32_t* row(int32_t slot) { return table_.data() + static_cast<int64_t>(slot) * max_pages_; }

  int32_t max_requests_, max_pages_;
  std::vector<int32_t> table_;   // [max_requests, max_pages]
  std::vector<int32_t> counts_;  // pages per slot
  std::vector<uint8_t> in_use_;
  std::vector<int32_t> free_;    // stack of free slots
};

}  // namespace pdserve::cache
