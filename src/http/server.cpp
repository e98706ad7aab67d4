#include "http/server.h"

#include <algorithm>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "base/logging.h"
#include "http/server_core.h"

namespace pdserve::http {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

std::optional<std::string_view> Request::query_param(std::string_view name) const {
  auto it = query.find(std::string(name));
  if (it == query.end()) return std::nullopt;
  return std::string_view(it->second);
}

std::string default_error_body(int status, std::string_view message) {
  nlohmann::json body = {{"error",
                          {{"message", std::string(message)},
                           {"type", std::string(reason_phrase(status))},
                           {"code", status}}}};
  // Replace invalid UTF-8 (a message may echo a client's path) instead of throwing.
  return body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

Handler require_api_key(std::string api_key, Handler next) {
  if (api_key.empty()) return next;
  return [key = std::move(api_key), next = std::move(next)](Request request,
                                                           std::shared_ptr<Responder> responder) {
    std::string_view auth = request.headers.get_or("authorization", "");
    constexpr std::string_view kScheme = "bearer ";
    bool ok = false;
    if (auth.size() > kScheme.size() && iequals(auth.substr(0, kScheme.size()), kScheme)) {
      std::string_view token = auth.substr(kScheme.size());
      // Constant-time over the key so response timing does not reveal a matching prefix.
      unsigned diff = token.size() == key.size() ? 0u : 1u;
      for (std::size_t i = 0; i < key.size(); ++i) {
        diff |= static_cast<unsigned char>(key[i]) ^
                static_cast<unsigned char>(i < token.size() ? token[i] : 0);
      }
      ok = diff == 0;
    }
    if (!ok) {
      responder->respond_error(401, "invalid or missing API key");
      return;
    }
    next(std::move(request), std::move(responder));
  };
}

namespace detail {

namespace {
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);
// Which server's I/O loop the current thread runs (stop() must not join its own thread).
thread_local const ServerCore* tls_io_server = nullptr;
}  // namespace

ServerCore::ServerCore(ServerOptions opts)
    : options(std::move(opts)),
      error_body(std::make_shared<const ErrorBodyFn>(options.error_body ? options.error_body
                                                                        : ErrorBodyFn(default_error_body))),
      io_context(std::max(1, options.io_threads)) {}

ServerCore::~ServerCore() {
  stop(std::chrono::milliseconds(0));
  if (stopper_.joinable()) stopper_.join();
  // A Responder held by another thread may be waking its connection right now: let it finish,
  // and refuse later ones, before the io_context (destroyed with this object) goes.
  wake_gate->close();
}

void ServerCore::dispatch(Request request, std::shared_ptr<Responder> responder) const {
  const RouteEntry* entry = nullptr;
  if (auto it = exact_routes.find(request.path); it != exact_routes.end()) {
    entry = &it->second;
  } else {
    for (const auto& [prefix, e] : prefix_routes) {
      if (request.path.starts_with(prefix)) {
        entry = &e;
        break;
      }
    }
  }
  if (entry == nullptr) {
    responder->respond_error(404, fmt::format("{} not found", request.path));
    return;
  }
  auto it = entry->by_method.find(request.method);
  // HEAD is answered by the GET handler (the connection drops the body), as Starlette does.
  bool has_get = entry->by_method.contains("GET");
  if (it == entry->by_method.end() && request.method == "HEAD" && has_get) it = entry->by_method.find("GET");
  if (it == entry->by_method.end()) {
    std::string allow;
    for (const auto& [method, handler] : entry->by_method) {
      if (!allow.empty()) allow += ", ";
      allow += method;
    }
    if (has_get && !entry->by_method.contains("HEAD")) allow += ", HEAD";
    responder->respond(405,
                       (*error_body)(405, fmt::format("method {} not allowed for {}", request.method,
                                                      request.path)),
                       "application/json", Headers{{"Allow", allow}});
    return;
  }
  // The local copy lets us answer 500 if the handler throws after taking its own.
  std::shared_ptr<Responder> keep = responder;
  try {
    it->second(std::move(request), std::move(responder));
  } catch (const std::exception& e) {
    log::error("http: handler threw: {}", e.what());
    keep->respond_error(500, fmt::format("internal error: {}", e.what()));
  }
}

Status ServerCore::start() {
  std::lock_guard lock(mu_);
  if (state_ != RunState::kIdle) return make_error(ErrorCode::kInvalidArgument, "http server already started");
  boost::system::error_code ec;
  tcp::endpoint endpoint;
  auto address = asio::ip::make_address(options.host, ec);
  if (!ec) {
    endpoint = tcp::endpoint(address, options.port);
  } else {
    tcp::resolver resolver(io_context);
    auto results = resolver.resolve(options.host, std::to_string(options.port), ec);
    if (ec || results.empty()) {
      return make_error(ErrorCode::kInvalidArgument, "cannot resolve http host '{}': {}", options.host,
                        ec ? ec.message() : "no address");
    }
    endpoint = results.begin()->endpoint();
  }
  acceptor_.emplace(asio::make_strand(io_context));
  auto fail = [&](const char* what) {
    acceptor_.reset();
    return make_error(ErrorCode::kIo, "cannot listen on {}:{}: {} failed: {}", options.host, options.port,
                      what, ec.message());
  };
  if (acceptor_->open(endpoint.protocol(), ec)) return fail("open");
  // Restarting a server must not wait for TIME_WAIT connections of the previous process.
  if (acceptor_->set_option(tcp::acceptor::reuse_address(true), ec)) return fail("setsockopt");
  if (acceptor_->bind(endpoint, ec)) return fail("bind");
  if (acceptor_->listen(asio::socket_base::max_listen_connections, ec)) return fail("listen");
  port = acceptor_->local_endpoint(ec).port();

  work_.emplace(io_context.get_executor());
  asio::co_spawn(acceptor_->get_executor(), accept_loop(), [](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      log::error("http: accept loop failed: {}", ex.what());
    }
  });
  int n = std::max(1, options.io_threads);
  for (int i = 0; i < n; ++i) {
    threads_.emplace_back([this] {
      tls_io_server = this;
      for (;;) {
        try {
          io_context.run();
          break;
        } catch (const std::exception& e) {
          // One bad handler must not take the whole server down.
          log::error("http: exception on an I/O thread: {}", e.what());
        }
      }
    });
  }
  state_ = RunState::kRunning;
  return ok_status();
}

asio::awaitable<void> ServerCore::accept_loop() {
  for (;;) {
    // A strand per connection only when several threads run the loop: with one thread nothing
    // runs concurrently, and a strand would add a queue hop to every completion of the session.
    // (No co_await inside ?: : g++ 12 destroys temporaries of such expressions twice.)
    boost::system::error_code ec;
    tcp::socket socket(io_context);
    if (options.io_threads > 1) {
      std::tie(ec, socket) = co_await acceptor_->async_accept(asio::make_strand(io_context), kNoThrow);
    } else {
      std::tie(ec, socket) = co_await acceptor_->async_accept(io_context, kNoThrow);
    }
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor_->is_open()) co_return;
      log::warning("http: accept failed: {}", ec.message());
      // Out of file descriptors: back off instead of spinning on a queue we cannot drain.
      asio::steady_timer backoff(acceptor_->get_executor(), std::chrono::milliseconds(50));
      co_await backoff.async_wait(kNoThrow);
      continue;
    }
    boost::system::error_code oe;
    // Small writes (one SSE event per token) must leave at once, not wait for Nagle.
    socket.set_option(tcp::no_delay(true), oe);
    std::shared_ptr<Session> session;
    {
      std::lock_guard lock(mu_);
      if (!stopping.load()) {
        bool over_limit = sessions_.size() >= options.max_connections;
        session = std::make_shared<Session>(*this, std::move(socket), over_limit);
        sessions_.emplace(session.get(), session);
      }
    }
    if (!session) continue;  // stopping: the socket closes as it goes out of scope
    auto executor = session->get_executor();
    asio::co_spawn(executor, session->run(session), [](std::exception_ptr) {});
  }
}

void ServerCore::remove_session(Session* session) {
  std::lock_guard lock(mu_);
  sessions_.erase(session);
  cv_.notify_all();
}

std::size_t ServerCore::connection_count() const {
  std::lock_guard lock(mu_);
  return sessions_.size();
}

std::vector<std::shared_ptr<Session>> ServerCore::snapshot_sessions() const {
  std::vector<std::shared_ptr<Session>> out;
  std::lock_guard lock(mu_);
  for (const auto& [ptr, weak] : sessions_) {
    if (auto s = weak.lock()) out.push_back(std::move(s));
  }
  return out;
}

void ServerCore::stop(std::chrono::milliseconds grace) {
  {
    std::unique_lock lock(mu_);
    switch (state_) {
      case RunState::kIdle:
        state_ = RunState::kStopped;
        cv_.notify_all();
        return;
      case RunState::kStopped:
        return;
      case RunState::kStopping:
        if (tls_io_server != this) cv_.wait(lock, [&] { return state_ == RunState::kStopped; });
        return;
      case RunState::kRunning:
        state_ = RunState::kStopping;
        stopping.store(true);
        if (tls_io_server == this) {
          // Joining the I/O threads from one of them would deadlock: hand the work over.
          stopper_ = std::thread([this, grace] { do_stop(grace); });
          return;
        }
        break;
    }
  }
  do_stop(grace);
}

void ServerCore::do_stop(std::chrono::milliseconds grace) {
  auto deadline = std::chrono::steady_clock::now() + grace;
  asio::post(acceptor_->get_executor(), [this] {
    boost::system::error_code ec;
    acceptor_->close(ec);
  });
  {
    auto sessions = snapshot_sessions();
    for (auto& s : sessions) s->begin_stop();
  }  // released before waiting: the last reference may unregister the session (takes mu_)
  {
    std::unique_lock lock(mu_);
    cv_.wait_until(lock, deadline, [&] { return sessions_.empty(); });
  }
  {
    auto sessions = snapshot_sessions();
    if (!sessions.empty()) {
      log::info("http: closing {} connection(s) still open after the {} ms grace period",
                sessions.size(), grace.count());
    }
    for (auto& s : sessions) s->force_close();
  }
  {
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, std::chrono::seconds(5), [&] { return sessions_.empty(); })) {
      log::warning("http: {} connection(s) did not close; stopping the I/O loop anyway", sessions_.size());
    }
  }
  work_.reset();
  io_context.stop();
  for (auto& t : threads_) t.join();
  threads_.clear();
  for (auto& s : snapshot_sessions()) s->drop_waiter();
  std::lock_guard lock(mu_);
  state_ = RunState::kStopped;
  cv_.notify_all();
}

void ServerCore::wait() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return state_ == RunState::kStopped || state_ == RunState::kIdle; });
}

}  // namespace detail

Server::Server(ServerOptions options) : core_(std::make_shared<detail::ServerCore>(std::move(options))) {}

Server::~Server() = default;

void Server::route(std::string_view method, std::string path, Handler handler) {
  core_->exact_routes[std::move(path)].by_method[std::string(method)] = std::move(handler);
}

void Server::route_prefix(std::string_view method, std::string prefix, Handler handler) {
  auto& routes = core_->prefix_routes;
  auto it = std::find_if(routes.begin(), routes.end(), [&](const auto& r) { return r.first == prefix; });
  if (it == routes.end()) {
    routes.emplace_back(std::move(prefix), detail::RouteEntry{});
    it = routes.end() - 1;
  }
  it->second.by_method[std::string(method)] = std::move(handler);
  std::stable_sort(routes.begin(), routes.end(),
                   [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
}

Status Server::start() { return core_->start(); }
void Server::wait() { core_->wait(); }

Status Server::run() {
  PDSERVE_RETURN_IF_ERROR(core_->start());
  core_->wait();
  return ok_status();
}

void Server::stop(std::chrono::milliseconds grace) { core_->stop(grace); }
std::uint16_t Server::port() const { return core_->port.load(); }
boost::asio::io_context& Server::io_context() { return core_->io_context; }
std::size_t Server::connection_count() const { return core_->connection_count(); }
bool Server::stopping() const { return core_->stopping.load(); }

}  // namespace pdserve::http
