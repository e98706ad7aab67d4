// Storage for the paged latent KV cache of all layers, and a page allocator that can prove no page
// leaked. Radix prefix sharing and per-request accounting live above this (cache/); this class only
// owns memory and hands out page ids.
#pragma once

#include <cstdint>
#include <vector>

#include "base/status.h"
#include "tensor/tensor.h"

namespace pdserve::model {

class LatentKvPool {
 public:
  LatentKvPool(int64_t num_layers, int64_t num_pages, int64_t page_size, int64_t latent_dim);

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  int64_t num_pages() const { return num_pages_; }
  int64_t page_size() const { return page_size_; }
  int64_t latent_dim() const { return latent_dim_; }
  // [num_pages, page_size, latent_dim] f32 for one layer.
  Tensor& layer(int64_t l) { return layers_[static_cast<size_t>(l)]; }

  // Pages for `num_tokens` more tokens of a sequence that already has `existing` pages holding
  // `existing_tokens` tokens: appends to `page_table`. Fails (and allocates nothing) when the pool
  // is short.
  Status reserve(std::vector<int32_t>& page_table, int64_t existing_tokens, int64_t num_tokens);
  void release(std::vector<int32_t>& page_table);  // returns every page; clears the table
  int64_t free_pages() const { return static_cast<int64_t>(free_.size()); }
  int64_t used_pages() const { return num_pages_ - free_pages(); }

 private:
  int64_t num_pages_, page_size_, latent_dim_;
  std::vector<Tensor> layers_;
  std::vector<int32_t> free_;
  std::vector<uint8_t> in_use_;  // double-free detection
};

}  // namespace pdserve::model
