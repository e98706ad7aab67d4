#include "server/decode_hold.h"

#include <set>

#include "base/json.h"
#include "base/logging.h"
#include "server/response_channel.h"

namespace pdserve::server {

using nlohmann::json;

namespace {

// A rank's own deadline is later than the watcher's, so the watcher normally releases (and
// reports why); the rank's deadline only matters if that release never arrives.
constexpr double kRankDeadlineMarginS = 2.0;
constexpr auto kWatchPeriod = std::chrono::milliseconds(5);
constexpr double kMaxTimeoutS = 86400;
constexpr double kDefaultTimeoutS = 300;

}  // namespace

DecodeHold::DecodeHold(std::vector<RankHandle*> ranks) : ranks_(std::move(ranks)) {}

DecodeHold::~DecodeHold() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (holding_) release_locked("server shutting down", 0);
    quit_ = true;
  }
  cv_.notify_all();
  if (watcher_.joinable()) watcher_.join();
}

int64_t DecodeHold::running() const {
  int64_t sum = 0;
  for (auto* r : ranks_) sum += r->stats().num_running;
  return sum;
}

void DecodeHold::hold(int64_t until_running, double timeout_s) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    holding_ = true;
    target_ = until_running;
    timeout_s_ = timeout_s;
    since_ = Clock::now();
    deadline_ = since_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
    released_by_.clear();
    // Not waited for: a rank asleep in /slow_down takes the command after its sleep.
    for (auto* r : ranks_) (void)r->control("hold_decode", {{"timeout_s", timeout_s + kRankDeadlineMarginS}});
    if (!watcher_.joinable()) watcher_ = std::thread([this] { watch(); });
  }
  log::info("Decode hold: until #running-req >= {} over {} DP rank(s), at most {}s", until_running, ranks_.size(),
            timeout_s);
  cv_.notify_all();
}

void DecodeHold::release(const std::string& reason) {
  const int64_t now_running = running();
  std::lock_guard<std::mutex> lock(mu_);
  if (holding_) release_locked(reason, now_running);
}

void DecodeHold::release_locked(const std::string& reason, int64_t now_running) {
  holding_ = false;
  released_by_ = reason;
  running_at_release_ = now_running;
  held_seconds_ = std::chrono::duration<double>(Clock::now() - since_).count();
  for (auto* r : ranks_) (void)r->control("release_decode", {{"reason", reason}});
  log::info("Decode hold released ({}): #running-req {} of target {} after {:.2f}s", reason, now_running, target_,
            held_seconds_);
}

void DecodeHold::watch() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!quit_) {
    if (!holding_) {
      cv_.wait(lock, [&] { return holding_ || quit_; });
      continue;
    }
    // The statistics are read without the lock: a remote rank's may take a moment.
    lock.unlock();
    const int64_t now_running = running();
    lock.lock();
    if (!holding_ || quit_) continue;
    if (now_running >= target_) release_locked("target", now_running);
    else if (Clock::now() >= deadline_) release_locked("timeout", now_running);
    else cv_.wait_for(lock, kWatchPeriod, [&] { return quit_; });
  }
}

json DecodeHold::state() const {
  const int64_t now_running = running();
  std::lock_guard<std::mutex> lock(mu_);
  json j{{"holding", holding_}, {"until_running", target_}, {"timeout", timeout_s_}, {"running", now_running}};
  j["held_seconds"] = holding_ ? std::chrono::duration<double>(Clock::now() - since_).count() : held_seconds_;
  j["released_by"] = released_by_.empty() ? json(nullptr) : json(released_by_);
  j["running_at_release"] = released_by_.empty() ? json(nullptr) : json(running_at_release_);
  return j;
}

void register_hold_decode_route(http::Server& server, DecodeHold& hold, const std::string& api_key) {
  auto reply = [](http::Responder& r, int status, const json& body) { r.respond(status, body.dump()); };
  auto handler = [&hold, reply](http::Request req, std::shared_ptr<http::Responder> r) {
    if (req.method == "GET" && req.body.empty()) return reply(*r, 200, hold.state());
    const char* src = "/hold_decode body";
    Result<json> body = req.body.empty() ? Result<json>(json::object()) : parse_json(req.body, src);
    if (!body) return reply(*r, 400, error_body(400, body.error().message()));
    if (!body->is_object()) return reply(*r, 400, error_body(400, "the /hold_decode body must be a JSON object"));
    static const std::set<std::string> fields{"until_running", "timeout"};
    for (const auto& [k, v] : body->items())
      if (!fields.count(k)) return reply(*r, 400, error_body(400, fmt::format("{}: unknown field '{}'", src, k)));
    if (!body->contains("until_running"))
      return reply(*r, 400, error_body(400, "field 'until_running' is required (a number of requests, or null to release)"));
    const json& n = (*body)["until_running"];
    if (n.is_null()) {
      hold.release("request");
      return reply(*r, 200, hold.state());
    }
    if (!n.is_number_integer() || n.get<int64_t>() < 1)
      return reply(*r, 400, error_body(400, "field 'until_running' must be an integer >= 1 or null"));
    double timeout = kDefaultTimeoutS;
    if (body->contains("timeout")) {
      const json& t = (*body)["timeout"];
      if (!t.is_number() || t.get<double>() <= 0 || t.get<double>() > kMaxTimeoutS)
        return reply(*r, 400, error_body(400, fmt::format("field 'timeout' must be a number of seconds in (0, {}]", kMaxTimeoutS)));
      timeout = t.get<double>();
    }
    hold.hold(n.get<int64_t>(), timeout);
    reply(*r, 200, hold.state());
  };
  for (const char* method : {"GET", "POST"}) server.route(method, "/hold_decode", http::require_api_key(api_key, handler));
}

}  // namespace pdserve::server
