// Server behaviour seen from a client: routing, bodies, keep-alive, limits, timeouts, API keys.
#include <mutex>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "http/client.h"
#include "http/server.h"
#include "http/test_util.h"

namespace pdserve::http {
namespace {

using namespace std::chrono_literals;
using testing::RawSocket;

std::unique_ptr<Server> start_server(ServerOptions options, const std::function<void(Server&)>& routes) {
  auto server = std::make_unique<Server>(std::move(options));
  routes(*server);
  auto st = server->start();
  EXPECT_TRUE(st.has_value()) << (st ? "" : st.error().message());
  return server;
}

std::string url(const Server& s, std::string_view path) {
  return fmt::format("http://127.0.0.1:{}{}", s.port(), path);
}

void ok_handler(Request, std::shared_ptr<Responder> r) { r->respond(200, "ok", "text/plain"); }

TEST(Server, RoutesExactPathAndMethod) {
  auto server = start_server({}, [](Server& s) {
    s.route("GET", "/health", ok_handler);
    s.route("POST", "/flush_cache", ok_handler);
    s.route("GET", "/flush_cache", ok_handler);
    s.route_prefix("GET", "/v1/models/", [](Request req, std::shared_ptr<Responder> r) {
      r->respond(200, req.path.substr(std::string_view("/v1/models/").size()), "text/plain");
    });
  });
  Client client;
  auto r = client.get(url(*server, "/health"));
  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "ok");
  EXPECT_EQ(r->headers.get_or("content-type", ""), "text/plain");

  r = client.get(url(*server, "/health/extra"));
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 404);
  auto body = nlohmann::json::parse(r->body);
  EXPECT_EQ(body["error"]["code"], 404);
  EXPECT_NE(body["error"]["message"].get<std::string>().find("/health/extra"), std::string::npos);

  r = client.request("DELETE", url(*server, "/flush_cache"));
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 405);
  EXPECT_EQ(r->headers.get_or("allow", ""), "GET, POST, HEAD");
  EXPECT_EQ(nlohmann::json::parse(r->body)["error"]["code"], 405);

  // HEAD uses the GET handler: same head, no body; the connection stays usable.
  r = client.request("HEAD", url(*server, "/health"));
  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->headers.get_or("content-length", ""), "2");
  EXPECT_EQ(r->body, "");

  r = client.get(url(*server, "/v1/models/deepseek-v3"));
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "deepseek-v3");
}

TEST(Server, JsonEchoWithQueryAndHeaders) {
  auto server = start_server({}, [](Server& s) {
    s.route("POST", "/echo", [](Request req, std::shared_ptr<Responder> r) {
      auto in = nlohmann::json::parse(req.body);
      nlohmann::json out = {{"in", in},
                            {"q", std::string(req.query_param("q").value_or("-"))},
                            {"x", std::string(req.headers.get_or("X-TEST-HEADER", "-"))},
                            {"path", req.path},
                            {"remote", req.remote_address}};
      r->respond(200, out.dump(), "application/json", Headers{{"X-Reply", "1"}});
    });
  });
  Client client;
  nlohmann::json payload = {{"text", "héllo \"world\""}, {"ids", {1, 2, 3}}};
  auto r = client.request("POST", url(*server, "/echo?q=a%20b+c&z"), payload.dump(),
                          Headers{{"Content-Type", "application/json"}, {"x-test-header", "v"}});
  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->headers.get_or("x-reply", ""), "1");
  auto out = nlohmann::json::parse(r->body);
  EXPECT_EQ(out["in"], payload);
  EXPECT_EQ(out["q"], "a b c");
  EXPECT_EQ(out["x"], "v");
  EXPECT_EQ(out["path"], "/echo");
  EXPECT_TRUE(out["remote"].get<std::string>().starts_with("127.0.0.1:"));
}

TEST(Server, KeepAliveServesManyRequestsOnOneConnection) {
  std::mutex mu;
  std::set<std::string> remotes;
  auto server = start_server({}, [&](Server& s) {
    s.route("GET", "/who", [&](Request req, std::shared_ptr<Responder> r) {
      std::lock_guard lock(mu);
      remotes.insert(req.remote_address);
      r->respond(200, req.remote_address, "text/plain");
    });
  });
  Client client;
  for (int i = 0; i < 5; ++i) {
    auto r = client.get(url(*server, "/who"));
    ASSERT_TRUE(r.has_value()) << r.error().message();
    EXPECT_EQ(r->status, 200);
  }
  EXPECT_EQ(remotes.size(), 1u);  // one client port: one connection
  EXPECT_EQ(server->connection_count(), 1u);

  // Pipelined: two requests in one write get two responses in order.
  RawSocket raw(server->port());
  ASSERT_TRUE(raw.send("GET /who HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::string got = raw.read_until("404 Not Found", 2s);
  auto first = got.find("HTTP/1.1 200 OK");
  auto second = got.find("HTTP/1.1 404 Not Found");
  EXPECT_NE(first, std::string::npos);
  EXPECT_NE(second, std::string::npos);
  EXPECT_LT(first, second);
}

TEST(Server, RejectsLargeBodiesWith413) {
  ServerOptions o;
  o.max_body_bytes = 1000;
  int calls = 0;
  auto server = start_server(o, [&](Server& s) {
    s.route("POST", "/echo", [&](Request req, std::shared_ptr<Responder> r) {
      ++calls;
      r->respond(200, req.body, "text/plain");
    });
  });
  Client client;
  auto r = client.request("POST", url(*server, "/echo"), std::string(1001, 'a'));
  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_EQ(r->status, 413);
  EXPECT_EQ(nlohmann::json::parse(r->body)["error"]["code"], 413);
  // A large Content-Length is refused from the header alone, even with a big body on the way.
  r = client.request("POST", url(*server, "/echo"), std::string(4 << 20, 'a'));
  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_EQ(r->status, 413);
  r = client.request("POST", url(*server, "/echo"), std::string(1000, 'a'));
  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body.size(), 1000u);

  // Chunked: within the limit it is reassembled...
  {
    RawSocket raw(server->port());
    raw.send("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
             "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    std::string got = raw.read_until("hello world", 2s);
    EXPECT_NE(got.find("200 OK"), std::string::npos) << got;
  }
  // ...and past it the server answers 413 while reading chunks.
  {
    RawSocket raw(server->port());
    raw.send("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    std::string chunk = fmt::format("{:x}\r\n{}\r\n", 300, std::string(300, 'b'));
    for (int i = 0; i < 5; ++i) raw.send(chunk);
    bool closed = false;
    std::string got = raw.read_until_close(3s, &closed);
    EXPECT_NE(got.find("HTTP/1.1 413"), std::string::npos) << got;
    EXPECT_TRUE(closed);
  }
  EXPECT_EQ(calls, 2);  // only the accepted bodies reached the handler
}

TEST(Server, HeaderTimeoutClosesSlowloris) {
  ServerOptions o;
  o.header_timeout = 300ms;
  auto server = start_server(o, [](Server& s) { s.route("GET", "/", ok_handler); });

  RawSocket raw(server->port());
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(raw.send("GET / HTTP/1.1\r\n"));
  bool closed = false;
  // Trickle one header line every 50 ms: each byte is progress, but the header never ends.
  for (int i = 0; i < 60 && !closed; ++i) {
    if (!raw.send(fmt::format("X-Slow-{}: y\r\n", i))) {
      closed = true;
      break;
    }
    raw.read_some(50ms, &closed);
  }
  auto elapsed = std::chrono::steady_clock::now() - t0;
  EXPECT_TRUE(closed);
  EXPECT_GE(elapsed, 250ms);
  EXPECT_LT(elapsed, 1500ms);

  // A connection that never sends a byte is closed too.
  RawSocket idle(server->port());
  bool idle_closed = false;
  idle.read_until_close(2s, &idle_closed);
  EXPECT_TRUE(idle_closed);
  EXPECT_TRUE(testing::eventually([&] { return server->connection_count() == 0; }));
}

TEST(Server, IdleKeepAliveConnectionIsClosed) {
  ServerOptions o;
  o.idle_timeout = 300ms;  // the header timeout stays at 30 s: only the idle timeout can close it
  auto server = start_server(o, [](Server& s) { s.route("GET", "/", ok_handler); });
  RawSocket raw(server->port());
  ASSERT_TRUE(raw.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  EXPECT_NE(raw.read_until("ok", 2s).find("200"), std::string::npos);
  const auto t0 = std::chrono::steady_clock::now();
  bool closed = false;
  raw.read_until_close(3s, &closed);
  const auto elapsed = std::chrono::steady_clock::now() - t0;
  EXPECT_TRUE(closed);
  EXPECT_GE(elapsed, 200ms);
  EXPECT_LT(elapsed, 2s);
}

TEST(Server, ApiKeyChecked) {
  auto server = start_server({}, [](Server& s) {
    s.route("GET", "/secret", require_api_key("sk-123", ok_handler));
    s.route("GET", "/open", require_api_key("", ok_handler));
  });
  Client client;
  auto r = client.get(url(*server, "/secret"));
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(nlohmann::json::parse(r->body)["error"]["code"], 401);
  r = client.request("GET", url(*server, "/secret"), {}, Headers{{"Authorization", "Bearer sk-12"}});
  EXPECT_EQ(r->status, 401);
  r = client.request("GET", url(*server, "/secret"), {}, Headers{{"Authorization", "Bearer sk-1234"}});
  EXPECT_EQ(r->status, 401);
  r = client.request("GET", url(*server, "/secret"), {}, Headers{{"authorization", "bearer sk-123"}});
  EXPECT_EQ(r->status, 200);
  r = client.get(url(*server, "/open"));
  EXPECT_EQ(r->status, 200);
}

TEST(Server, CustomErrorBodyAndHandlerExceptions) {
  ServerOptions o;
  o.error_body = [](int status, std::string_view message) {
    return nlohmann::json{{"object", "error"}, {"message", message}, {"code", status}}.dump();
  };
  auto server = start_server(o, [](Server& s) {
    s.route("GET", "/throw", [](Request, std::shared_ptr<Responder>) { throw std::runtime_error("boom"); });
    s.route("GET", "/drop", [](Request, std::shared_ptr<Responder>) {});  // never answers
  });
  Client client;
  auto r = client.get(url(*server, "/missing"));
  EXPECT_EQ(nlohmann::json::parse(r->body)["object"], "error");
  r = client.get(url(*server, "/throw"));
  EXPECT_EQ(r->status, 500);
  EXPECT_NE(r->body.find("boom"), std::string::npos);
  r = client.get(url(*server, "/drop"));  // the dropped Responder answers 500 by itself
  EXPECT_EQ(r->status, 500);
}

TEST(Server, MalformedRequestGets400AndExpectContinueWorks) {
  auto server = start_server({}, [](Server& s) {
    s.route("POST", "/echo", [](Request req, std::shared_ptr<Responder> r) { r->respond(200, req.body, "text/plain"); });
  });
  {
    RawSocket raw(server->port());
    raw.send("GARBAGE\r\n\r\n");
    bool closed = false;
    std::string got = raw.read_until_close(2s, &closed);
    EXPECT_NE(got.find("HTTP/1.1 400"), std::string::npos) << got;
  }
  {
    RawSocket raw(server->port());
    raw.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    std::string got = raw.read_until("100 Continue\r\n\r\n", 2s);
    ASSERT_NE(got.find("HTTP/1.1 100 Continue"), std::string::npos) << got;
    raw.send("ping");
    got = raw.read_until("ping", 2s);
    EXPECT_NE(got.find("200 OK"), std::string::npos) << got;
  }
  {
    // HTTP/1.0 without keep-alive: answered, then closed.
    RawSocket raw(server->port());
    raw.send("POST /echo HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi");
    bool closed = false;
    std::string got = raw.read_until_close(2s, &closed);
    EXPECT_NE(got.find("200 OK"), std::string::npos) << got;
    EXPECT_TRUE(closed);
  }
}

TEST(Server, MaxConnectionsAnswers503) {
  ServerOptions o;
  o.max_connections = 1;
  auto server = start_server(o, [](Server& s) { s.route("GET", "/", ok_handler); });
  RawSocket holder(server->port());  // takes the only slot (idle)
  ASSERT_TRUE(testing::eventually([&] { return server->connection_count() == 1; }));
  Client client;
  auto r = client.get(url(*server, "/"));
  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_EQ(r->status, 503);
  holder.close();
  ASSERT_TRUE(testing::eventually([&] { return server->connection_count() == 0; }));
  r = client.get(url(*server, "/"));
  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_EQ(r->status, 200);
}

TEST(Server, StartErrors) {
  auto a = start_server({}, [](Server& s) { s.route("GET", "/", ok_handler); });
  ServerOptions o;
  o.port = a->port();
  Server b(o);
  auto st = b.start();
  ASSERT_FALSE(st.has_value());  // port in use
  EXPECT_EQ(st.error().code(), ErrorCode::kIo);
  EXPECT_FALSE(a->start().has_value());  // twice
}

}  // namespace
}  // namespace pdserve::http
