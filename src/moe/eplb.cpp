#include "moe/eplb.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <queue>
#include <utility>

namespace pdserve::moe {

Packing balanced_packing(std::span<const double> weight, int num_packs) {
  const int n = static_cast<int>(weight.size());
  const int per_pack = n / num_packs;
  Packing out;
  out.pack_index.assign(n, -1);
  out.rank_in_pack.assign(n, -1);
  if (per_pack == 1) {
    std::iota(out.pack_index.begin(), out.pack_index.end(), 0);
    std::fill(out.rank_in_pack.begin(), out.rank_in_pack.end(), 0);
    return out;
  }
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return weight[a] > weight[b]; });
  // The open packs ordered by (weight, index): the lightest first and, on a tie, the lowest index,
  // which is the reference's linear min(); a full pack leaves the heap. O(n log packs) matters for
  // the global policy (288 copies over 72 GPUs per layer).
  using Pack = std::pair<double, int>;
  std::priority_queue<Pack, std::vector<Pack>, std::greater<Pack>> open;
  for (int p = 0; p < num_packs; ++p) open.emplace(0.0, p);
  std::vector<int> pack_items(num_packs, 0);
  for (int item : order) {
    auto [load, best] = open.top();
    open.pop();
    out.pack_index[item] = best;
    out.rank_in_pack[item] = pack_items[best]++;
    if (pack_items[best] < per_pack) open.emplace(load + weight[item], best);
  }
  return out;
}

Replication replicate_experts(std::span<const double> weight, int num_physical) {
  const int n = static_cast<int>(weight.size());
  Replication out;
  out.physical_to_logical.resize(num_physical);
  out.replica_rank.assign(num_physical, 0);
  out.logical_count.assign(n, 1);
  std::iota(out.physical_to_logical.begin(), out.physical_to_logical.begin() + n, 0);
  for (int slot = n; slot < num_physical; ++slot) {
    int best = 0;
    double best_load = weight[0] / out.logical_count[0];
    for (int e = 1; e < n; ++e) {
      double load = weight[e] / out.logical_count[e];
      if (load > best_load) best = e, best_load = load;
    }
    out.physical_to_logical[slot] = best;
    out.replica_rank[slot] = out.logical_count[best]++;
  }
  return out;
}

Result<EplbAlgorithm> parse_eplb_algorithm(const std::string& name) {
  if (name == "deepseek") return EplbAlgorithm::kDeepseek;
  if (name == "deepseek_hierarchical") return EplbAlgorithm::kDeepseekHierarchical;
  if (name == "auto") return EplbAlgorithm::kAuto;
  return make_error(ErrorCode::kInvalidArgument,
                    "--eplb-algorithm must be deepseek, deepseek_hierarchical or auto, got '{}'", name);
}

const char* eplb_algorithm_name(EplbAlgorithm a) {
  switch (a) {
    case EplbAlgorithm::kDeepseek: return "deepseek";
    case EplbAlgorithm::kDeepseekHierarchical: return "deepseek_hierarchical";
    case EplbAlgorithm::kAuto: return "auto";
  }
  return "?";
}

EplbAlgorithm resolve_eplb_algorithm(const EplbOptions& opts) {
  if (opts.algorithm != EplbAlgorithm::kAuto) return opts.algorithm;
  return opts.num_nodes > 0 && opts.num_groups % opts.num_nodes == 0 ? EplbAlgorithm::kDeepseekHierarchical
                                                                     : EplbAlgorithm::kDeepseek;
}

namespace {

std::vector<int> inverse(const std::vector<int>& perm) {
  std::vector<int> inv(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) inv[static_cast<size_t>(perm[i])] = static_cast<int>(i);
  return inv;
}

struct LayerResult {
  std::vector<int> phy2log, phyrank, logcnt;
};

// rebalance_experts_hierarchical for one layer. The global policy is this with one group and one
// node. Index spaces: "log" = logical expert, "mlog" = logical expert renumbered so that each
// node's experts are contiguous, "phy" = a node-local replica slot before packing, "pphy" = the
// final physical slot.
LayerResult place_layer(std::span<const double> w, int num_physical, int num_groups, int num_nodes, int num_gpus) {
  const int n = static_cast<int>(w.size());
  const int group_size = n / num_groups;
  const int groups_per_node = num_groups / num_nodes;
  const int phy_per_gpu = num_physical / num_gpus;
  const int log_per_node = n / num_nodes;
  const int phy_per_node = num_physical / num_nodes;

  // Step 1: whole groups onto nodes, so a token's experts (chosen inside few groups) stay on few nodes.
  std::vector<double> group_load(num_groups, 0.0);
  for (int e = 0; e < n; ++e) group_load[e / group_size] += w[e];
  Packing groups = balanced_packing(group_load, num_nodes);
  std::vector<int> log2mlog(n);
  for (int e = 0; e < n; ++e) {
    int g = e / group_size;
    log2mlog[e] = (groups.pack_index[g] * groups_per_node + groups.rank_in_pack[g]) * group_size + e % group_size;
  }
  std::vector<int> mlog2log = inverse(log2mlog);

  LayerResult out;
  out.phy2log.resize(num_physical);
  out.phyrank.resize(num_physical);
  std::vector<int> mlogcnt(n);
  for (int node = 0; node < num_nodes; ++node) {
    // Step 2: copies of the node's hottest experts inside the node.
    std::vector<double> node_load(log_per_node);
    for (int j = 0; j < log_per_node; ++j) node_load[j] = w[mlog2log[node * log_per_node + j]];
    Replication rep = replicate_experts(node_load, phy_per_node);
    for (int j = 0; j < log_per_node; ++j) mlogcnt[node * log_per_node + j] = rep.logical_count[j];

    // Step 3: copies (each carrying its share of the expert's load) onto the node's GPUs.
    std::vector<double> copy_load(phy_per_node);
    for (int j = 0; j < phy_per_node; ++j) {
      int m = rep.physical_to_logical[j];
      copy_load[j] = node_load[m] / rep.logical_count[m];
    }
    Packing gpus = balanced_packing(copy_load, num_gpus / num_nodes);
    std::vector<int> phy2pphy(phy_per_node);
    for (int j = 0; j < phy_per_node; ++j) phy2pphy[j] = gpus.pack_index[j] * phy_per_gpu + gpus.rank_in_pack[j];
    std::vector<int> pphy2phy = inverse(phy2pphy);
    for (int q = 0; q < phy_per_node; ++q) {
      int j = pphy2phy[q];
      out.phy2log[node * phy_per_node + q] = mlog2log[rep.physical_to_logical[j] + node * log_per_node];
      out.phyrank[node * phy_per_node + q] = rep.replica_rank[j];
    }
  }
  out.logcnt.resize(n);
  for (int e = 0; e < n; ++e) out.logcnt[e] = mlogcnt[log2mlog[e]];
  return out;
}

}  // namespace

Result<Placement> rebalance_experts(const Matrix& weight, const EplbOptions& opts) {
  const int64_t n = weight.cols;
  if (weight.rows < 1 || n < 1)
    return make_error(ErrorCode::kInvalidArgument, "EPLB: the load matrix is empty ({} layers x {} experts)",
                      weight.rows, n);
  if (opts.num_gpus < 1 || opts.num_nodes < 1 || opts.num_groups < 1)
    return make_error(ErrorCode::kInvalidArgument,
                      "EPLB: ep size ({}), nodes ({}) and groups ({}) must be at least 1", opts.num_gpus,
                      opts.num_nodes, opts.num_groups);
  if (opts.num_physical_experts < n)
    return make_error(ErrorCode::kInvalidArgument, "EPLB: {} physical experts cannot hold {} logical experts",
                      opts.num_physical_experts, n);
  if (opts.num_physical_experts % opts.num_gpus != 0)
    return make_error(ErrorCode::kInvalidArgument,
                      "EPLB: {} physical experts (logical + redundant) must be a multiple of the ep size {}",
                      opts.num_physical_experts, opts.num_gpus);
  for (double v : weight.values)
    if (!std::isfinite(v) || v < 0)
      return make_error(ErrorCode::kInvalidArgument, "EPLB: loads must be finite and non-negative, got {}", v);

  int groups = opts.num_groups, nodes = opts.num_nodes;
  EplbAlgorithm algo = resolve_eplb_algorithm(opts);
  if (algo == EplbAlgorithm::kDeepseek) {
    groups = 1;
    nodes = 1;
  } else {
    if (n % groups != 0)
      return make_error(ErrorCode::kInvalidArgument, "EPLB: {} experts are not divisible into {} groups", n, groups);
    if (groups % nodes != 0)
      return make_error(ErrorCode::kInvalidArgument,
                        "EPLB: deepseek_hierarchical needs the groups ({}) divisible by the nodes ({}); use "
                        "--eplb-algorithm deepseek",
                        groups, nodes);
    if (opts.num_gpus % nodes != 0)
      return make_error(ErrorCode::kInvalidArgument, "EPLB: ep size {} is not a multiple of the nodes {}",
                        opts.num_gpus, nodes);
  }

  Placement out;
  out.num_layers = static_cast<int>(weight.rows);
  out.num_logical = static_cast<int>(n);
  out.num_physical = opts.num_physical_experts;
  std::vector<LayerResult> layers;
  layers.reserve(static_cast<size_t>(weight.rows));
  int max_copies = 1;
  for (int64_t l = 0; l < weight.rows; ++l) {
    layers.push_back(place_layer(weight.row(l), opts.num_physical_experts, groups, nodes, opts.num_gpus));
    max_copies = std::max(max_copies, *std::max_element(layers.back().logcnt.begin(), layers.back().logcnt.end()));
  }
  for (auto& lr : layers) {
    std::vector<std::vector<int>> l2p(static_cast<size_t>(n), std::vector<int>(max_copies, -1));
    for (int p = 0; p < out.num_physical; ++p) l2p[lr.phy2log[p]][lr.phyrank[p]] = p;
    out.logical_to_physical.push_back(std::move(l2p));
    out.physical_to_logical.push_back(std::move(lr.phy2log));
    out.logical_count.push_back(std::move(lr.logcnt));
  }
  return out;
}

Result<Balancedness> compute_balancedness(const Matrix& weight,
                                          const std::vector<std::vector<int>>& physical_to_logical,
                                          int num_gpus) {
  if (static_cast<int64_t>(physical_to_logical.size()) != weight.rows)
    return make_error(ErrorCode::kInvalidArgument, "balancedness: the placement has {} layers, the loads {}",
                      physical_to_logical.size(), weight.rows);
  Balancedness out;
  out.per_layer.assign(static_cast<size_t>(weight.rows), 1.0);
  double sum = 0;
  int loaded_layers = 0;
  for (int64_t l = 0; l < weight.rows; ++l) {
    const auto& p2l = physical_to_logical[static_cast<size_t>(l)];
    const int num_physical = static_cast<int>(p2l.size());
    if (num_gpus < 1 || num_physical % num_gpus != 0)
      return make_error(ErrorCode::kInvalidArgument, "balancedness: {} physical experts over {} GPUs",
                        num_physical, num_gpus);
    std::vector<int> copies(static_cast<size_t>(weight.cols), 0);
    for (int e : p2l) {
      if (e < 0 || e >= weight.cols)
        return make_error(ErrorCode::kInvalidArgument, "balancedness: logical expert {} out of range [0, {})", e,
                          weight.cols);
      ++copies[static_cast<size_t>(e)];
    }
    std::vector<double> gpu(static_cast<size_t>(num_gpus), 0.0);
    const int per_gpu = num_physical / num_gpus;
    for (int p = 0; p < num_physical; ++p) gpu[p / per_gpu] += weight.at(l, p2l[p]) / copies[p2l[p]];
    double mx = *std::max_element(gpu.begin(), gpu.end());
    double mean = std::accumulate(gpu.begin(), gpu.end(), 0.0) / num_gpus;
    // An expert with load but no copy would silently drop tokens from the figure.
    for (int64_t e = 0; e < weight.cols; ++e)
      if (copies[static_cast<size_t>(e)] == 0 && weight.at(l, e) > 0)
        return make_error(ErrorCode::kInvalidArgument, "balancedness: layer {} has load on expert {} but no copy", l,
                          e);
    out.max_gpu_load += mx;
    out.mean_gpu_load += mean;
    if (mx > 0) {
      out.per_layer[static_cast<size_t>(l)] = mean / mx;
      sum += mean / mx;
      ++loaded_layers;
    }
  }
  out.mean = loaded_layers ? sum / loaded_layers : 1.0;
  return out;
}

}  // namespace pdserve::moe
