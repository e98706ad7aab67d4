// The cache_aware policy's picture of each worker's prefix cache: a radix tree over request text
// (bytes) shared by all workers, each node naming the workers ("tenants") that were sent text
// through it and when. It is approximate on purpose, as SGLang's: the router never hears what the
// worker really cached or evicted; it only remembers what it sent where, bounded per worker.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

namespace pdserve::router {

class ApproxTree {
 public:
  ApproxTree();
  ~ApproxTree();

  // Records that `text` was sent to `tenant` (refreshes its recency along the path).
  void insert(std::string_view text, const std::string& tenant);

  struct Match {
    std::size_t matched = 0;  // bytes of the longest prefix some accepted tenant was sent
    std::string tenant;       // the most recently used such tenant; empty if matched == 0
  };
  // `accept` limits the tenants considered (the available workers).
  Match prefix_match(std::string_view text, const std::function<bool(const std::string&)>& accept) const;

  // Bytes of text the tree attributes to `tenant`.
  std::size_t tenant_size(const std::string& tenant) const;
  std::map<std::string, std::size_t> tenant_sizes() const;
  // Drops least-recently-used text of every tenant above `max_size` bytes until it fits.
  void evict(std::size_t max_size);
  void remove_tenant(const std::string& tenant);

 private:
  struct Node;
  void prune(Node* node);

  mutable std::mutex mu_;
  std::unique_ptr<Node> root_;
  std::unordered_map<std::string, std::size_t> sizes_;
  uint64_t clock_ = 0;
};

}  // namespace pdserve::router
