#include "moe/expert_distribution.h"

#include <cstdlib>
#include <set>
#include <utility>

#include "base/clock.h"
#include "base/json.h"
#include "base/logging.h"
#include "model/safetensors.h"

namespace pdserve::moe {

Result<RecorderMode> parse_recorder_mode(const std::string& name) {
  if (name == "stat" || name == "stat_approx") return RecorderMode::kStat;
  if (name == "per_pass") return RecorderMode::kPerPass;
  if (name == "per_token") return RecorderMode::kPerToken;
  return make_error(ErrorCode::kInvalidArgument,
                    "--expert-distribution-recorder-mode must be stat, stat_approx, per_pass or per_token, got '{}'",
                    name);
}

const char* recorder_mode_name(RecorderMode m) {
  switch (m) {
    case RecorderMode::kStat: return "stat";
    case RecorderMode::kPerPass: return "per_pass";
    case RecorderMode::kPerToken: return "per_token";
  }
  return "?";
}

std::filesystem::path expert_distribution_dir_from_env() {
  for (const char* name : {"SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR", "PDSERVE_EXPERT_DISTRIBUTION_RECORDER_DIR"})
    if (const char* v = std::getenv(name); v && *v) return v;
  return "/tmp";
}

Result<std::unique_ptr<ExpertDistributionRecorder>> ExpertDistributionRecorder::create(RecorderOptions opts) {
  PDSERVE_RETURN_IF_ERROR(opts.layout.validate());
  if (opts.buffer_size == 0 || opts.buffer_size < -1)
    return make_error(ErrorCode::kInvalidArgument,
                      "--expert-distribution-recorder-buffer-size must be positive or -1 (unbounded), got {}",
                      opts.buffer_size);
  return std::unique_ptr<ExpertDistributionRecorder>(new ExpertDistributionRecorder(std::move(opts)));
}

void ExpertDistributionRecorder::start() {
  std::lock_guard lock(mu_);
  passes_.clear();
  folded_ = {};
  folded_passes_ = 0;
  folded_max_id_ = -1;
  recording_ = true;
  start_time_ = Clock::unix_seconds();
}

void ExpertDistributionRecorder::stop() {
  std::lock_guard lock(mu_);
  recording_ = false;
}

bool ExpertDistributionRecorder::recording() const {
  std::lock_guard lock(mu_);
  return recording_;
}

int64_t ExpertDistributionRecorder::num_passes() const {
  std::lock_guard lock(mu_);
  std::set<int64_t> ids;
  for (const auto& p : passes_)
    if (p.forward_pass_id > folded_max_id_) ids.insert(p.forward_pass_id);
  return folded_passes_ + static_cast<int64_t>(ids.size());
}

Result<std::vector<int64_t>> physical_counts_of(const PassRouting& pass, const ExpertLayout& lay) {
  std::vector<int64_t> counts(static_cast<size_t>(lay.num_layers) * lay.num_physical, 0);
  for (const auto& [layer, ids] : pass.physical_ids) {
    if (layer < 0 || layer >= lay.num_layers)
      return make_error(ErrorCode::kInvalidArgument, "expert recorder: layer {} outside [0, {})", layer, lay.num_layers);
    for (int32_t id : ids) {
      if (id < 0 || id >= lay.num_physical)
        return make_error(ErrorCode::kInvalidArgument, "expert recorder: layer {} physical expert {} outside [0, {})",
                          layer, id, lay.num_physical);
      ++counts[static_cast<size_t>(layer) * lay.num_physical + id];
    }
  }
  for (const auto& [layer, row] : pass.physical_counts) {
    if (layer < 0 || layer >= lay.num_layers)
      return make_error(ErrorCode::kInvalidArgument, "expert recorder: layer {} outside [0, {})", layer, lay.num_layers);
    if (static_cast<int64_t>(row.size()) != lay.num_physical)
      return make_error(ErrorCode::kInvalidArgument, "expert recorder: layer {} has {} counts for {} physical experts",
                        layer, row.size(), lay.num_physical);
    for (size_t p = 0; p < row.size(); ++p) {
      if (row[p] < 0)
        return make_error(ErrorCode::kInvalidArgument, "expert recorder: layer {} physical expert {} count {}", layer, p,
                          row[p]);
      counts[static_cast<size_t>(layer) * lay.num_physical + p] += row[p];
    }
  }
  return counts;
}

Status ExpertDistributionRecorder::record(const PassRouting& pass) {
  if (!recording()) return ok_status();
  // Count outside the lock: ranks record concurrently.
  PDSERVE_ASSIGN_OR_RETURN(std::vector<int64_t> counts, physical_counts_of(pass, opts_.layout));
  return record(pass, std::move(counts));
}

Status ExpertDistributionRecorder::record(const PassRouting& pass, std::vector<int64_t> counts) {
  const ExpertLayout& lay = opts_.layout;
  if (counts.size() != static_cast<size_t>(lay.num_layers) * lay.num_physical)
    return make_error(ErrorCode::kInvalidArgument, "expert recorder: {} counts for {} layers x {} physical experts",
                      counts.size(), lay.num_layers, lay.num_physical);
  nlohmann::json token_record;
  if (opts_.mode == RecorderMode::kPerToken) {
    // topk_ids_of_layer[layers][tokens][top_k]; layers without routing (dense) are -1.
    size_t tokens = 0;
    for (const auto& [layer, ids] : pass.physical_ids)
      if (pass.top_k > 0) tokens = std::max(tokens, ids.size() / static_cast<size_t>(pass.top_k));
    nlohmann::json topk = nlohmann::json::array();
    for (int l = 0; l < lay.num_layers; ++l) {
      nlohmann::json rows = nlohmann::json::array();
      auto it = pass.physical_ids.find(l);
      for (size_t t = 0; t < tokens; ++t) {
        nlohmann::json row = nlohmann::json::array();
        for (int k = 0; k < pass.top_k; ++k) {
          size_t at = t * pass.top_k + k;
          row.push_back(it != pass.physical_ids.end() && at < it->second.size() ? it->second[at] : -1);
        }
        rows.push_back(std::move(row));
      }
      topk.push_back(std::move(rows));
    }
    token_record = {{"topk_ids_of_layer", std::move(topk)},
                    {"input_ids", pass.input_ids},
                    {"positions", pass.positions},
                    {"forward_mode", pass.forward_mode}};
  }

  std::lock_guard lock(mu_);
  if (!recording_) return ok_status();
  if (opts_.mode == RecorderMode::kStat) {
    for (auto it = passes_.rbegin(); it != passes_.rend(); ++it)
      if (it->forward_pass_id == pass.forward_pass_id) {
        for (size_t i = 0; i < counts.size(); ++i) it->physical[i] += counts[i];
        return ok_status();
      }
    passes_.push_back({pass.forward_pass_id, -1, std::move(counts), {}});
  } else {
    passes_.push_back({pass.forward_pass_id, pass.rank, std::move(counts), std::move(token_record)});
  }
  trim_locked();
  return ok_status();
}

void ExpertDistributionRecorder::trim_locked() {
  if (opts_.buffer_size < 0) {
    // The last few passes stay separate so that ranks still running them add to their own entry;
    // a rank that lags further only makes a second entry for its pass, which folds the same way.
    constexpr size_t kUnfolded = 8;
    if (opts_.mode != RecorderMode::kStat) return;
    while (passes_.size() > kUnfolded) {
      PassCounts& old = passes_.front();
      const int64_t id = old.forward_pass_id;
      if (folded_.physical.empty()) {
        folded_ = std::move(old);
      } else {
        for (size_t i = 0; i < old.physical.size(); ++i) folded_.physical[i] += old.physical[i];
      }
      if (id > folded_max_id_) ++folded_passes_, folded_max_id_ = id;
      passes_.pop_front();
    }
    return;
  }
  std::set<int64_t> ids;
  for (const auto& p : passes_) ids.insert(p.forward_pass_id);
  // Drop the oldest passes (all their ranks' records) beyond the window.
  while (static_cast<int64_t>(ids.size()) > opts_.buffer_size) {
    int64_t oldest = *ids.begin();
    ids.erase(ids.begin());
    std::erase_if(passes_, [&](const PassCounts& p) { return p.forward_pass_id == oldest; });
  }
}

Matrix ExpertDistributionRecorder::logical_of(const std::vector<int64_t>& physical, const ExpertLocation& location) const {
  const ExpertLayout& lay = opts_.layout;
  Matrix m(lay.num_layers, lay.num_logical);
  for (int l = 0; l < lay.num_layers; ++l)
    for (int p = 0; p < lay.num_physical; ++p)
      m.at(l, location.logical_of(l, p)) += static_cast<double>(physical[static_cast<size_t>(l) * lay.num_physical + p]);
  return m;
}

Matrix ExpertDistributionRecorder::window_logical_counts(const ExpertLocation& location) const {
  std::lock_guard lock(mu_);
  std::vector<int64_t> sum(static_cast<size_t>(opts_.layout.num_layers) * opts_.layout.num_physical, 0);
  for (size_t i = 0; i < folded_.physical.size(); ++i) sum[i] += folded_.physical[i];
  for (const auto& p : passes_)
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += p.physical[i];
  return logical_of(sum, location);
}

namespace {

nlohmann::json rows_of(const std::vector<int64_t>& flat, int rows, int cols) {
  nlohmann::json out = nlohmann::json::array();
  for (int r = 0; r < rows; ++r)
    out.push_back(std::vector<int64_t>(flat.begin() + static_cast<std::ptrdiff_t>(r) * cols,
                                       flat.begin() + static_cast<std::ptrdiff_t>(r + 1) * cols));
  return out;
}

}  // namespace

nlohmann::json ExpertDistributionRecorder::dump(const ExpertLocation& location) {
  const ExpertLayout& lay = opts_.layout;
  std::deque<PassCounts> passes;
  PassCounts folded;
  int64_t folded_passes, folded_max;
  double start_time;
  {
    std::lock_guard lock(mu_);
    passes.swap(passes_);
    std::swap(folded, folded_);
    folded_passes = std::exchange(folded_passes_, 0);
    folded_max = std::exchange(folded_max_id_, -1);
    start_time = start_time_;
    start_time_ = Clock::unix_seconds();
  }
  // One logical_count row per forward pass, ranks summed.
  std::map<int64_t, std::vector<int64_t>> per_pass;
  if (!folded.physical.empty()) per_pass[folded.forward_pass_id] = folded.physical;
  for (const auto& p : passes) {
    auto& sum = per_pass[p.forward_pass_id];
    if (sum.empty()) sum.assign(p.physical.size(), 0);
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += p.physical[i];
  }
  std::set<int64_t> newer;
  for (const auto& p : passes)
    if (p.forward_pass_id > folded_max) newer.insert(p.forward_pass_id);
  const int64_t num_passes = folded_passes + static_cast<int64_t>(newer.size());
  const nlohmann::json first_id = per_pass.empty() ? nlohmann::json(nullptr) : nlohmann::json(per_pass.begin()->first);
  const nlohmann::json last_id = per_pass.empty() ? nlohmann::json(nullptr) : nlohmann::json(per_pass.rbegin()->first);
  if (opts_.mode == RecorderMode::kStat && opts_.buffer_size < 0 && per_pass.size() > 1) {
    // Unbounded stat: one row, the sum of every pass.
    auto& total = per_pass.begin()->second;
    for (auto it = std::next(per_pass.begin()); it != per_pass.end(); ++it)
      for (size_t i = 0; i < total.size(); ++i) total[i] += it->second[i];
    per_pass.erase(std::next(per_pass.begin()), per_pass.end());
  }
  nlohmann::json logical = nlohmann::json::array();
  for (const auto& [id, phys] : per_pass) {
    Matrix m = logical_of(phys, location);
    std::vector<int64_t> flat(m.values.begin(), m.values.end());
    logical.push_back(rows_of(flat, lay.num_layers, lay.num_logical));
  }
  nlohmann::json out = {
      {"rank", 0},
      {"logical_count", std::move(logical)},
      {"average_utilization_rate_over_window", nullptr},
      {"metadata",
       {{"model", opts_.model},
        {"mode", recorder_mode_name(opts_.mode)},
        {"num_layers", lay.num_layers},
        {"num_logical_experts", lay.num_logical},
        {"num_physical_experts", lay.num_physical},
        {"ep_size", lay.ep_size},
        {"num_groups", opts_.num_groups > 0 ? nlohmann::json(opts_.num_groups) : nlohmann::json(nullptr)},
        {"buffer_size", opts_.buffer_size},
        {"num_passes", num_passes},
        {"first_forward_pass_id", first_id},
        {"last_forward_pass_id", last_id},
        {"start_time", start_time},
        {"dump_time", Clock::unix_seconds()}}},
  };
  if (opts_.mode != RecorderMode::kStat) {
    nlohmann::json records = nlohmann::json::array();
    for (const auto& p : passes) {
      nlohmann::json r = {{"forward_pass_id", p.forward_pass_id},
                          {"rank", p.rank},
                          {"gatherer_key", "primary"},
                          {"global_physical_count", rows_of(p.physical, lay.num_layers, lay.num_physical)}};
      if (opts_.mode == RecorderMode::kPerToken) r.update(p.token_record);
      records.push_back(std::move(r));
    }
    out["records"] = std::move(records);
    out["last_physical_to_logical_map"] = location.physical_to_logical();
  }
  return out;
}

Result<std::filesystem::path> ExpertDistributionRecorder::dump_to_dir(const std::filesystem::path& dir,
                                                                      const ExpertLocation& location) {
  return write_dump(dir, dump(location));
}

Result<std::filesystem::path> ExpertDistributionRecorder::write_dump(const std::filesystem::path& dir,
                                                                     const nlohmann::json& j) const {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return make_error(ErrorCode::kIo, "cannot create {}: {}", dir.string(), ec.message());
  // The name carries Python's time.time() text, like SGLang's .pt dumps.
  std::string stem = fmt::format("expert_distribution_recorder_{}", Clock::unix_seconds());
  std::filesystem::path json_path = dir / (stem + ".json");
  PDSERVE_RETURN_IF_ERROR(write_json_file(json_path, j, -1));

  const auto& lc = j.at("logical_count");
  const int64_t passes = static_cast<int64_t>(lc.size());
  Tensor t = Tensor::empty({passes, opts_.layout.num_layers, opts_.layout.num_logical}, DType::kI64);
  int64_t* dst = t.data<int64_t>();
  for (const auto& pass : lc)
    for (const auto& row : pass)
      for (const auto& v : row) *dst++ = v.get<int64_t>();
  PDSERVE_RETURN_IF_ERROR(model::write_safetensors(dir / (stem + ".safetensors"), {{"logical_count", t}}));
  log::info("Write expert distribution to {}", json_path.string());
  return json_path;
}

}  // namespace pdserve::moe
