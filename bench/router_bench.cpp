// Router overhead on loopback: clients talking to a fast stub worker directly, through
// `pdserve router` and through nginx (both reverse proxies of the same stub, each its own
// process(es)), side by side in one run. Non-streamed and streamed /generate at 1, 64 and 1,024
// concurrent clients; requests/s and latency p50/p99, and the latency each proxy adds over the
// direct path.
//
//   build/bench/router_bench [--seconds 3] [--repeat 3] [--concurrency 1,64,1024] [--mode both] [--no-nginx]
//                            [--load-cpus 0] [--proxy-cpus 1] [--no-pin] [--pdserve build/pdserve]
//
// The router process is `pdserve router` (with --pdserve) or, by default, this binary re-run as
// `router_bench router ...`: the same add_router_command() as `pdserve router`, without needing
// the whole pdserve binary built.
//
// CPU split (a fair fight on a small machine): this process (clients + stub) is pinned to
// --load-cpus and each proxy to --proxy-cpus (sched_setaffinity, as `taskset -c` does). The proxy
// gets as many threads as it has CPUs: nginx `worker_processes N`, the router N I/O threads (it
// sizes itself from its CPU affinity). Rows are repeated --repeat times, the targets interleaved
// (direct, router, nginx, direct, ...), and the medians are reported, so that a burst of load
// from other users of the machine hits all targets alike.
#include <sched.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
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
  double cpu_us = 0;  // CPU time of the proxy process(es) per request (0 for direct)
  int64_t ok = 0, failed = 0;
  int64_t warm_ok = 0;  // requests completed in the warm-up (they cost the proxy CPU too)
};

// user + system CPU seconds of `pid` and of its child processes (nginx's workers), from /proc.
// CPU time per request is the least noisy figure on a shared machine: time stolen by other
// processes shows up in latency and req/s, not in it.
double cpu_seconds(pid_t pid) {
  if (pid <= 0) return 0;
  auto read_stat = [](const std::filesystem::path& p, long& ppid) -> double {
    std::ifstream f(p);
    std::string line;
    if (!std::getline(f, line)) return 0;
    std::size_t close = line.rfind(')');  // the command name may hold spaces
    if (close == std::string::npos) return 0;
    std::istringstream rest(line.substr(close + 2));
    std::string state;
    long skip = 0;
    unsigned long utime = 0, stime = 0;
    rest >> state >> ppid;
    for (int i = 0; i < 9; ++i) rest >> skip;  // pgrp .. cmajflt
    rest >> utime >> stime;
    return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
  };
  long ppid = 0;
  double total = read_stat("/proc/" + std::to_string(pid) + "/stat", ppid);
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.empty() || !std::isdigit(static_cast<unsigned char>(name[0]))) continue;
    long parent = 0;
    double t = read_stat(e.path() / "stat", parent);
    if (parent == pid) total += t;
  }
  return total;
}

Row load(const std::string& url, bool stream, int concurrency, double seconds) {
  asio::io_context io(1);
  http::ClientOptions co;
  co.max_idle_per_host = 4096;
  http::AsyncClient client(io.get_executor(), co);
  std::vector<double> lat;
  int64_t ok = 0, failed = 0, warm_ok = 0;
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
        if (s < warm_until) {  // connections are opened in the warm-up
          warm_ok += good ? 1 : 0;
          continue;
        }
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
  row.warm_ok = warm_ok;
  row.failed = failed;
  row.rps = static_cast<double>(ok) / dt;
  std::sort(lat.begin(), lat.end());
  if (!lat.empty()) {
    row.p50_ms = lat[lat.size() / 2];
    row.p99_ms = lat[std::min(lat.size() - 1, lat.size() * 99 / 100)];
  }
  return row;
}

// "0", "1-3", "0,2": the CPUs of a list as taskset -c reads it (empty on a parse error).
std::vector<int> parse_cpus(const std::string& list) {
  std::vector<int> out;
  std::size_t pos = 0;
  while (pos < list.size()) {
    std::size_t comma = list.find(',', pos);
    std::string part = list.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    pos = comma == std::string::npos ? list.size() : comma + 1;
    int a = -1, b = -1;
    if (std::sscanf(part.c_str(), "%d-%d", &a, &b) == 2 && a >= 0 && b >= a) {
      for (int c = a; c <= b; ++c) out.push_back(c);
    } else if (std::sscanf(part.c_str(), "%d", &a) == 1 && a >= 0) {
      out.push_back(a);
    } else {
      return {};
    }
  }
  return out;
}

bool pin(pid_t pid, const std::vector<int>& cpus) {
  if (cpus.empty()) return true;
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : cpus) CPU_SET(c, &set);
  return ::sched_setaffinity(pid, sizeof(set), &set) == 0;
}

// Starts argv[0] pinned to `cpus`, stdout+stderr into `log`. Returns the pid, or -1.
pid_t spawn(const std::vector<std::string>& args, const std::vector<int>& cpus, const std::filesystem::path& log) {
  pid_t pid = ::fork();
  if (pid == 0) {
    if (!pin(0, cpus)) ::_exit(126);
    FILE* f = std::fopen(log.c_str(), "w");
    if (f) {
      ::dup2(::fileno(f), 1);
      ::dup2(::fileno(f), 2);
    }
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execvp(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

// Polls GET url until 200; false if the process died or 20 s passed.
bool wait_ready(pid_t pid, const std::string& url) {
  http::Client c;
  for (int i = 0; i < 400; ++i) {
    auto r = c.get(url, std::chrono::milliseconds(500));
    if (r && r->status == 200) return true;
    int st;
    if (::waitpid(pid, &st, WNOHANG) == pid) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

// nginx as a keep-alive reverse proxy of the stub, unbuffered (so streams are relayed as they
// come, like the router), `workers` worker processes.
void write_nginx_conf(const std::filesystem::path& dir, int port, int upstream_port, int workers) {
  std::filesystem::create_directories(dir / "logs");
  std::ofstream(dir / "nginx.conf") << "worker_processes " << workers << ";\n"
                                    << "pid " << (dir / "nginx.pid").string() << ";\n"
                                    << "error_log " << (dir / "logs/error.log").string() << " error;\n"
                                    << "events { worker_connections 8192; }\n"
                                    << "worker_rlimit_nofile 65536;\n"
                                    << "http {\n  access_log off;\n"
                                    << "  client_body_temp_path " << (dir / "body").string() << ";\n"
                                    << "  upstream stub { server 127.0.0.1:" << upstream_port << "; keepalive 2048; }\n"
                                    << "  server {\n    listen 127.0.0.1:" << port << ";\n"
                                    << "    keepalive_requests 1000000;\n"
                                    << "    location / {\n      proxy_pass http://stub;\n"
                                    << "      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n"
                                    << "      proxy_buffering off;\n    }\n  }\n}\n";
}

int free_port() {
  asio::io_context io;
  asio::ip::tcp::acceptor a(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  return a.local_endpoint().port();
}

std::string load_average() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

void stop_process(pid_t pid, int signo) {
  if (pid <= 0) return;
  ::kill(pid, signo);
  ::waitpid(pid, nullptr, 0);
}

}  // namespace

// `router_bench router FLAGS...`: runs `pdserve router FLAGS...` in this process.
int router_main(int argc, char** argv) {
  CLI::App app{"router_bench's router process"};
  app.require_subcommand(1);
  auto run = router::add_router_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return run();
}

int main(int argc, char** argv) {
  if (argc > 1 && std::string_view(argv[1]) == "router") return router_main(argc, argv);
  double seconds = 3;
  int repeat = 3;
  std::vector<int> levels = {1, 64, 1024};
  bool nginx = true, pinning = true;
  std::vector<bool> modes{false, true};  // non-streamed, streamed
  std::string load_cpus_arg = "0", proxy_cpus_arg = "1", pdserve_bin;
  auto usage = [] {
    std::fprintf(stderr,
                 "usage: router_bench [--seconds S] [--repeat R] [--concurrency 1,64,1024] [--mode json|stream|both] [--no-nginx]\n"
                 "                    [--load-cpus LIST] [--proxy-cpus LIST] [--no-pin] [--pdserve PATH]\n");
    return 2;
  };
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    bool has_value = i + 1 < argc;
    if (a == "--seconds" && has_value) {
      seconds = std::atof(argv[++i]);
    } else if (a == "--repeat" && has_value) {
      repeat = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--concurrency" && has_value) {
      levels.clear();
      for (char* t = std::strtok(argv[++i], ","); t; t = std::strtok(nullptr, ",")) levels.push_back(std::atoi(t));
    } else if (a == "--mode" && has_value) {
      const std::string m = argv[++i];
      if (m != "json" && m != "stream" && m != "both") return usage();
      modes = m == "json" ? std::vector<bool>{false} : m == "stream" ? std::vector<bool>{true} : std::vector<bool>{false, true};
    } else if (a == "--no-nginx") {
      nginx = false;
    } else if (a == "--load-cpus" && has_value) {
      load_cpus_arg = argv[++i];
    } else if (a == "--proxy-cpus" && has_value) {
      proxy_cpus_arg = argv[++i];
    } else if (a == "--no-pin") {
      pinning = false;
    } else if (a == "--pdserve" && has_value) {
      pdserve_bin = argv[++i];
    } else {
      return usage();
    }
  }
  std::vector<int> load_cpus, proxy_cpus;
  if (pinning) {
    load_cpus = parse_cpus(load_cpus_arg);
    proxy_cpus = parse_cpus(proxy_cpus_arg);
    if (load_cpus.empty() || proxy_cpus.empty()) return usage();
  }
  const int proxy_threads = pinning ? static_cast<int>(proxy_cpus.size())
                                    : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  rlimit rl{};
  ::getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;  // clients + stub sockets in one process
  ::setrlimit(RLIMIT_NOFILE, &rl);
  log::init("warning");
  // Pinned before the stub starts, so that its I/O thread inherits the mask.
  if (!pin(0, load_cpus)) {
    std::fprintf(stderr, "cannot pin this process to CPUs %s\n", load_cpus_arg.c_str());
    return 1;
  }

  router::testing::StubWorker stub("stub", fast_gen, 1);
  stub.recording = false;
  const int stub_port = std::stoi(stub.url().substr(stub.url().rfind(':') + 1));
  const auto dir = std::filesystem::temp_directory_path() / ("router_bench_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);

  const int router_port = free_port();
  if (pdserve_bin.empty()) pdserve_bin = std::filesystem::read_symlink("/proc/self/exe").string();
  pid_t router_pid = spawn({pdserve_bin, "router", "--worker-urls", stub.url(), "--policy", "round_robin", "--host",
                            "127.0.0.1", "--port", std::to_string(router_port), "--prometheus-port", "-1",
                            "--log-level", "warning"},
                           proxy_cpus, dir / "router.log");
  const std::string router_url = "http://127.0.0.1:" + std::to_string(router_port);
  if (router_pid < 0 || !wait_ready(router_pid, router_url + "/readiness")) {
    std::fprintf(stderr, "router did not start (%s); see %s\n", pdserve_bin.c_str(), (dir / "router.log").c_str());
    stop_process(router_pid, SIGKILL);
    return 1;
  }
  pid_t nginx_pid = -1;
  std::string nginx_url;
  if (nginx) {
    const int port = free_port();
    write_nginx_conf(dir, port, stub_port, proxy_threads);
    nginx_pid = spawn({"nginx", "-p", dir.string() + "/", "-c", (dir / "nginx.conf").string(), "-g", "daemon off;"},
                      proxy_cpus, dir / "nginx.log");
    nginx_url = "http://127.0.0.1:" + std::to_string(port);
    if (nginx_pid < 0 || !wait_ready(nginx_pid, nginx_url + "/health")) {
      std::fprintf(stderr, "nginx did not start (is it installed?); skipping it\n");
      stop_process(nginx_pid, SIGKILL);
      nginx_pid = -1;
    }
  }

  std::printf("machine: %u cores; load average at start: %s\n", std::thread::hardware_concurrency(),
              load_average().c_str());
  if (pinning) {
    std::printf("clients + stub pinned to CPUs %s; router and nginx pinned to CPUs %s, %d thread(s)/worker(s) each\n",
                load_cpus_arg.c_str(), proxy_cpus_arg.c_str(), proxy_threads);
  } else {
    std::printf("no pinning: clients, stub and proxies share all cores\n");
  }
  std::printf("%.1f s per sample after 0.3 s warm-up, %d sample(s) per row, medians shown;\n"
              "latency = whole request (stream: until [DONE])\n\n", seconds, repeat);
  std::printf("%-7s %-7s %6s %11s %9s %9s %11s %11s %9s %7s\n", "target", "mode", "conc", "req/s", "p50 ms", "p99 ms",
              "+p50 ms", "+p99 ms", "cpu us/r", "failed");
  struct Target {
    std::string name, url;
    pid_t pid;
  };
  std::vector<Target> targets{{"direct", stub.url(), -1}, {"router", router_url, router_pid}};
  if (nginx_pid > 0) targets.push_back({"nginx", nginx_url, nginx_pid});
  for (bool stream : modes) {
    for (int conc : levels) {
      std::map<std::string, std::vector<Row>> samples;
      for (int rep = 0; rep < repeat; ++rep)
        for (const auto& t : targets) {
          const double cpu0 = cpu_seconds(t.pid);
          Row r = load(t.url + "/generate", stream, conc, seconds);
          // Includes the warm-up's requests' CPU too: counted over all of them.
          if (t.pid > 0 && r.ok > 0) r.cpu_us = (cpu_seconds(t.pid) - cpu0) * 1e6 / static_cast<double>(r.ok + r.warm_ok);
          samples[t.name].push_back(r);
        }
      auto med = [&](const std::string& name) {
        std::vector<double> rps, p50, p99, cpu;
        Row m;
        for (const auto& r : samples[name]) {
          cpu.push_back(r.cpu_us);
          rps.push_back(r.rps);
          p50.push_back(r.p50_ms);
          p99.push_back(r.p99_ms);
          m.failed += r.failed;
        }
        m.rps = median(rps);
        m.p50_ms = median(p50);
        m.p99_ms = median(p99);
        m.cpu_us = median(cpu);
        return m;
      };
      const Row direct = med("direct");
      for (const auto& t : targets) {
        const std::string& name = t.name;
        const Row row = med(name);
        const bool base = name == "direct";
        std::printf("%-7s %-7s %6d %11.0f %9.3f %9.3f %11s %11s %9s %7lld\n", name.c_str(), stream ? "stream" : "json", conc,
                    row.rps, row.p50_ms, row.p99_ms, base ? "-" : fmt::format("{:+.3f}", row.p50_ms - direct.p50_ms).c_str(),
                    base ? "-" : fmt::format("{:+.3f}", row.p99_ms - direct.p99_ms).c_str(),
                    base ? "-" : fmt::format("{:.1f}", row.cpu_us).c_str(), static_cast<long long>(row.failed));
      }
      std::fflush(stdout);
    }
  }
  std::printf("\nload average at end: %s\n", load_average().c_str());
  stop_process(nginx_pid, SIGQUIT);
  stop_process(router_pid, SIGTERM);
  std::filesystem::remove_all(dir);
  return 0;
}
