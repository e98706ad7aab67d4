// One client request through the router: worker (or prefill/decode pair) selection, the upstream
// exchange, retries on another worker, streaming relay, and aborts when the client leaves.
// Everything of one request runs as coroutines on one upstream lane: a strand of the client-facing
// server's own I/O loop (no hop to another thread), so the request's state needs no locks; only
// the client-disconnect callback may come from another I/O thread.
#include <algorithm>
#include <span>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/container/small_vector.hpp>

#include "base/clock.h"
#include "base/logging.h"
#include "http/sse.h"
#include "router/body_scan.h"
#include "router/router.h"

namespace pdserve::router {

namespace asio = boost::asio;
using namespace boost::asio::experimental::awaitable_operators;
using json = nlohmann::json;

namespace {

bool is_2xx(int s) { return s >= 200 && s < 300; }

// Past this many bytes queued towards a slow client the relay stops reading from the worker
// (below the server's 16 MiB limit, at which it would drop the client).
constexpr std::size_t kRelayHighWater = 1u << 20;

// A view into `r`'s headers: the Responder copies it into the head, no string per response.
std::string_view content_type_of(const http::Response& r, std::string_view fallback = "application/json") {
  return r.headers.get_or("content-type", fallback);
}

const char* route_label(RouteKind k) {
  switch (k) {
    case RouteKind::kGenerate: return "/generate";
    case RouteKind::kCompletions: return "/v1/completions";
    case RouteKind::kChat: return "/v1/chat/completions";
  }
  return "/generate";
}

// The stream error event SGLang's routers send when a stream breaks after it started.
std::string stream_error_event(const std::string& message, int status) {
  return http::sse_event(json{{"error", {{"message", message}, {"status", status}}}}.dump());
}

// A worker's stream passed on to the client as its bytes arrive: the head with the first bytes;
// when the worker's response is complete with the bytes at hand (StreamCallbacks::on_last_data),
// they and the end go out together, and a stream that arrived whole goes as one response
// (Responder::respond_stream: written at once, not after a posted wake-up per part).
struct Relay {
  bool started = false;  // the client has the head
  bool ended = false;    // and the end
  bool pass(http::Responder& r, int status, std::string_view type, std::string_view data, bool last) {
    if (last && !started) {
      started = ended = true;
      return r.respond_stream(status, type, std::string(data));
    }
    if (!started) {
      started = true;
      r.start_stream(status, type);
    }
    const bool ok = r.send_chunk(std::string(data));
    if (last) {
      ended = true;
      r.end_stream();
    }
    return ok;
  }
};

}  // namespace

struct ProxyRequest : std::enable_shared_from_this<ProxyRequest> {
  Router* router = nullptr;
  RouteKind kind = RouteKind::kGenerate;
  std::string path;
  json body;             // PD mode, cache_aware, and bodies the scan refused; else null
  std::string raw_body;  // as the client sent it (plain mode forwards it with a rid inserted)
  BodyScan scan;         // plain mode: what the proxy reads from the body
  bool stream = false;
  bool logprob = false;
  std::size_t batch = 0;
  std::string text;
  http::Headers headers;
  std::shared_ptr<http::Responder> responder;
  Admission::TicketPtr ticket;
  UpstreamLanes::Lane* lane = nullptr;
  std::chrono::milliseconds timeout{0};
  double started = Clock::monotonic();
  std::atomic<bool> client_gone{false};

  // The workers of the attempt in flight and the rids sent to them (read by the disconnect
  // callback on an I/O thread, hence the lock).
  std::mutex mu;
  std::vector<std::pair<WorkerPtr, std::vector<std::string>>> targets;

  // Why the last attempt failed, answered if no attempt succeeds.
  struct Failure {
    int status = 502;
    std::string body;          // the worker's body, if it answered
    std::string content_type;  // of that body
    std::string message;       // our message, if it did not
  };

  // The attempts' bookkeeping, in the request rather than in run()'s coroutine frame (see run).
  // The workers tried are a few at most: kept inline, no allocation per request.
  boost::container::small_vector<Worker*, 4> tried;
  Failure failure{503, "", "", "No available workers"};  // answered if no attempt succeeds

  enum class Step { kDone, kRetry };

  std::function<bool()> relay_hold() {
    return [this] { return responder->is_open() && responder->queued_bytes() > kRelayHighWater; };
  }

  void set_targets(std::vector<std::pair<WorkerPtr, std::vector<std::string>>> t) {
    std::lock_guard lock(mu);
    targets = std::move(t);
  }

  // POST /abort_request for each rid on each worker, fire and forget on this request's lane.
  void abort_on(const std::vector<std::pair<WorkerPtr, std::vector<std::string>>>& on) {
    for (const auto& [w, rids] : on) {
      for (const auto& rid : rids) {
        auto* client = lane->client.get();
        std::string url = w->url() + "/abort_request";
        std::string payload = json{{"rid", rid}}.dump();
        http::Headers h = headers;
        asio::co_spawn(lane->executor, [client, url, payload, h]() -> asio::awaitable<void> {
          (void)co_await client->request(http::ClientRequest("POST", url, payload, h, std::chrono::seconds(5)));
        }, asio::detached);
      }
    }
  }

  void on_client_close() {
    client_gone = true;
    std::vector<std::pair<WorkerPtr, std::vector<std::string>>> t;
    {
      std::lock_guard lock(mu);
      t = targets;
    }
    if (!t.empty()) log::info("router: client left; aborting {} on {} worker(s)", t[0].second.empty() ? "" : t[0].second[0], t.size());
    auto self = shared_from_this();
    asio::post(lane->executor, [self, t] { self->abort_on(t); });
  }

  void finish_failure(const Failure& f) {
    if (!f.body.empty()) {
      responder->respond(f.status, f.body, f.content_type.empty() ? "application/json" : f.content_type);
    } else {
      responder->respond_error(f.status, f.message);
    }
    router->metrics_.inc("sgl_router_request_errors_total",
                         {{"route", route_label(kind)}, {"error_type", std::to_string(f.status)}});
  }

  WorkerPtr pick(WorkerType type, Policy& policy, std::span<Worker* const> tried) {
    auto avail = router->registry_.available(type);
    if (avail.empty()) return nullptr;
    // Another worker than the ones that just failed this request, while there is one (the first
    // attempt has tried none: no second list).
    std::vector<WorkerPtr> fresh;
    if (!tried.empty())
      for (auto& w : avail)
        if (std::find(tried.begin(), tried.end(), w.get()) == tried.end()) fresh.push_back(w);
    auto& from = fresh.empty() ? avail : fresh;
    auto w = from[policy.select(from, text)];
    // A worker is picked by one policy (the one of its type), so one series per worker.
    router->metrics_.inc(w->metric_refs().decisions, "sgl_router_policy_decisions_total",
                         {{"policy", policy.name()}, {"worker", w->url()}});
    return w;
  }

  // Records the outcome of an exchange with `w`: transport errors and retryable statuses count
  // against the worker (breaker); anything else, 4xx included, shows the worker is working.
  bool classify(const WorkerPtr& w, const Result<http::Response>& r, Failure& f, const char* role) {
    if (r && !is_retryable_status(r->status)) {
      router->count_breaker(w, true);
      return true;
    }
    router->count_breaker(w, false);
    if (!r) {
      f = Failure{502, "", "", fmt::format("{} server error: {}", role, r.error().message())};
    } else {
      f = Failure{r->status, r->body, std::string(content_type_of(*r)), ""};
    }
    return false;
  }

  // The outcome of a non-streamed exchange with `w`: the answer relayed, or a retry.
  Step relay_plain(const WorkerPtr& w, Result<http::Response>& r, Failure& f) {
    if (!classify(w, r, f, "Worker")) return Step::kRetry;
    w->count_processed();
    responder->respond(r->status, std::move(r->body), content_type_of(*r));
    return Step::kDone;
  }

  asio::awaitable<Step> stream_attempt(WorkerPtr w, std::string payload, Failure& f) {
    auto* client = lane->client.get();
    http::ClientRequest req("POST", w->url() + path, std::move(payload), headers, timeout);
    int head_status = 0;
    std::string head_type;
    Relay relay;
    http::StreamCallbacks cb(
        [&](const http::Response& head) {
          head_status = head.status;
          head_type = content_type_of(head, "text/event-stream");
          return true;
        },
        [&](std::string_view data) { return !client_gone && relay.pass(*responder, head_status, head_type, data, false); },
        nullptr);
    cb.on_last_data = [&](std::string_view data) {
      return !client_gone && relay.pass(*responder, head_status, head_type, data, true);
    };
    cb.hold = relay_hold();
    auto r = co_await client->stream(std::move(req), std::move(cb));
    if (relay.started) {
      if (!r) {
        router->count_breaker(w, false);
        router->metrics_.inc("sgl_router_pd_stream_errors_total", {{"worker", w->url()}});
        responder->send_chunk(stream_error_event("worker stream broke: " + r.error().message(), 502));
      } else {
        router->count_breaker(w, true);
        w->count_processed();
      }
      if (!relay.ended) responder->end_stream();
      co_return Step::kDone;
    }
    if (!classify(w, r, f, "Worker")) co_return Step::kRetry;
    w->count_processed();
    if (is_2xx(r->status)) {
      responder->start_stream(r->status, content_type_of(*r, "text/event-stream"));
      responder->end_stream();
    } else {
      responder->respond(r->status, std::move(r->body), content_type_of(*r));
    }
    co_return Step::kDone;
  }

  asio::awaitable<Step> pd_attempt(WorkerPtr p, WorkerPtr d, std::string payload, std::vector<std::string> rids,
                                   Failure& f) {
    auto* client = lane->client.get();
    auto& m = router->metrics_;
    m.inc("sgl_router_pd_prefill_requests_total", {{"worker", p->url()}});
    m.inc("sgl_router_pd_decode_requests_total", {{"worker", d->url()}});
    std::optional<Result<http::Response>> pr, dr;
    bool prefill_failed = false, prefill_done = false;
    // The decode's stream towards the client: its bytes as they are, or (with logprobs) each
    // event rewritten. relay.started: the client has part of the answer.
    Relay relay;
    PrefillLogprobs plp;
    std::vector<std::string> pending;  // decode events held until the prefill's logprobs arrive
    int head_status = 200;
    std::string head_type = "text/event-stream";
    auto send_event = [&](std::string_view data) {
      std::string out = (data == "[DONE]") ? std::string(data) : plp.apply(data);
      return relay.pass(*responder, head_status, head_type, http::sse_event(out), false);
    };
    auto prefill_failed_now = [&] {
      prefill_failed = true;
      // The decode would wait for KV that never comes: end it now.
      if (!relay.started) abort_on({{d, rids}});
    };

    auto prefill_call = [&]() -> asio::awaitable<void> {
      http::ClientRequest req("POST", p->url() + path, payload, headers, timeout);
      if (stream) {
        http::StreamCallbacks cb(nullptr, nullptr, [&](const http::SseEvent& e) {
          if (logprob) plp.add_event(e.data);
          return true;
        });
        pr.emplace(co_await client->stream(std::move(req), std::move(cb)));
      } else {
        pr.emplace(co_await client->request(std::move(req)));
      }
      if (!*pr || !is_2xx((*pr)->status)) {
        prefill_failed_now();
        co_return;
      }
      prefill_done = true;
      for (auto& e : pending) send_event(e);
      pending.clear();
    };
    auto decode_call = [&]() -> asio::awaitable<void> {
      http::ClientRequest req("POST", d->url() + path, payload, headers, timeout);
      if (!stream) {
        dr.emplace(co_await client->request(std::move(req)));
        co_return;
      }
      http::StreamCallbacks cb(
          [&](const http::Response& head) {
            head_status = head.status;
            head_type = content_type_of(head, "text/event-stream");
            return true;
          },
          // Without logprobs the decode's bytes go out as they are; with them each event is rewritten.
          logprob ? std::function<bool(std::string_view)>() : [&](std::string_view data) {
            if (client_gone || (prefill_failed && !relay.started)) return false;
            return relay.pass(*responder, head_status, head_type, data, false);
          },
          !logprob ? std::function<bool(const http::SseEvent&)>() : [&](const http::SseEvent& e) {
            if (client_gone || (prefill_failed && !relay.started)) return false;
            if (prefill_done) return send_event(e.data);
            pending.push_back(e.data);
            return true;
          });
      if (!logprob)
        cb.on_last_data = [&](std::string_view data) {
          if (client_gone || (prefill_failed && !relay.started)) return false;
          return relay.pass(*responder, head_status, head_type, data, true);
        };
      cb.hold = relay_hold();
      dr.emplace(co_await client->stream(std::move(req), std::move(cb)));
    };
    co_await (prefill_call() && decode_call());

    if (relay.started) {
      // The client already has part of the answer: no retry is possible any more.
      if (prefill_done)
        for (auto& e : pending) send_event(e);
      if (!*dr) {
        count_pd(p, true, d, false);
        m.inc("sgl_router_pd_stream_errors_total", {{"worker", d->url()}});
        responder->send_chunk(stream_error_event("decode stream broke: " + (*dr).error().message(), 502));
      } else {
        count_pd(p, *pr && is_2xx((*pr)->status), d, true);
      }
      if (!relay.ended) responder->end_stream();
      co_return Step::kDone;
    }
    const Result<http::Response>& pres = *pr;
    if (!classify(p, pres, f, "Prefill")) {
      m.inc("sgl_router_pd_prefill_errors_total", {{"worker", p->url()}});
      m.inc("sgl_router_pd_errors_total", {{"error_type", "prefill"}});
      if (!pres) f.message += ". This will cause decode timeout.";
      co_return Step::kRetry;
    }
    if (!is_2xx(pres->status)) {  // a 4xx from the prefill: the request itself is bad
      responder->respond(pres->status, pres->body, content_type_of(*pres));
      co_return Step::kDone;
    }
    const Result<http::Response>& dres = *dr;
    if (!classify(d, dres, f, "Decode")) {
      m.inc("sgl_router_pd_decode_errors_total", {{"worker", d->url()}});
      m.inc("sgl_router_pd_errors_total", {{"error_type", "decode"}});
      co_return Step::kRetry;
    }
    p->count_processed();
    d->count_processed();
    if (!is_2xx(dres->status)) {
      responder->respond(dres->status, dres->body, content_type_of(*dres));
    } else if (stream) {
      responder->start_stream(dres->status, content_type_of(*dres, "text/event-stream"));
      for (auto& e : pending) responder->send_chunk(http::sse_event(e == "[DONE]" ? e : plp.apply(e)));
      responder->end_stream();
    } else if (logprob) {
      auto merged = merge_logprobs(pres->body, dres->body);
      if (!merged) {
        responder->respond_error(502, merged.error().message());
      } else {
        responder->respond(dres->status, std::move(*merged), content_type_of(*dres));
      }
    } else {
      responder->respond(dres->status, dres->body, content_type_of(*dres));
    }
    co_return Step::kDone;
  }

  void count_pd(const WorkerPtr& p, bool p_ok, const WorkerPtr& d, bool d_ok) {
    router->count_breaker(p, p_ok);
    router->count_breaker(d, d_ok);
    if (p_ok) p->count_processed();
    if (d_ok) d->count_processed();
  }

  // Plain mode: picks a worker that has not failed this request yet and builds its payload (the
  // client's body with a rid inserted in its text: no copy of the parsed body and no
  // re-serialization on the hot path). Null when no worker is available.
  WorkerPtr prepare_plain(std::string& payload) {
    auto w = pick(WorkerType::kRegular, *router->policy_, tried);
    if (!w) {
      failure = Failure{503, "", "", "No available workers"};
      return nullptr;
    }
    tried.push_back(w.get());
    auto rooms = make_rooms(batch);
    payload.reserve(raw_body.size() + 64);  // room for the rid: no reallocation to insert it
    payload = raw_body;
    auto rids = ensure_rid_text(payload, scan, batch, rooms);
    if (!rids) {
      json copy = body;
      rids = ensure_rid(copy, batch, rooms);
      payload = copy.dump();
    }
    std::vector<std::pair<WorkerPtr, std::vector<std::string>>> t;
    t.emplace_back(w, std::move(*rids));
    set_targets(std::move(t));
    return w;
  }

  // One PD attempt: a prefill and a decode worker, the body rewritten for them.
  asio::awaitable<Step> pd_try() {
    auto p = pick(WorkerType::kPrefill, *router->prefill_policy_, tried);
    auto d = pick(WorkerType::kDecode, *router->decode_policy_, tried);
    if (!p || !d) {
      failure = Failure{503, "", "", !p ? "No available prefill workers" : "No available decode workers"};
      co_return Step::kRetry;
    }
    tried.push_back(p.get());
    tried.push_back(d.get());
    json rewritten = body;
    auto rooms = make_rooms(batch);
    inject_bootstrap(rewritten, p->bootstrap_host(), p->bootstrap_port(), rooms, batch);
    auto rids = ensure_rid(rewritten, batch, rooms);
    set_targets({{p, rids}, {d, rids}});
    LoadGuard pl(p), dl(d);
    co_return co_await pd_attempt(p, d, rewritten.dump(), rids, failure);
  }

  // The wait before retry `attempt` (counted in the metrics).
  asio::awaitable<void> backoff(int attempt) {
    auto& m = router->metrics_;
    m.inc("sgl_router_retries_total", {{"route", route_label(kind)}});
    auto wait = retry_backoff(router->retry_, attempt - 1, static_cast<double>(random_u64() >> 11) * 0x1.0p-53);
    m.observe("sgl_router_retry_backoff_duration_seconds", {{"attempt", std::to_string(attempt)}},
              std::chrono::duration<double>(wait).count());
    asio::steady_timer t(lane->executor, wait);
    co_await t.async_wait(asio::use_awaitable);
  }

  // After the last attempt: the failure answered if none succeeded, and the request's metrics.
  void finish(bool done) {
    Router& r = *router;
    const bool pd = r.args_.pd_disaggregation;
    const int attempts = r.retry_.attempts();
    set_targets({});
    const std::string_view route = route_label(kind);
    if (!done && !client_gone) {
      if (attempts > 1) r.metrics_.inc("sgl_router_retries_exhausted_total", {{"route", route}});
      log::warning("router: {} failed after {} attempt(s): {} {}", route, attempts, failure.status,
                   failure.message.empty() ? failure.body.substr(0, 200) : failure.message);
      finish_failure(failure);
    }
    const double dt = Clock::monotonic() - started;
    auto& refs = r.route_refs_[static_cast<std::size_t>(kind)];
    r.metrics_.observe(refs.duration, "sgl_router_request_duration_seconds", {{"route", route}}, dt);
    r.metrics_.observe(refs.generate_duration, "sgl_router_generate_duration_seconds", {{"route", route}}, dt);
    if (pd) {
      r.metrics_.inc("sgl_router_pd_requests_total", {{"route", route}});
      r.metrics_.observe("sgl_router_pd_request_duration_seconds", {{"route", route}}, dt);
    }
  }

  // The request's attempts. GCC keeps every local of a coroutine in its frame, waits or not, and
  // Asio recycles frames of at most 1,020 bytes (a few per thread): so this frame holds only what
  // the plain non-streamed attempt needs across its wait, and the rest is in the request (above)
  // or in coroutines of their own that only PD, streams and retries pay for. (It was 1,248 bytes:
  // an aligned_alloc per request, which also evicted a recycled frame.)
  static asio::awaitable<void> run(std::shared_ptr<ProxyRequest> self) {
    const bool pd = self->router->args_.pd_disaggregation;
    const int attempts = self->router->retry_.attempts();
    bool done = false;
    for (int attempt = 0; attempt < attempts && !done && !self->client_gone; ++attempt) {
      if (attempt > 0) {
        co_await self->backoff(attempt);
        if (self->client_gone) break;
      }
      Step step = Step::kRetry;
      if (pd) {
        step = co_await self->pd_try();
      } else {
        std::string payload;
        WorkerPtr w = self->prepare_plain(payload);
        if (!w) continue;
        LoadGuard load(w);
        if (self->stream) {
          step = co_await self->stream_attempt(w, std::move(payload), self->failure);
        } else {
          // In this frame: a coroutine of its own cost a frame allocation per request.
          auto result = co_await self->lane->client->request(
              http::ClientRequest("POST", w->url() + self->path, std::move(payload), self->headers, self->timeout));
          step = self->relay_plain(w, result, self->failure);
        }
      }
      done = step == Step::kDone;
    }
    self->finish(done);
  }
};

void Router::handle_generation(RouteKind kind, std::string path, http::Request req,
                               std::shared_ptr<http::Responder> responder) {
  metrics_.inc(route_refs_[static_cast<std::size_t>(kind)].requests, "sgl_router_requests_total",
               {{"route", route_label(kind)}});
  auto self = std::make_shared<ProxyRequest>();
  const bool pd = args_.pd_disaggregation;
  const bool cache_aware =
      policy_for(pd ? WorkerType::kPrefill : WorkerType::kRegular).name() == std::string_view("cache_aware") ||
      (pd && decode_policy_->name() == std::string_view("cache_aware"));
  // Plain mode reads what it needs in one pass over the text; the DOM only where a policy or PD's
  // rewriting needs it (a "rid": null is replaced in the DOM), or where the scan was unsure.
  std::optional<BodyScan> scan;
  if (!pd) scan = scan_body(req.body, kind);
  if (!scan || cache_aware || scan->rid == BodyScan::Rid::kNull) {
    self->body = json::parse(req.body, nullptr, false);
    if (self->body.is_discarded() || !self->body.is_object()) {
      responder->respond_error(400, "request body must be a JSON object");
      metrics_.inc("sgl_router_request_errors_total", {{"route", route_label(kind)}, {"error_type", "400"}});
      return;
    }
    if (!scan) scan = scan_dom(self->body, kind);
  }
  if (!pd) self->raw_body = std::move(req.body);
  self->router = this;
  self->kind = kind;
  self->path = std::move(path);
  self->scan = std::move(*scan);
  self->stream = self->scan.stream;
  self->batch = self->scan.batch;
  self->logprob = pd && kind == RouteKind::kGenerate && wants_logprob(self->body);
  if (cache_aware) self->text = request_text(self->body, kind);
  // The Rust router forwards only these client headers; the body type is ours to state.
  self->headers.add("Content-Type", "application/json");
  for (const auto& [name, value] : req.headers) {
    if (http::iequals(name, "authorization") || http::iequals(name, "x-request-id") ||
        http::iequals(name, "x-correlation-id") ||
        (name.size() > 13 && http::iequals(std::string_view(name).substr(0, 13), "x-request-id-")))
      self->headers.add(name, value);
  }
  self->responder = responder;
  self->lane = &lanes_->next();
  self->timeout = std::chrono::seconds(args_.request_timeout_secs);
  std::weak_ptr<ProxyRequest> weak = self;
  responder->on_close([weak] {
    if (auto s = weak.lock()) s->on_client_close();
  });
  auto start = [self](Admission::TicketPtr ticket) {
    self->ticket = std::move(ticket);
    asio::co_spawn(self->lane->executor, ProxyRequest::run(self), [](std::exception_ptr e) {
      if (!e) return;
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        log::error("router: request failed: {}", ex.what());
      }
    });
  };
  if (admission_->unlimited()) {
    start(nullptr);  // without wrapping `start` for admit() (an allocation per request)
  } else {
    admission_->admit(responder, std::move(start));
  }
}

}  // namespace pdserve::router
