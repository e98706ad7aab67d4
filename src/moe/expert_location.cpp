#include "moe/expert_location.h"

#include <algorithm>
#include <random>

#include "base/json.h"
#include "base/logging.h"
#include "model/safetensors.h"
#include "moe/expert_location_torch.h"

namespace pdserve::moe {

Status ExpertLayout::validate() const {
  if (num_layers < 1 || num_logical < 1 || ep_size < 1)
    return make_error(ErrorCode::kInvalidArgument, "expert layout: {} layers, {} experts, ep size {} must be positive",
                      num_layers, num_logical, ep_size);
  if (num_physical < num_logical)
    return make_error(ErrorCode::kInvalidArgument, "expert layout: {} physical experts cannot hold {} logical ones",
                      num_physical, num_logical);
  if (num_physical % ep_size != 0)
    return make_error(ErrorCode::kInvalidArgument,
                      "expert layout: {} physical experts ({} routed + {} redundant) are not divisible by the ep "
                      "size {}; choose --ep-num-redundant-experts so that they are",
                      num_physical, num_logical, num_physical - num_logical, ep_size);
  return ok_status();
}

Result<ExpertLocation> ExpertLocation::trivial(const ExpertLayout& layout) {
  PDSERVE_RETURN_IF_ERROR(layout.validate());
  std::vector<std::vector<int>> p2l(layout.num_layers, std::vector<int>(layout.num_physical));
  for (auto& row : p2l)
    for (int p = 0; p < layout.num_physical; ++p) row[p] = p % layout.num_logical;
  return from_mapping(layout, p2l);
}

Result<ExpertLocation> ExpertLocation::from_mapping(const ExpertLayout& layout,
                                                    const std::vector<std::vector<int>>& physical_to_logical) {
  PDSERVE_RETURN_IF_ERROR(layout.validate());
  if (static_cast<int>(physical_to_logical.size()) != layout.num_layers)
    return make_error(ErrorCode::kInvalidArgument,
                      "physical_to_logical_map has {} layers, the model has {} (num_hidden_layers)",
                      physical_to_logical.size(), layout.num_layers);
  ExpertLocation loc;
  loc.layout_ = layout;
  loc.physical_to_logical_ = physical_to_logical;
  loc.logical_to_all_physical_.assign(layout.num_layers, std::vector<std::vector<int>>(layout.num_logical));
  for (int l = 0; l < layout.num_layers; ++l) {
    const auto& row = physical_to_logical[l];
    if (static_cast<int>(row.size()) != layout.num_physical)
      return make_error(ErrorCode::kInvalidArgument,
                        "physical_to_logical_map layer {} has {} physical experts, expected {} (routed experts + "
                        "--ep-num-redundant-experts)",
                        l, row.size(), layout.num_physical);
    for (int p = 0; p < layout.num_physical; ++p) {
      if (row[p] < 0 || row[p] >= layout.num_logical)
        return make_error(ErrorCode::kInvalidArgument,
                          "physical_to_logical_map layer {} physical {} names expert {}, outside [0, {})", l, p, row[p],
                          layout.num_logical);
      loc.logical_to_all_physical_[l][row[p]].push_back(p);
    }
    for (int e = 0; e < layout.num_logical; ++e)
      if (loc.logical_to_all_physical_[l][e].empty())
        return make_error(ErrorCode::kInvalidArgument,
                          "physical_to_logical_map layer {} has no copy of expert {}: every expert needs one", l, e);
  }
  return loc;
}

Result<ExpertLocation> ExpertLocation::from_counts(const ExpertLayout& layout, const Matrix& logical_count,
                                                   EplbOptions opts) {
  PDSERVE_RETURN_IF_ERROR(layout.validate());
  if (logical_count.rows != layout.num_layers || logical_count.cols != layout.num_logical)
    return make_error(ErrorCode::kInvalidArgument,
                      "logical_count is [{} layers, {} experts], the model has [{}, {}]: was it recorded on another "
                      "model?",
                      logical_count.rows, logical_count.cols, layout.num_layers, layout.num_logical);
  opts.num_physical_experts = layout.num_physical;
  opts.num_gpus = layout.ep_size;
  PDSERVE_ASSIGN_OR_RETURN(Placement p, rebalance_experts(logical_count, opts));
  return from_mapping(layout, p.physical_to_logical);
}

std::vector<int> ExpertLocation::local_physical(int rank) const {
  std::vector<int> out(layout_.num_local_physical());
  for (int i = 0; i < layout_.num_local_physical(); ++i) out[i] = rank * layout_.num_local_physical() + i;
  return out;
}

std::vector<std::vector<int>> ExpertLocation::static_dispatch_map(int ep_rank, uint64_t seed) const {
  // Computed for all ranks, as SGLang does, because the fair spreading of the ranks without a local
  // copy depends on every rank's choice; then the caller's row is kept.
  std::mt19937_64 rng(seed);
  const int ranks = layout_.ep_size;
  std::vector<std::vector<int>> out(layout_.num_layers, std::vector<int>(layout_.num_logical, -1));
  std::vector<int> choice(ranks);
  for (int l = 0; l < layout_.num_layers; ++l) {
    for (int e = 0; e < layout_.num_logical; ++e) {
      const auto& copies = logical_to_all_physical_[l][e];
      std::fill(choice.begin(), choice.end(), -1);
      for (int p : copies)
        if (choice[rank_of_physical(p)] < 0) choice[rank_of_physical(p)] = p;
      int missing = static_cast<int>(std::count(choice.begin(), choice.end(), -1));
      // Fair choices: every copy `missing / copies` times, the remainder drawn without repetition,
      // then shuffled over the ranks that lack a local copy.
      std::vector<int> pool;
      for (int q = 0; q < missing / static_cast<int>(copies.size()); ++q) pool.insert(pool.end(), copies.begin(), copies.end());
      std::vector<int> rest = copies;
      std::shuffle(rest.begin(), rest.end(), rng);
      pool.insert(pool.end(), rest.begin(), rest.begin() + missing % static_cast<int>(copies.size()));
      std::shuffle(pool.begin(), pool.end(), rng);
      for (int r = 0, k = 0; r < ranks; ++r)
        if (choice[r] < 0) choice[r] = pool[k++];
      out[l][e] = choice[ep_rank];
    }
  }
  return out;
}

nlohmann::json ExpertLocation::to_json() const { return {{"physical_to_logical_map", physical_to_logical_}}; }

Matrix ExpertLocationSource::summed_counts() const {
  if (passes.empty()) return {};
  Matrix sum(passes[0].rows, passes[0].cols);
  for (const auto& m : passes)
    for (size_t i = 0; i < sum.values.size(); ++i) sum.values[i] += m.values[i];
  return sum;
}

namespace {

Result<Matrix> matrix_from_json(const nlohmann::json& rows, const std::string& what) {
  if (!rows.is_array() || rows.empty() || !rows[0].is_array() || rows[0].empty())
    return make_error(ErrorCode::kInvalidArgument, "{}: expected a non-empty [layers][experts] array", what);
  Matrix m(static_cast<int64_t>(rows.size()), static_cast<int64_t>(rows[0].size()));
  for (size_t r = 0; r < rows.size(); ++r) {
    if (!rows[r].is_array() || rows[r].size() != rows[0].size())
      return make_error(ErrorCode::kInvalidArgument, "{}: layer {} has {} experts, layer 0 has {}", what, r,
                        rows[r].is_array() ? rows[r].size() : 0, rows[0].size());
    for (size_t c = 0; c < rows[r].size(); ++c) {
      const auto& v = rows[r][c];
      if (!v.is_number() || v.get<double>() < 0)
        return make_error(ErrorCode::kInvalidArgument, "{}: layer {} expert {} is not a non-negative count", what, r, c);
      m.at(static_cast<int64_t>(r), static_cast<int64_t>(c)) = v.get<double>();
    }
  }
  return m;
}

// The safetensors twin of our dump: a logical_count tensor (i64 or i32) [passes, layers, experts].
Result<ExpertLocationSource> read_safetensors_source(const std::string& path) {
  PDSERVE_ASSIGN_OR_RETURN(auto file, model::SafetensorsFile::open(path));
  if (!file->tensors().count("logical_count"))
    return make_error(ErrorCode::kInvalidArgument, "{}: has no 'logical_count' tensor", path);
  PDSERVE_ASSIGN_OR_RETURN(Tensor t, file->tensor("logical_count"));
  if (t.dim() != 3 && t.dim() != 2)
    return make_error(ErrorCode::kInvalidArgument, "{}: logical_count has shape {}, expected [passes, layers, experts]",
                      path, shape_to_string(t.shape()));
  if (t.dtype() != DType::kI64 && t.dtype() != DType::kI32)
    return make_error(ErrorCode::kInvalidArgument, "{}: logical_count must be I64 or I32", path);
  const int64_t passes = t.dim() == 3 ? t.size(0) : 1, layers = t.size(-2), experts = t.size(-1);
  ExpertLocationSource src;
  src.kind = ExpertLocationSource::Kind::kCounts;
  src.origin = path;
  for (int64_t b = 0; b < passes; ++b) {
    Matrix m(layers, experts);
    for (int64_t i = 0; i < layers * experts; ++i) {
      int64_t at = b * layers * experts + i;
      m.values[static_cast<size_t>(i)] =
          t.dtype() == DType::kI64 ? static_cast<double>(t.data<int64_t>()[at]) : t.data<int32_t>()[at];
    }
    src.passes.push_back(std::move(m));
  }
  return src;
}

}  // namespace

Result<ExpertLocationSource> expert_location_source_from_json(const nlohmann::json& j, const std::string& origin) {
  if (!j.is_object())
    return make_error(ErrorCode::kInvalidArgument, "--init-expert-location {}: expected a JSON object", origin);
  ExpertLocationSource src;
  src.origin = origin;
  if (j.contains("physical_to_logical_map")) {
    auto m = json_detail::convert<std::vector<std::vector<int>>>(j["physical_to_logical_map"]);
    if (!m)
      return make_error(ErrorCode::kInvalidArgument,
                        "{}: physical_to_logical_map must be an array of arrays of integers ([layers][physical])",
                        origin);
    src.kind = ExpertLocationSource::Kind::kMapping;
    src.physical_to_logical = std::move(*m);
    return src;
  }
  if (j.contains("logical_count")) {
    const auto& c = j["logical_count"];
    src.kind = ExpertLocationSource::Kind::kCounts;
    bool three_d = c.is_array() && !c.empty() && c[0].is_array() && !c[0].empty() && c[0][0].is_array();
    if (three_d) {
      for (size_t b = 0; b < c.size(); ++b) {
        PDSERVE_ASSIGN_OR_RETURN(Matrix m, matrix_from_json(c[b], fmt::format("{}: logical_count[{}]", origin, b)));
        if (!src.passes.empty() && (m.rows != src.passes[0].rows || m.cols != src.passes[0].cols))
          return make_error(ErrorCode::kInvalidArgument, "{}: logical_count passes differ in shape", origin);
        src.passes.push_back(std::move(m));
      }
    } else {
      PDSERVE_ASSIGN_OR_RETURN(Matrix m, matrix_from_json(c, origin + ": logical_count"));
      src.passes.push_back(std::move(m));
    }
    return src;
  }
  std::string keys;
  for (const auto& [k, v] : j.items()) keys += (keys.empty() ? "" : ", ") + k;
  return make_error(ErrorCode::kInvalidArgument,
                    "{}: unknown expert location format: needs physical_to_logical_map or logical_count, found keys [{}]",
                    origin, keys);
}

Result<ExpertLocationSource> read_expert_location_source(const std::string& value) {
  if (value == "trivial") return ExpertLocationSource{};
  if (value.ends_with(".pt")) {
    PDSERVE_ASSIGN_OR_RETURN(auto j, read_torch_file_as_json(value));
    return expert_location_source_from_json(j, value);
  }
  if (value.ends_with(".safetensors")) return read_safetensors_source(value);
  if (value.ends_with(".json")) {
    PDSERVE_ASSIGN_OR_RETURN(auto j, read_json_file(value));
    return expert_location_source_from_json(j, value);
  }
  auto j = parse_json(value, "--init-expert-location");
  if (!j.has_value())
    return make_error(ErrorCode::kInvalidArgument,
                      "--init-expert-location must be 'trivial', a .pt/.json/.safetensors file or inline JSON: {}",
                      j.error().message());
  return expert_location_source_from_json(*j, "inline JSON");
}

Result<ExpertLocation> build_expert_location(const ExpertLocationSource& source, const ExpertLayout& layout,
                                             const EplbOptions& eplb) {
  switch (source.kind) {
    case ExpertLocationSource::Kind::kTrivial: return ExpertLocation::trivial(layout);
    case ExpertLocationSource::Kind::kMapping:
      log::info("init_expert_location from init_by_mapping using ServerArgs.init_expert_location");
      return ExpertLocation::from_mapping(layout, source.physical_to_logical);
    case ExpertLocationSource::Kind::kCounts:
      log::info("init_expert_location from init_by_eplb using ServerArgs.init_expert_location");
      return ExpertLocation::from_counts(layout, source.summed_counts(), eplb);
  }
  return make_error(ErrorCode::kInternal, "unknown expert location source");
}

}  // namespace pdserve::moe
