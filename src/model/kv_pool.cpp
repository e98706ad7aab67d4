#include "model/kv_pool.h"

#include <stdexcept>

namespace pdserve::model {

LatentKvPool::LatentKvPool(int64_t num_layers, int64_t num_pages, int64_t page_size, int64_t latent_dim)
    : num_pages_(num_pages), page_size_(page_size), latent_dim_(latent_dim) {
  if (num_layers <= 0 || num_pages <= 0 || page_size <= 0 || latent_dim <= 0)
    throw std::invalid_argument("LatentKvPool: all sizes must be positive");
  for (int64_t l = 0; l < num_layers; ++l) layers_.push_back(Tensor::empty({num_pages, page_size, latent_dim}, DType::kF32));
  free_.reserve(static_cast<size_t>(num_pages));
  for (int64_t p = num_pages - 1; p >= 0; --p) free_.push_back(static_cast<int32_t>(p));  // page 0 first
  in_use_.assign(static_cast<size_t>(num_pages), 0);
}

Status LatentKvPool::reserve(std::vector<int32_t>& page_table, int64_t existing_tokens, int64_t num_tokens) {
  const int64_t need_total = (existing_tokens + num_tokens + page_size_ - 1) / page_size_;
  const int64_t have = static_cast<int64_t>(page_table.size());
  const int64_t need = need_total - have;
  if (need <= 0) return ok_status();
  if (need > free_pages())
    return make_error(ErrorCode::kInvalidArgument, "KV cache is full: need {} pages of {} tokens, {} free of {}", need,
                      page_size_, free_pages(), num_pages_);
  for (int64_t i = 0; i < need; ++i) {
    int32_t p = free_.back();
    free_.pop_back();
    in_use_[static_cast<size_t>(p)] = 1;
    page_table.push_back(p);
  }
  return ok_status();
}

void LatentKvPool::release(std::vector<int32_t>& page_table) {
  for (int32_t p : page_table) {
    if (p < 0 || p >= num_pages_ || !in_use_[static_cast<size_t>(p)])
      throw std::logic_error("LatentKvPool::release: page " + std::to_string(p) + " is not allocated");
    in_use_[static_cast<size_t>(p)] = 0;
    free_.push_back(p);
  }
  page_table.clear();
}

}  // namespace pdserve::model
