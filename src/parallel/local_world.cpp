#include "parallel/local_world.h"

#include <exception>
#include <thread>

#include <fmt/format.h>

#include "base/logging.h"

namespace pdserve::parallel {

LocalWorld::LocalWorld(const RankLayout& layout, CollectiveOptions opts) : layout_(layout) {
  comms_.resize(static_cast<size_t>(layout.world_size()));
  auto wire = [&](const char* name, const std::vector<std::vector<int>>& groups, std::unique_ptr<Communicator> RankComms::*slot) {
    for (const auto& members : groups) {
      auto g = LocalGroup::create(name, members, opts);
      for (size_t i = 0; i < members.size(); ++i) comms_[static_cast<size_t>(members[i])].*slot = g->member(static_cast<int>(i));
      groups_.push_back(std::move(g));
    }
  };
  wire("tp", layout.tp_groups(), &RankComms::tp);
  wire("attn_tp", layout.attn_tp_groups(), &RankComms::attn_tp);
  wire("ep", layout.ep_groups(), &RankComms::ep);
}

void LocalWorld::abort_all(const std::string& reason) {
  for (auto& g : groups_) g->abort(reason);
}

std::vector<Status> LocalWorld::run(const RankFn& fn) {
  const int n = layout_.world_size();
  std::vector<Status> results(static_cast<size_t>(n), ok_status());
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([this, r, &fn, &results] {
      const RankInfo& info = layout_.rank(r);
      log::ScopedThreadRank prefix(info.log_prefix());
      Status st = ok_status();
      try {
        st = fn(info, comms(r));
      } catch (const std::exception& e) {
        st = Error(ErrorCode::kInternal, fmt::format("exception: {}", e.what()));
      }
      if (!st.has_value()) abort_all(fmt::format("rank {} failed: {}", r, st.error().message()));
      results[static_cast<size_t>(r)] = std::move(st);
    });
  }
  for (auto& t : threads) t.join();
  return results;
}

Status first_error(const std::vector<Status>& statuses) {
  for (size_t r = 0; r < statuses.size(); ++r)
    if (!statuses[r].has_value()) return statuses[r].error().with_context(fmt::format("rank {}", r));
  return ok_status();
}

}  // namespace pdserve::parallel
