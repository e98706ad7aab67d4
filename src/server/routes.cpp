// HTTP routes of the model server: SGLang's native API, OpenAI's, and the control endpoints.
#include <chrono>
#include <thread>

#include "base/logging.h"
#include "server/model_server.h"
#include "server/profile_routes.h"

namespace pdserve::server {

using nlohmann::json;

namespace {

// ResponseChannel over an HTTP responder.
class HttpChannel final : public ResponseChannel {
 public:
  explicit HttpChannel(std::shared_ptr<http::Responder> r) : r_(std::move(r)) {}
  void send_json(int status, const json& body) override {
    r_->respond(status, body.dump(-1, ' ', false, json::error_handler_t::replace));
  }
  void start_events() override { r_->start_stream(200, "text/event-stream"); }
  void send_event(const std::string& data) override { r_->send_chunk("data: " + data + "\n\n"); }
  void end_events() override {
    r_->send_chunk("data: [DONE]\n\n");
    r_->end_stream();
  }
  bool is_open() const override { return r_->is_open(); }

 private:
  std::shared_ptr<http::Responder> r_;
};

void respond_json(http::Responder& r, int status, const json& body) { r.respond(status, body.dump()); }
void respond_error(http::Responder& r, int status, const std::string& msg) { respond_json(r, status, error_body(status, msg)); }

// Control bodies may be empty (GET) or JSON.
Result<json> optional_json(const http::Request& req) {
  if (req.body.empty()) return json::object();
  return parse_json_body(req.body);
}

}  // namespace

void ModelServer::register_routes() {
  const std::string key = args_.api_key;
  auto add = [&](std::string_view method, const std::string& path, http::Handler h) {
    const bool open = path.rfind("/health", 0) == 0 || path == "/metrics";
    http_->route(method, path, open ? std::move(h) : http::require_api_key(key, std::move(h)));
  };
  const ParseLimits limits{config_.vocab_size, kMaxGenerationsPerRequest};

  auto generate = [this, limits](http::Request req, std::shared_ptr<http::Responder> r) {
    if (shutting_down_) return respond_error(*r, 503, "the server is shutting down");
    auto body = parse_json_body(req.body);
    if (!body) return respond_error(*r, 400, body.error().message());
    auto parsed = parse_generate(*body, limits);
    if (!parsed) return respond_error(*r, 400, parsed.error().message());
    auto ch = std::make_shared<HttpChannel>(r);
    std::weak_ptr<HttpChannel> weak = ch;
    TokenizerManager* tm = tm_.get();
    r->on_close([tm, weak] {
      if (auto c = weak.lock()) tm->client_gone(c);
    });
    tm_->submit(std::move(parsed->items), ApiFormat::kNative, parsed->is_batch, parsed->stream, ch, nullptr,
                parsed->return_text_in_logprobs);
  };
  add("POST", "/generate", generate);
  add("PUT", "/generate", generate);

  auto health = [this](http::Request, std::shared_ptr<http::Responder> r) {
    if (!ready_ || shutting_down_) return r->respond(503, "", "text/plain"), void();
    r->respond(200, "", "text/plain");
  };
  auto health_generate = [this](http::Request, std::shared_ptr<http::Responder> r) {
    if (shutting_down_) return respond_error(*r, 503, "the server is shutting down");
    // As SGLang: a real one-token generation must come back within the timeout.
    struct Probe final : ResponseChannel {
      std::shared_ptr<http::Responder> r;
      std::atomic<bool> answered{false};
      void send_json(int status, const json&) override {
        if (!answered.exchange(true)) r->respond(status == 200 ? 200 : 503, "", "text/plain");
      }
      void start_events() override {}
      void send_event(const std::string&) override {}
      void end_events() override {}
      bool is_open() const override { return r->is_open(); }
    };
    auto probe = std::make_shared<Probe>();
    probe->r = r;
    PromptItem item;
    item.input_ids = {0};
    item.rid = "HEALTH_CHECK_" + std::to_string(std::chrono::steady_clock::now().time_since_epoch().count());
    item.sampling.max_new_tokens = 1;
    item.sampling.temperature = 0;
    if (disagg_) {  // PD: fake endpoints, no peer needed (SGLang's FAKE_BOOTSTRAP_HOST, room 0)
      item.bootstrap_host = disagg::kFakeBootstrapHost;
      item.bootstrap_room = 0;
    }
    tm_->submit({item}, ApiFormat::kNative, false, false, probe);
    // The deadline (SGLANG_HEALTH_CHECK_TIMEOUT, 20 s) on a detached timer thread.
    std::thread([probe] {
      for (int i = 0; i < 200 && !probe->answered; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      if (!probe->answered.exchange(true)) probe->r->respond(503, "", "text/plain");
    }).detach();
  };
  add("GET", "/health", health);
  add("GET", "/health_generate", health_generate);

  auto model_info_route = [this](bool deprecated) {
    return [this, deprecated](http::Request, std::shared_ptr<http::Responder> r) {
      if (deprecated) log::warning("Endpoint '/get_model_info' is deprecated and will be removed in a future version. Please use '/model_info' instead.");
      respond_json(*r, 200, model_info());
    };
  };
  add("GET", "/model_info", model_info_route(false));
  add("GET", "/get_model_info", model_info_route(true));
  auto server_info_route = [this](bool deprecated) {
    return [this, deprecated](http::Request, std::shared_ptr<http::Responder> r) {
      if (deprecated) log::warning("Endpoint '/get_server_info' is deprecated and will be removed in a future version. Please use '/server_info' instead.");
      respond_json(*r, 200, server_info());
    };
  };
  add("GET", "/server_info", server_info_route(false));
  add("GET", "/get_server_info", server_info_route(true));
  if (args_.enable_metrics) {
    add("GET", "/metrics", [this](http::Request, std::shared_ptr<http::Responder> r) {
      r->respond(200, metrics_->render(), "text/plain; version=0.0.4; charset=utf-8");
    });
  }
  register_control_routes();
  register_openai_routes();
}

void ModelServer::register_control_routes() {
  const std::string key = args_.api_key;
  auto add_both = [&](const std::string& path, http::Handler h) {
    http_->route("GET", path, http::require_api_key(key, h));
    http_->route("POST", path, http::require_api_key(key, h));
  };
  add_both("/get_load", [this](http::Request, std::shared_ptr<http::Responder> r) {
    respond_json(*r, 200, fan_out("get_load", {}));
  });
  add_both("/flush_cache", [this](http::Request, std::shared_ptr<http::Responder> r) {
    bool ok = true;
    for (const auto& rep : fan_out("flush_cache", {})) ok = ok && rep.value("success", false);
    if (ok) {
      r->respond(200, "Cache flushed.\nPlease check backend logs for more details. (When there are running or waiting requests, the operation will not be performed.)\n", "text/plain");
    } else {
      r->respond(400, "Cache not flushed. Please check backend logs for more details. (When there are running or waiting requests, the operation will not be performed.)\n", "text/plain");
    }
  });
  add_both("/slow_down", [this](http::Request req, std::shared_ptr<http::Responder> r) {
    auto body = optional_json(req);
    if (!body) return respond_error(*r, 400, body.error().message());
    if (!body->is_object()) return respond_error(*r, 400, "the body must be a JSON object");
    const json t = body->contains("forward_sleep_time") ? (*body)["forward_sleep_time"] : json(nullptr);
    if (!t.is_null() && !t.is_number()) return respond_error(*r, 400, "field 'forward_sleep_time' must be a number or null");
    if (t.is_number() && t.get<double>() > 1e6) return respond_error(*r, 400, "field 'forward_sleep_time' is too large");
    // Sent to the schedulers without waiting: one may be asleep in a batch (the reply would take
    // until the sleep ends), and SGLang answers at once too.
    for (auto* s : ranks_) (void)s->control("slow_down", {{"forward_sleep_time", t}});
    respond_json(*r, 200, nullptr);
  });
  register_profile_routes(*http_, ranks_, key);  // /start_profile, /stop_profile
  decode_hold_ = std::make_unique<DecodeHold>(ranks_);  // /hold_decode (the hold fill, decode_hold.h)
  register_hold_decode_route(*http_, *decode_hold_, key);
  OtherNodesRecorder other_nodes;  // multi-node: the recorders of nodes 1..N-1 act with node 0's
  if (remote_)
    other_nodes = [this](const std::string& action) {
      std::vector<std::future<json>> replies;
      for (int n = 1; n < args_.nnodes; ++n) replies.push_back(remote_->node_control(n, "expert_record", {{"action", action}}));
      std::vector<json> out;
      for (auto& f : replies) out.push_back(f.get());
      return out;
    };
  // /start|stop|dump_expert_distribution_record
  register_expert_record_routes(*http_, experts_, key, std::move(other_nodes));
  http_->route("POST", "/abort_request", http::require_api_key(key, [this](http::Request req, std::shared_ptr<http::Responder> r) {
    auto body = parse_json_body(req.body);
    if (!body) return respond_error(*r, 400, body.error().message());
    if (!body->is_object()) return respond_error(*r, 400, "the body must be a JSON object");
    const json all_field = body->contains("abort_all") ? (*body)["abort_all"] : json(nullptr);
    if (!all_field.is_null() && !all_field.is_boolean())
      return respond_error(*r, 400, "field 'abort_all' must be true or false");
    const bool all = all_field.is_boolean() && all_field.get<bool>();
    const json rid = body->contains("rid") ? (*body)["rid"] : json("");
    if (!rid.is_string()) return respond_error(*r, 400, "field 'rid' must be a string");
    if (!all && rid.get<std::string>().empty()) return respond_error(*r, 400, "give 'rid' or 'abort_all': true");
    tm_->abort(rid.get<std::string>(), all);
    r->respond(200, "", "text/plain");
  }));
}

void ModelServer::register_openai_routes() {
  const std::string key = args_.api_key;
  const ParseLimits limits{config_.vocab_size, kMaxGenerationsPerRequest};
  auto openai = [this, limits](bool chat) {
    return [this, limits, chat](http::Request req, std::shared_ptr<http::Responder> r) {
      if (shutting_down_) return respond_error(*r, 503, "the server is shutting down");
      auto body = parse_json_body(req.body);
      if (!body) return respond_error(*r, 400, body.error().message());
      auto parsed = chat ? parse_openai_chat(*body, limits) : parse_openai_completion(*body, limits);
      if (!parsed) return respond_error(*r, 400, parsed.error().message());
      if (chat) {
        auto text = tokenizer_->apply_chat_template(parsed->messages, parsed->add_generation_prompt);
        if (!text) return respond_error(*r, 400, text.error().message());
        for (auto& item : parsed->items) item.text = *text;
      }
      auto ch = std::make_shared<HttpChannel>(r);
      std::weak_ptr<HttpChannel> weak = ch;
      TokenizerManager* tm = tm_.get();
      r->on_close([tm, weak] {
        if (auto c = weak.lock()) tm->client_gone(c);
      });
      const bool is_batch = parsed->items.size() > 1;
      tm_->submit(std::move(parsed->items), chat ? ApiFormat::kChat : ApiFormat::kCompletion, is_batch, parsed->stream, ch,
                  &*parsed);
    };
  };
  http_->route("POST", "/v1/completions", http::require_api_key(key, openai(false)));
  http_->route("POST", "/v1/chat/completions", http::require_api_key(key, openai(true)));
  auto model_card = [this] {
    return json{{"id", args_.served_model_name},
                {"object", "model"},
                {"created", 0},
                {"owned_by", "pdserve"},
                {"root", args_.served_model_name},
                {"max_model_len", args_.context_length}};
  };
  http_->route("GET", "/v1/models", http::require_api_key(key, [model_card](http::Request, std::shared_ptr<http::Responder> r) {
    respond_json(*r, 200, {{"object", "list"}, {"data", json::array({model_card()})}});
  }));
  http_->route_prefix("GET", "/v1/models/", http::require_api_key(key, [this, model_card](http::Request req, std::shared_ptr<http::Responder> r) {
    const std::string name = req.path.substr(std::string("/v1/models/").size());
    if (name != args_.served_model_name) return respond_error(*r, 404, "The model '" + name + "' does not exist");
    respond_json(*r, 200, model_card());
  }));
}

}  // namespace pdserve::server
