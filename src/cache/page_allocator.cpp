#include "cache/page_allocator.h"

#include <stdexcept>
#include <string>

namespace pdserve::cache {

PageAllocator::PageAllocator(int32_t num_pages, int32_t num_reserved)
    : num_pages_(num_pages), num_reserved_(num_reserved) {
  if (num_pages <= 0 || num_reserved < 0 || num_reserved >= num_pages)
    throw std::invalid_argument("PageAllocator: need 0 <= num_reserved < num_pages, got num_pages=" +
                                std::to_string(num_pages) + " num_reserved=" + std::to_string(num_reserved));
  free_.reserve(static_cast<size_t>(num_pages - num_reserved));
  // Pushed high to low so the lowest id comes out first: a fresh server fills the pool from the
  // start, which makes logs and tests readable.
  for (int32_t p = num_pages - 1; p >= num_reserved; --p) free_.push_back(p);
  allocated_.assign(static_cast<size_t>(num_pages), 0);
}

bool PageAllocator::allocate_append(int64_t n, std::vector<int32_t>& out) {
  if (n < 0) throw std::logic_error("PageAllocator::allocate: negative count " + std::to_string(n));
  if (n > free_count()) return false;
  out.reserve(out.size() + static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const int32_t p = free_.back();
    free_.pop_back();
    allocated_[static_cast<size_t>(p)] = 1;
    out.push_back(p);
  }
  return true;
}

std::optional<std::vector<int32_t>> PageAllocator::allocate(int64_t n) {
  std::vector<int32_t> out;
  if (!allocate_append(n, out)) return std::nullopt;
  return out;
}

void PageAllocator::free(std::span<const int32_t> pages) {
  size_t done = 0;
  for (; done < pages.size(); ++done) {
    const int32_t p = pages[done];
    if (!is_allocated(p)) break;
    allocated_[static_cast<size_t>(p)] = 0;  // a repeat later in `pages` now fails the check
  }
  if (done == pages.size()) {
    free_.insert(free_.end(), pages.begin(), pages.end());
    return;
  }
  // Roll back so the caller's bug leaves a consistent allocator behind (tests can keep auditing).
  for (size_t i = 0; i < done; ++i) allocated_[static_cast<size_t>(pages[i])] = 1;
  const int32_t bad = pages[done];
  const char* why = (bad < num_reserved_ || bad >= num_pages_) ? "is not a page of this allocator"
                                                               : "is not allocated (double free?)";
  throw std::logic_error("PageAllocator::free: page " + std::to_string(bad) + " " + why);
}

bool PageAllocator::is_allocated(int32_t page) const {
  return page >= num_reserved_ && page < num_pages_ && allocated_[static_cast<size_t>(page)] != 0;
}

bool PageAllocator::is_free(int32_t page) const {
  return page >= num_reserved_ && page < num_pages_ && allocated_[static_cast<size_t>(page)] == 0;
}

}  // namespace pdserve::cache
