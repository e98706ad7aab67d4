// The router's HTTP surface besides the generation routes: health, info (proxied or merged the
// MiniLB way), control fan-outs, metrics, and /workers to change the worker set at run time.
#include <boost/asio/co_spawn.hpp>

#include "base/logging.h"
#include "router/router.h"

namespace pdserve::router {

using json = nlohmann::json;

namespace {

json worker_json(const WorkerPtr& w) {
  return json{{"url", w->url()},
              {"worker_type", worker_type_name(w->type())},
              {"bootstrap_port", w->bootstrap_port() ? json(*w->bootstrap_port()) : json(nullptr)},
              {"healthy", w->healthy()},
              {"load", w->load()},
              {"processed", w->processed()},
              {"circuit_breaker", CircuitBreaker::state_name(w->breaker().state())}};
}

bool all_2xx(const std::vector<std::pair<WorkerPtr, Result<http::Response>>>& res, json& failures) {
  failures = json::array();
  for (const auto& [w, r] : res) {
    if (r && r->status >= 200 && r->status < 300) continue;
    failures.push_back({{"worker", w->url()}, {"error", r ? fmt::format("HTTP {}: {}", r->status, r->body.substr(0, 200))
                                                          : r.error().message()}});
  }
  return failures.empty();
}

}  // namespace

void Router::register_routes(http::Server& s) {
  const std::string key = args_.api_key;
  auto gen = [this, key](RouteKind kind, const std::string& path) {
    return http::require_api_key(key, [this, kind, path](http::Request req, std::shared_ptr<http::Responder> r) {
      handle_generation(kind, path, std::move(req), std::move(r));
    });
  };
  for (const char* m : {"POST", "PUT"}) s.route(m, "/generate", gen(RouteKind::kGenerate, "/generate"));
  s.route("POST", "/v1/completions", gen(RouteKind::kCompletions, "/v1/completions"));
  s.route("POST", "/v1/chat/completions", gen(RouteKind::kChat, "/v1/chat/completions"));
  // Probes and metrics stay open: orchestrators and scrapers do not hold the API key.
  s.route("GET", "/health", [](http::Request, std::shared_ptr<http::Responder> r) { r->respond(200, "", "text/plain"); });
  s.route("GET", "/liveness", [](http::Request, std::shared_ptr<http::Responder> r) { r->respond(200, "", "text/plain"); });
  s.route("GET", "/readiness", [this](http::Request, std::shared_ptr<http::Responder> r) {
    bool ready = args_.pd_disaggregation
                     ? !registry_.available(WorkerType::kPrefill).empty() && !registry_.available(WorkerType::kDecode).empty()
                     : !registry_.available(WorkerType::kRegular).empty();
    if (ready) {
      r->respond(200, R"({"status":"ready"})");
    } else {
      r->respond_error(503, "no available workers");
    }
  });
  s.route("GET", "/metrics", [this](http::Request, std::shared_ptr<http::Responder> r) {
    r->respond(200, render_metrics(), "text/plain; version=0.0.4");
  });
  register_info_routes(s);
  register_worker_routes(s);
}

void Router::register_info_routes(http::Server& s) {
  const std::string key = args_.api_key;
  const auto timeout = std::chrono::seconds(args_.request_timeout_secs);
  auto proxied = [this, key](std::string target) {
    return http::require_api_key(key, [this, target](http::Request, std::shared_ptr<http::Responder> r) {
      proxy_first(target, std::move(r));
    });
  };
  s.route("GET", "/v1/models", proxied("/v1/models"));
  s.route("GET", "/model_info", proxied("/model_info"));
  s.route("GET", "/get_model_info", proxied("/model_info"));
  s.route_prefix("GET", "/v1/models/", http::require_api_key(key, [this](http::Request req, std::shared_ptr<http::Responder> r) {
    proxy_first(req.path, std::move(r));
  }));

  auto server_info = http::require_api_key(key, [this, timeout](http::Request, std::shared_ptr<http::Responder> r) {
    if (!args_.pd_disaggregation) {
      proxy_first("/server_info", std::move(r));
      return;
    }
    // MiniLB's shape: the decode servers' internal states, plus every server's own answer.
    auto targets = registry_.of_type(WorkerType::kPrefill);
    auto decodes = registry_.of_type(WorkerType::kDecode);
    targets.insert(targets.end(), decodes.begin(), decodes.end());
    fan_out(targets, "GET", "/server_info", "", timeout, [r](FanOutResult res) {
      json out{{"internal_states", json::array()}, {"prefill", json::array()}, {"decode", json::array()}};
      for (auto& [w, resp] : res) {
        json info = resp && resp->status == 200 ? json::parse(resp->body, nullptr, false) : json(nullptr);
        if (info.is_discarded()) info = nullptr;
        const bool decode = w->type() == WorkerType::kDecode;
        out[decode ? "decode" : "prefill"].push_back(info);
        if (decode && info.is_object() && info.contains("internal_states") && info["internal_states"].is_array())
          for (auto& st : info["internal_states"]) out["internal_states"].push_back(st);
      }
      if (out["internal_states"].empty())
        out["internal_states"].push_back({{"last_gen_throughput", 0.0}, {"avg_spec_accept_length", nullptr}});
      r->respond(200, out.dump());
    });
  });
  s.route("GET", "/server_info", server_info);
  s.route("GET", "/get_server_info", server_info);

  s.route("GET", "/health_generate", http::require_api_key(key, [this](http::Request, std::shared_ptr<http::Responder> r) {
    auto all = registry_.all();
    if (all.empty()) {
      r->respond_error(503, "no workers");
      return;
    }
    fan_out(all, "GET", "/health_generate", "", std::chrono::seconds(args_.health_check_timeout_secs + 20),
            [r](FanOutResult res) {
              json failures;
              if (all_2xx(res, failures)) {
                r->respond(200, "", "text/plain");
              } else {
                r->respond(503, json{{"error", {{"message", "workers failed /health_generate"}, {"failures", failures}}}}.dump());
              }
            });
  }));
  auto flush = http::require_api_key(key, [this, timeout](http::Request, std::shared_ptr<http::Responder> r) {
    fan_out(registry_.all(), "POST", "/flush_cache", "", timeout, [r](FanOutResult res) {
      json failures;
      if (all_2xx(res, failures)) {
        r->respond(200, "Cache flushed.\nPlease check backend logs for more details.\n", "text/plain");
      } else {
        r->respond(500, json{{"error", {{"message", "flush_cache failed on some workers"}, {"failures", failures}}}}.dump());
      }
    });
  });
  s.route("POST", "/flush_cache", flush);
  s.route("GET", "/flush_cache", flush);
  s.route("POST", "/abort_request", http::require_api_key(key, [this, timeout](http::Request req, std::shared_ptr<http::Responder> r) {
    fan_out(registry_.all(), "POST", "/abort_request", req.body, timeout, [r](FanOutResult) { r->respond(200, ""); });
  }));
  s.route("GET", "/get_loads", http::require_api_key(key, [this, timeout](http::Request, std::shared_ptr<http::Responder> r) {
    fan_out(registry_.all(), "GET", "/get_load", "", timeout, [r](FanOutResult res) {
      json workers = json::array();
      for (auto& [w, resp] : res) {
        json load = resp && resp->status == 200 ? json::parse(resp->body, nullptr, false) : json(nullptr);
        if (load.is_discarded()) load = nullptr;
        workers.push_back({{"worker", w->url()}, {"worker_type", worker_type_name(w->type())},
                           {"router_load", w->load()}, {"load", load}});
      }
      r->respond(200, json{{"workers", workers}}.dump());
    });
  }));
}

void Router::register_worker_routes(http::Server& s) {
  const std::string key = args_.api_key;
  auto list = http::require_api_key(key, [this](http::Request, std::shared_ptr<http::Responder> r) {
    json workers = json::array();
    for (const auto& w : registry_.all()) workers.push_back(worker_json(w));
    r->respond(200, json{{"workers", workers}, {"total", workers.size()}}.dump());
  });
  s.route("GET", "/workers", list);
  s.route("GET", "/list_workers", list);

  // Adds after one probe of the health endpoint; the worker starts as that probe found it.
  auto add = [this](std::string url, WorkerType type, std::optional<int> port, std::shared_ptr<http::Responder> r) {
    url = normalize_worker_url(std::move(url));
    auto w = registry_.add(url, type, port, breaker_config());
    if (!w) {
      r->respond_error(400, w.error().message());
      return;
    }
    WorkerPtr worker = *w;
    fan_out({worker}, "GET", args_.health_check_endpoint, "", std::chrono::seconds(args_.health_check_timeout_secs),
            [worker, r](FanOutResult res) {
              const bool ok = res[0].second && res[0].second->status == 200;
              worker->set_healthy(ok);
              log::info("router: added {} worker {} ({})", worker_type_name(worker->type()), worker->url(),
                        ok ? "healthy" : "not healthy yet");
              r->respond(200, json{{"status", "ok"}, {"worker", worker_json(worker)}}.dump());
            });
  };
  s.route("POST", "/workers", http::require_api_key(key, [this, add](http::Request req, std::shared_ptr<http::Responder> r) {
    json body = json::parse(req.body, nullptr, false);
    if (!body.is_object() || !body.contains("url") || !body["url"].is_string()) {
      r->respond_error(400, "body must be {\"url\": \"http://host:port\", \"worker_type\": \"regular|prefill|decode\"}");
      return;
    }
    if (body.contains("worker_type") && !body["worker_type"].is_string()) {
      r->respond_error(400, "field 'worker_type' must be a string: regular, prefill or decode");
      return;
    }
    std::string type = body.value("worker_type", args_.pd_disaggregation ? "" : "regular");
    WorkerType t;
    if (type == "regular" && !args_.pd_disaggregation) {
      t = WorkerType::kRegular;
    } else if (type == "prefill" && args_.pd_disaggregation) {
      t = WorkerType::kPrefill;
    } else if (type == "decode" && args_.pd_disaggregation) {
      t = WorkerType::kDecode;
    } else {
      r->respond_error(400, args_.pd_disaggregation ? "worker_type must be \"prefill\" or \"decode\" in PD mode"
                                                    : "worker_type must be \"regular\" without --pd-disaggregation");
      return;
    }
    std::optional<int> port;
    if (auto p = body.find("bootstrap_port"); p != body.end() && !p->is_null()) {
      if (!p->is_number_integer() || p->get<int64_t>() < 1 || p->get<int64_t>() > 65535) {
        r->respond_error(400, "bootstrap_port must be a port number or null");
        return;
      }
      port = p->get<int>();
    }
    add(body["url"].get<std::string>(), t, port, std::move(r));
  }));
  s.route("POST", "/add_worker", http::require_api_key(key, [this, add](http::Request req, std::shared_ptr<http::Responder> r) {
    auto url = req.query_param("url");
    if (!url || args_.pd_disaggregation) {
      r->respond_error(400, args_.pd_disaggregation ? "PD mode: use POST /workers with worker_type" : "missing ?url=");
      return;
    }
    add(std::string(*url), WorkerType::kRegular, std::nullopt, std::move(r));
  }));
  auto remove = [this](const std::string& raw, std::shared_ptr<http::Responder> r) {
    const std::string url = normalize_worker_url(raw);
    if (!registry_.remove(url)) {
      r->respond_error(404, "no worker " + url);
      return;
    }
    for (Policy* p : {policy_.get(), prefill_policy_.get(), decode_policy_.get()}) p->remove_worker(url);
    log::info("router: removed worker {}", url);
    r->respond(200, json{{"status", "ok"}, {"removed", url}}.dump());
  };
  s.route("DELETE", "/workers", http::require_api_key(key, [remove](http::Request req, std::shared_ptr<http::Responder> r) {
    if (auto q = req.query_param("url")) return remove(std::string(*q), std::move(r));
    json body = json::parse(req.body, nullptr, false);
    if (body.is_object() && body.contains("url") && body["url"].is_string()) return remove(body["url"], std::move(r));
    r->respond_error(400, "name the worker: DELETE /workers/{url}, ?url= or {\"url\": ...}");
  }));
  s.route_prefix("DELETE", "/workers/", http::require_api_key(key, [remove](http::Request req, std::shared_ptr<http::Responder> r) {
    // The URL as written after /workers/ (http://host:port); an escaped one goes through ?url=,
    // which the server decodes.
    std::string url = req.path.substr(std::string_view("/workers/").size());
    if (url.find('%') != std::string::npos) {
      r->respond_error(400, "percent-escaped worker URL: use DELETE /workers?url=...");
      return;
    }
    remove(url, std::move(r));
  }));
  s.route("POST", "/remove_worker", http::require_api_key(key, [remove](http::Request req, std::shared_ptr<http::Responder> r) {
    auto url = req.query_param("url");
    if (!url) {
      r->respond_error(400, "missing ?url=");
      return;
    }
    remove(std::string(*url), std::move(r));
  }));
}

}  // namespace pdserve::router
