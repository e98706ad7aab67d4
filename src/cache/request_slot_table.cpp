#include "cache/request_slot_table.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace pdserve::cache {

RequestSlotTable::RequestSlotTable(int32_t max_requests, int32_t max_pages_per_request)
    : max_requests_(max_requests), max_pages_(max_pages_per_request) {
  if (max_requests <= 0 || max_pages_per_request <= 0)
    throw std::invalid_argument("RequestSlotTable: sizes must be positive, got " + std::to_string(max_requests) +
                                " x " + std::to_string(max_pages_per_request));
  table_.assign(static_cast<size_t>(max_requests) * static_cast<size_t>(max_pages_per_request), kUnusedPage);
  counts_.assign(static_cast<size_t>(max_requests), 0);
  in_use_.assign(static_cast<size_t>(max_requests), 0);
  free_.reserve(static_cast<size_t>(max_requests));
  for (int32_t s = max_requests - 1; s >= 0; --s) free_.push_back(s);
}

std::optional<int32_t> RequestSlotTable::acquire() {
  if (free_.empty()) return std::nullopt;
  const int32_t s = free_.back();
  free_.pop_back();
  in_use_[static_cast<size_t>(s)] = 1;
  return s;
}

void RequestSlotTable::check_in_use(int32_t slot, const char* what) const {
  if (slot < 0 || slot >= max_requests_ || !in_use_[static_cast<size_t>(slot)])
    throw std::logic_error(std::string("RequestSlotTable::") + what + ": slot " + std::to_string(slot) +
                           " is not in use");
}

bool RequestSlotTable::in_use(int32_t slot) const {
  return slot >= 0 && slot < max_requests_ && in_use_[static_cast<size_t>(slot)] != 0;
}

void RequestSlotTable::release(int32_t slot) {
  check_in_use(slot, "release");
  truncate(slot, 0);
  in_use_[static_cast<size_t>(slot)] = 0;
  free_.push_back(slot);
}

void RequestSlotTable::append(int32_t slot, std::span<const int32_t> pages) {
  check_in_use(slot, "append");
  int32_t& n = counts_[static_cast<size_t>(slot)];
  if (static_cast<int64_t>(n) + static_cast<int64_t>(pages.size()) > max_pages_)
    throw std::logic_error("RequestSlotTable::append: slot " + std::to_string(slot) + " would hold " +
                           std::to_string(n + static_cast<int64_t>(pages.size())) + " pages, max " +
                           std::to_string(max_pages_));
  std::copy(pages.begin(), pages.end(), row(slot) + n);
  n += static_cast<int32_t>(pages.size());
}

void RequestSlotTable::set(int32_t slot, int32_t index, int32_t page) {
  check_in_use(slot, "set");
  if (index < 0 || index >= counts_[static_cast<size_t>(slot)])
    throw std::logic_error("RequestSlotTable::set: index " + std::to_string(index) + " out of range for slot " +
                           std::to_string(slot));
  row(slot)[index] = page;
}

void RequestSlotTable::truncate(int32_t slot, int32_t new_size) {
  check_in_use(slot, "truncate");
  int32_t& n = counts_[static_cast<size_t>(slot)];
  if (new_size < 0 || new_size > n)
    throw std::logic_error("RequestSlotTable::truncate: size " + std::to_string(new_size) + " out of range for slot " +
                           std::to_string(slot));
  std::fill(row(slot) + new_size, row(slot) + n, kUnusedPage);
  n = new_size;
}

int32_t RequestSlotTable::num_pages(int32_t slot) const {
  check_in_use(slot, "num_pages");
  return counts_[static_cast<size_t>(slot)];
}

std::span<const int32_t> RequestSlotTable::pages(int32_t slot) const {
  check_in_use(slot, "pages");
  return {table_.data() + static_cast<int64_t>(slot) * max_pages_, static_cast<size_t>(counts_[static_cast<size_t>(slot)])};
}

}  // namespace pdserve::cache
