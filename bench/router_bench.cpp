// Router overhead on loopback: clients talking to a fast stub worker directly, through
// `pdserve router` (in this process), and through nginx (a reverse proxy of the same stub), side
// by side in one run. Non-streamed and streamed /generate at 1, 64 and 1,024 concurrent clients;
// requests/s and latency p50/p99, and the latency each proxy adds over the direct path.
//
//   build/bench/router_bench [--seconds 3] [--concurrency 1,64,1024] [--no-nginx]
//
// Everything shares this machine's cores (stub, proxy, clients), so the figures are a
// comparison between proxies under the same load, not absolute capacities.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "base/logging.h"
#include "http/client.h"
#include "router/router.h"
#include "router/stub_worker.h"

using namespace pdserve;
namespace asio = boost::asio;

namespace {

constexpr const char* kBody = R"({"input_ids":[1,2,3,4],"sampling_params":{"max_new_tokens":8}})";
constexpr const char* kStreamBody = R"({"input_ids":[1,2,3,4],"stream":true,"sampling_params":{"max_new_tokens":8}})";

// The stub answers at once: a small JSON, or 8 events + [DONE] (a short generation).
void fast_gen(const http::Request& req, std::shared_ptr<http::Responder> r) {
  if (req.body.find("\"stream\":true") != std::string::npos) {
    r->start_stream(200);
    std::string all;
    for (int i = 0; i < 8; ++i) all += http::sse_event(R"({"text":"tok","output_ids":[7],"index":0})");
    all += http::sse_event("[DONE]");
    r->send_chunk(std::move(all));
    r->end_stream();
    return;
  }
  r->respond(200, R"({"text":"tok tok tok tok tok tok tok tok","output_ids":[7,7,7,7,7,7,7,7],"meta_info":{"finish_reason":{"type":"length","length":8}}})");
}

struct Row {
  double rps = 0, p50_ms = 0, p99_ms = 0;
  int64_t ok = 0, failed = 0;
};

Row load(const std::string& url, bool stream, int concurrency, double seconds) {
  asio::io_context io(1);
  http::ClientOptions co;
  co.max_idle_per_host = 4096;
  http::AsyncClient client(io.get_executor(), co);
  std::vector<double> lat;
  int64_t ok = 0, failed = 0;
  const std::string method = "POST";
  const http::Headers headers{{"Content-Type", "application/json"}};
  const auto t0 = std::chrono::steady_clock::now();
  const auto warm_until = t0 + std::chrono::milliseconds(300);
  const auto until = warm_until + std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(seconds));
  for (int i = 0; i < concurrency; ++i) {
    asio::co_spawn(io, [&]() -> asio::awaitable<void> {
      while (std::chrono::steady_clock::now() < until) {
        const auto s = std::chrono::steady_clock::now();
        bool good = false;
        // Built outside co_await: g++ 12 mishandles string-literal temporaries in co_await expressions.
        http::ClientRequest req(method, url, stream ? kStreamBody : kBody, headers, std::chrono::seconds(30));
        if (stream) {
          bool done = false;
          http::StreamCallbacks cb(nullptr, nullptr, [&](const http::SseEvent& e) {
            if (e.data == "[DONE]") done = true;
            return true;
          });
          auto r = co_await client.stream(std::move(req), std::move(cb));
          good = r && r->status == 200 && done;
        } else {
          auto r = co_await client.request(std::move(req));
          good = r && r->status == 200;
        }
        const auto e = std::chrono::steady_clock::now();
        if (s < warm_until) continue;  // connections are opened in the warm-up
        if (good) {
          ++ok;
          lat.push_back(std::chrono::duration<double, std::milli>(e - s).count());
        } else {
          ++failed;
        }
      }
    }, asio::detached);
  }
  io.run();
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - warm_until).count();
  Row row;
  row.ok = ok;
  row.failed = failed;
  row.rps = static_cast<double>(ok) / dt;
  std::sort(lat.begin(), lat.end());
  if (!lat.empty()) {
    row.p50_ms = lat[lat.size() / 2];
    row.p99_ms = lat[std::min(lat.size() - 1, lat.size() * 99 / 100)];
  }
  return row;
}

// nginx as a keep-alive reverse proxy of the stub, unbuffered (so streams are relayed as they
// come, like the router). Returns its pid, or -1.
pid_t start_nginx(const std::filesystem::path& dir, int port, int upstream_port) {
  std::filesystem::create_directories(dir / "logs");
  std::ofstream(dir / "nginx.conf") << "worker_processes auto;\n"
                                    << "pid " << (dir / "nginx.pid").string() << ";\n"
                                    << "error_log " << (dir / "logs/error.log").string() << " error;\n"
                                    << "events { worker_connections 8192; }\n"
                                    << "http {\n  access_log off;\n"
                                    << "  client_body_temp_path " << (dir / "body").string() << ";\n"
                                    << "  upstream stub { server 127.0.0.1:" << upstream_port << "; keepalive 2048; }\n"
                                    << "  server {\n    listen 127.0.0.1:" << port << ";\n"
                                    << "    keepalive_requests 1000000;\n"
                                    << "    location / {\n      proxy_pass http://stub;\n"
                                    << "      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n"
                                    << "      proxy_buffering off;\n    }\n  }\n}\n";
  pid_t pid = ::fork();
  if (pid == 0) {
    std::string conf = (dir / "nginx.conf").string(), prefix = dir.string() + "/";
    ::execlp("nginx", "nginx", "-p", prefix.c_str(), "-c", conf.c_str(), "-g", "daemon off;", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  http::Client c;
  for (int i = 0; i < 100; ++i) {
    auto r = c.get("http://127.0.0.1:" + std::to_string(port) + "/health", std::chrono::milliseconds(500));
    if (r && r->status == 200) return pid;
    int st;
    if (::waitpid(pid, &st, WNOHANG) == pid) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return pid;
}

int free_port() {
  asio::io_context io;
  asio::ip::tcp::acceptor a(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  return a.local_endpoint().port();
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 3;
  std::vector<int> levels = {1, 64, 1024};
  bool nginx = true;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--seconds") && i + 1 < argc) {
      seconds = std::atof(argv[++i]);
    } else if (!std::strcmp(argv[i], "--concurrency") && i + 1 < argc) {
      levels.clear();
      for (char* t = std::strtok(argv[++i], ","); t; t = std::strtok(nullptr, ",")) levels.push_back(std::atoi(t));
    } else if (!std::strcmp(argv[i], "--no-nginx")) {
      nginx = false;
    } else {
      std::fprintf(stderr, "usage: router_bench [--seconds S] [--concurrency 1,64,1024] [--no-nginx]\n");
      return 2;
    }
  }
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;  // clients + router + stub sockets in one process
  ::setrlimit(RLIMIT_NOFILE, &rl);
  log::init("warning");

  router::testing::StubWorker stub("stub", fast_gen, 1);
  stub.recording = false;
  router::RouterArgs args;
  args.host = "127.0.0.1";
  args.port = 0;
  args.prometheus_port = -1;
  args.policy = "round_robin";
  args.worker_urls = {stub.url()};
  (void)args.resolve();
  auto r = router::Router::create(args);
  if (!r || !(*r)->start()) {
    std::fprintf(stderr, "router did not start\n");
    return 1;
  }
  const std::string router_url = "http://127.0.0.1:" + std::to_string((*r)->port());
  pid_t nginx_pid = -1;
  std::string nginx_url;
  auto nginx_dir = std::filesystem::temp_directory_path() / ("router_bench_nginx_" + std::to_string(::getpid()));
  if (nginx) {
    int port = free_port();
    nginx_pid = start_nginx(nginx_dir, port, std::stoi(stub.url().substr(stub.url().rfind(':') + 1)));
    if (nginx_pid < 0) std::fprintf(stderr, "nginx did not start (is it installed?); skipping it\n");
    nginx_url = "http://127.0.0.1:" + std::to_string(port);
  }

  std::printf("machine: %u cores; stub, proxies and clients share them\n", std::thread::hardware_concurrency());
  std::printf("%.1f s per row after 0.3 s warm-up; latency = whole request (stream: until [DONE])\n\n", seconds);
  std::printf("%-7s %-7s %6s %11s %9s %9s %11s %11s %7s\n", "target", "mode", "conc", "req/s", "p50 ms", "p99 ms",
              "+p50 ms", "+p99 ms", "failed");
  for (bool stream : {false, true}) {
    for (int conc : levels) {
      Row direct = load(stub.url() + "/generate", stream, conc, seconds);
      std::vector<std::pair<std::string, Row>> rows{{"direct", direct}};
      rows.emplace_back("router", load(router_url + "/generate", stream, conc, seconds));
      if (nginx_pid > 0) rows.emplace_back("nginx", load(nginx_url + "/generate", stream, conc, seconds));
      for (auto& [name, row] : rows) {
        const bool base = name == "direct";
        std::printf("%-7s %-7s %6d %11.0f %9.3f %9.3f %11s %11s %7lld\n", name.c_str(), stream ? "stream" : "json", conc,
                    row.rps, row.p50_ms, row.p99_ms, base ? "-" : fmt::format("{:+.3f}", row.p50_ms - direct.p50_ms).c_str(),
                    base ? "-" : fmt::format("{:+.3f}", row.p99_ms - direct.p99_ms).c_str(),
                    static_cast<long long>(row.failed));
      }
      std::fflush(stdout);
    }
  }
  if (nginx_pid > 0) {
    ::kill(nginx_pid, SIGQUIT);
    ::waitpid(nginx_pid, nullptr, 0);
  }
  std::filesystem::remove_all(nginx_dir);
  (*r)->shutdown();
  return 0;
}
