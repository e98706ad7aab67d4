// Hands out KV page ids [num_reserved, num_pages) of one LatentKvPool (model/kv_pool.h) and takes
// them back. It owns no memory: the pool's tensors are addressed by these ids.
//
// Ownership rule of the whole cache module: at any moment a page id is in exactly one of
//   free (here) | owned by one running request (KvCacheManager slot) | owned by the radix tree.
// This class is the "free" part and the only place pages are created or destroyed, so every
// transfer between the other two owners goes through allocate()/free() or is a pure hand-over.
//
// Misuse (double free, a page id that was never handed out) is a bug in the caller and throws
// std::logic_error: continuing would let two sequences write one page and silently corrupt output.
// Running out of pages is a normal condition and is a value (std::nullopt / false).
//
// Not thread safe: one allocator per scheduler (per attention-DP rank).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace pdserve::cache {

class PageAllocator {
 public:
  // Pages [0, num_reserved) are never handed out and are not counted anywhere (capacity() excludes
  // them): e.g. page 0 as the write target of padded rows in CUDA-graph batches, as SGLang keeps
  // slot 0. Throws std::invalid_argument unless 0 <= num_reserved < num_pages.
  explicit PageAllocator(int32_t num_pages, int32_t num_reserved = 0);

  int32_t num_pages() const { return num_pages_; }        // ids are < num_pages()
  int32_t num_reserved() const { return num_reserved_; }
  int64_t capacity() const { return num_pages_ - num_reserved_; }  // pages this allocator manages
  int64_t free_count() const { return static_cast<int64_t>(free_.size()); }
  int64_t used_count() const { return capacity() - free_count(); }

  // n pages, all or nothing; nullopt (nothing allocated) when fewer than n are free. O(n).
  std::optional<std::vector<int32_t>> allocate(int64_t n);
  // Same, appending to `out` (no temporary vector on the hot path). false: `out` untouched.
  bool allocate_append(int64_t n, std::vector<int32_t>& out);

  // Returns pages. Throws std::logic_error if any id is out of range, reserved, already free, or
  // repeated in `pages`; then no page of this call is freed (the state stays consistent). O(n).
  void free(std::span<const int32_t> pages);
  void free(int32_t page) { free(std::span<const int32_t>(&page, 1)); }

  bool is_allocated(int32_t page) const;  // false for out-of-range and reserved ids
  bool is_free(int32_t page) const;       // false for out-of-range and reserved ids

 private:
  int32_t num_pages_, num_reserved_;
  // LIFO: a just-freed page is reused first (its lines are likely still warm in L2).
  std::vector<int32_t> free_;
  std::vector<uint8_t> allocated_;  // per page id; detects double free / foreign ids in O(1)
};

}  // namespace pdserve::cache
