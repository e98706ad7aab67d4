#include "server/profile_routes.h"

#include <future>
#include <memory>
#include <thread>

#include "base/clock.h"
#include "base/json.h"
#include "scheduler/step_profiler.h"
#include "server/response_channel.h"

namespace pdserve::server {

using nlohmann::json;

namespace {

// Waits for every rank's reply on its own thread: a rank may be inside a slow_down sleep for
// minutes, and an I/O thread must not block. The futures are always fulfilled (a stopping
// scheduler answers what is left in its inbox), so the thread ends.
void answer_when_done(std::vector<std::future<json>> replies, std::shared_ptr<http::Responder> r,
                      std::string ok_text) {
  std::thread([replies = std::move(replies), r, ok_text = std::move(ok_text)]() mutable {
    std::string failure;
    for (auto& f : replies) {
      const json rep = f.get();
      if (rep.contains("error")) failure = rep["error"].dump();
      else if (!rep.value("success", false) && failure.empty()) failure = rep.value("message", "profiler failed");
    }
    if (failure.empty()) r->respond(200, ok_text, "text/plain");
    else r->respond(400, error_body(400, failure).dump());
  }).detach();
}

}  // namespace

void register_profile_routes(http::Server& server, std::vector<RankHandle*> schedulers,
                             const std::string& api_key) {
  auto start = [schedulers](http::Request req, std::shared_ptr<http::Responder> r) {
    Result<json> body = req.body.empty() ? Result<json>(json::object()) : parse_json(req.body, "/start_profile body");
    if (!body) return r->respond(400, error_body(400, body.error().message()).dump()), void();
    auto pr = scheduler::parse_profile_request(*body, scheduler::default_profiler_dir());
    if (!pr) return r->respond(400, error_body(400, pr.error().message()).dump()), void();
    // SGLang's id is str(time.time()): the same for every rank, so their files group together.
    pr->profile_id = fmt::format("{}", Clock::unix_seconds());
    std::vector<std::future<json>> replies;
    for (auto* s : schedulers) replies.push_back(s->control("start_profile", scheduler::to_json(*pr)));
    answer_when_done(std::move(replies), r, "Start profiling.\n");
  };
  auto stop = [schedulers](http::Request, std::shared_ptr<http::Responder> r) {
    std::vector<std::future<json>> replies;
    for (auto* s : schedulers) replies.push_back(s->control("stop_profile", {}));
    answer_when_done(std::move(replies), r, "Stop profiling. This will take some time.\n");
  };
  for (const char* method : {"GET", "POST"}) {
    server.route(method, "/start_profile", http::require_api_key(api_key, start));
    server.route(method, "/stop_profile", http::require_api_key(api_key, stop));
  }
}

}  // namespace pdserve::server
