#include "disagg/bootstrap_server.h"

#include "base/logging.h"

namespace pdserve::disagg {

using nlohmann::json;

http::Headers bootstrap_headers(const std::string& api_key) {
  http::Headers h{{"Content-Type", "application/json"}};
  if (!api_key.empty()) h.add("Authorization", "Bearer " + api_key);
  return h;
}

Result<std::unique_ptr<BootstrapServer>> BootstrapServer::start(const std::string& host, int port,
                                                                const std::string& api_key) {
  auto s = std::unique_ptr<BootstrapServer>(new BootstrapServer());
  http::ServerOptions o;
  o.host = host;
  o.port = static_cast<uint16_t>(port);
  o.io_threads = 1;
  o.max_body_bytes = 1 << 20;
  s->http_ = std::make_unique<http::Server>(o);
  BootstrapServer* self = s.get();
  s->http_->route("PUT", "/route", http::require_api_key(api_key, [self](http::Request req, std::shared_ptr<http::Responder> r) {
                    self->put_route(req, *r);
                  }));
  s->http_->route("GET", "/route", http::require_api_key(api_key, [self](http::Request req, std::shared_ptr<http::Responder> r) {
                    self->get_route(req, *r);
                  }));
  s->http_->route("GET", "/health", [](http::Request, std::shared_ptr<http::Responder> r) { r->respond(200, "OK", "text/plain"); });
  if (auto st = s->http_->start(); !st)
    return make_error(st.error().code(), "cannot start the disaggregation bootstrap server on {}:{}: {}", host, port,
                      st.error().message());
  log::info("Disaggregation bootstrap server listening on {}:{}{}", host, s->http_->port(),
            api_key.empty() ? "" : " (API key required on /route)");
  return s;
}

BootstrapServer::~BootstrapServer() { stop(); }

void BootstrapServer::stop() {
  if (http_) http_->stop(std::chrono::milliseconds(500));
}

void BootstrapServer::put_route(const http::Request& req, http::Responder& r) {
  json j;
  try {
    j = json::parse(req.body);
    const int tp = j.at("attn_tp_size").get<int>(), tp_rank = j.at("attn_tp_rank").get<int>();
    const int pp = j.value("pp_size", 1), pp_rank = j.value("pp_rank", 0);
    const int sys_dp = j.value("system_dp_size", 1);
    // As SGLang: with DP attention (one system DP rank) the attention DP rank is the group.
    const int dp = sys_dp == 1 ? j.at("attn_dp_size").get<int>() : sys_dp;
    const int group = sys_dp == 1 ? j.at("attn_dp_rank").get<int>() : j.at("system_dp_rank").get<int>();
    json addr = {{"rank_ip", j.at("rank_ip").get<std::string>()}, {"rank_port", j.at("rank_port").get<int>()}};
    std::lock_guard<std::mutex> lock(mu_);
    if (attn_tp_size_ == 0) {
      attn_tp_size_ = tp;
      dp_size_ = dp;
      pp_size_ = pp;
    }
    table_[group][tp_rank][pp_rank] = addr;
    log::info("Register prefill bootstrap: DP{} TP{} PP{} -> {}:{}", group, tp_rank, pp_rank, addr["rank_ip"].get<std::string>(),
              addr["rank_port"].get<int>());
  } catch (const std::exception& e) {
    r.respond_error(400, std::string("bad registration: ") + e.what());
    return;
  }
  r.respond(200, "OK", "text/plain");
}

void BootstrapServer::get_route(const http::Request& req, http::Responder& r) {
  const auto rank = req.query_param("engine_rank");
  const auto group = req.query_param("target_dp_group");
  const auto pp = req.query_param("target_pp_rank");
  if (!rank || !group) {
    r.respond(400, "Missing inputs for bootstrap server.", "text/plain");
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  try {
    const int er = std::stoi(std::string(*rank)), g = std::stoi(std::string(*group)), p = pp ? std::stoi(std::string(*pp)) : 0;
    if (er == -1) {
      if (dp_size_ == 0) {
        r.respond_error(503, "no prefill rank has registered yet");
        return;
      }
      r.respond(200, json{{"prefill_attn_tp_size", attn_tp_size_}, {"prefill_dp_size", dp_size_}, {"prefill_pp_size", pp_size_}}.dump());
      return;
    }
    auto gi = table_.find(g);
    if (gi != table_.end()) {
      auto ti = gi->second.find(er);
      if (ti != gi->second.end()) {
        auto pi = ti->second.find(p);
        if (pi != ti->second.end()) {
          r.respond(200, pi->second.dump());
          return;
        }
      }
    }
    r.respond_error(404, "no prefill rank registered for engine_rank=" + std::to_string(er) + " target_dp_group=" +
                             std::to_string(g) + " target_pp_rank=" + std::to_string(p));
  } catch (const std::exception&) {
    r.respond(400, "Missing inputs for bootstrap server.", "text/plain");
  }
}

json BootstrapServer::table() const {
  std::lock_guard<std::mutex> lock(mu_);
  json j = json::object();
  for (const auto& [g, tps] : table_)
    for (const auto& [tp, pps] : tps)
      for (const auto& [pp, addr] : pps) j[std::to_string(g) + "/" + std::to_string(tp) + "/" + std::to_string(pp)] = addr;
  return j;
}

}  // namespace pdserve::disagg
