#include "router/approx_tree.h"

#include <algorithm>
#include <vector>

namespace pdserve::router {

struct ApproxTree::Node {
  std::string edge;  // bytes from the parent to this node
  std::unordered_map<char, std::unique_ptr<Node>> children;
  std::unordered_map<std::string, uint64_t> tenants;  // tenant -> last use (tree clock)
  Node* parent = nullptr;
  std::size_t depth = 0;  // bytes from the root to the end of `edge`
};

ApproxTree::ApproxTree() : root_(std::make_unique<Node>()) {}
ApproxTree::~ApproxTree() = default;

namespace {
std::size_t common_prefix(std::string_view a, std::string_view b) {
  std::size_t n = std::min(a.size(), b.size()), i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return i;
}
}  // namespace

void ApproxTree::insert(std::string_view text, const std::string& tenant) {
  std::lock_guard lock(mu_);
  const uint64_t now = ++clock_;
  Node* node = root_.get();
  std::size_t pos = 0;
  auto& size = sizes_[tenant];
  while (pos < text.size()) {
    auto it = node->children.find(text[pos]);
    if (it == node->children.end()) {
      auto leaf = std::make_unique<Node>();
      leaf->edge = std::string(text.substr(pos));
      leaf->parent = node;
      leaf->depth = node->depth + leaf->edge.size();
      leaf->tenants[tenant] = now;
      size += leaf->edge.size();
      node->children.emplace(text[pos], std::move(leaf));
      return;
    }
    Node* child = it->second.get();
    std::size_t common = common_prefix(child->edge, text.substr(pos));
    if (common < child->edge.size()) {
      // Split: a middle node for the shared part keeps the child's tenants (they own both parts,
      // so their sizes do not change).
      auto mid = std::make_unique<Node>();
      mid->edge = child->edge.substr(0, common);
      mid->parent = node;
      mid->depth = node->depth + common;
      mid->tenants = child->tenants;
      std::unique_ptr<Node> owned = std::move(it->second);
      owned->edge.erase(0, common);
      owned->parent = mid.get();
      mid->children.emplace(owned->edge[0], std::move(owned));
      child = mid.get();
      it->second = std::move(mid);
    }
    auto [t, fresh] = child->tenants.try_emplace(tenant, now);
    if (fresh) {
      size += child->edge.size();
    } else {
      t->second = now;
    }
    node = child;
    pos += common;
  }
}

ApproxTree::Match ApproxTree::prefix_match(std::string_view text,
                                           const std::function<bool(const std::string&)>& accept) const {
  std::lock_guard lock(mu_);
  Match best;
  const Node* node = root_.get();
  std::size_t pos = 0;
  auto pick = [&](const Node* n, std::size_t matched) {
    uint64_t newest = 0;
    const std::string* who = nullptr;
    for (const auto& [tenant, ts] : n->tenants) {
      if (ts >= newest && accept(tenant)) {
        newest = ts;
        who = &tenant;
      }
    }
    if (who) best = Match{matched, *who};
  };
  while (pos < text.size()) {
    auto it = node->children.find(text[pos]);
    if (it == node->children.end()) break;
    const Node* child = it->second.get();
    std::size_t common = common_prefix(child->edge, text.substr(pos));
    pick(child, pos + common);
    if (common < child->edge.size()) break;
    node = child;
    pos += common;
  }
  return best;
}

std::size_t ApproxTree::tenant_size(const std::string& tenant) const {
  std::lock_guard lock(mu_);
  auto it = sizes_.find(tenant);
  return it == sizes_.end() ? 0 : it->second;
}

std::map<std::string, std::size_t> ApproxTree::tenant_sizes() const {
  std::lock_guard lock(mu_);
  return {sizes_.begin(), sizes_.end()};
}

void ApproxTree::prune(Node* node) {
  // Post-order: drops subtrees that no tenant owns any more; inner nodes with owned descendants
  // stay (they still join paths).
  for (auto it = node->children.begin(); it != node->children.end();) {
    prune(it->second.get());
    if (it->second->tenants.empty() && it->second->children.empty()) {
      it = node->children.erase(it);
    } else {
      ++it;
    }
  }
}

void ApproxTree::evict(std::size_t max_size) {
  std::lock_guard lock(mu_);
  for (auto& [tenant, size] : sizes_) {
    if (size <= max_size) continue;
    // A node is touched whenever a descendant is, so ancestors are never older than their
    // descendants: oldest first, deepest first among equals, removes a tenant's leaves first.
    std::vector<std::pair<uint64_t, Node*>> owned;
    std::vector<Node*> stack{root_.get()};
    while (!stack.empty()) {
      Node* n = stack.back();
      stack.pop_back();
      if (auto t = n->tenants.find(tenant); t != n->tenants.end()) owned.emplace_back(t->second, n);
      for (auto& [c, child] : n->children) stack.push_back(child.get());
    }
    std::sort(owned.begin(), owned.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first < b.first : a.second->depth > b.second->depth;
    });
    for (auto& [ts, n] : owned) {
      if (size <= max_size) break;
      n->tenants.erase(tenant);
      size -= std::min(size, n->edge.size());
    }
  }
  prune(root_.get());
}

void ApproxTree::remove_tenant(const std::string& tenant) {
  std::lock_guard lock(mu_);
  std::vector<Node*> stack{root_.get()};
  while (!stack.empty()) {
    Node* n = stack.back();
    stack.pop_back();
    n->tenants.erase(tenant);
    for (auto& [c, child] : n->children) stack.push_back(child.get());
  }
  prune(root_.get());
  sizes_.erase(tenant);
}

}  // namespace pdserve::router
