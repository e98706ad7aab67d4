// Request rate of a running pdserve server over keep-alive connections: 1-token /generate requests
// (tokenize nothing, prefill 4 ids, sample 1 token, answer) beside the baseline of the HTTP layer
// alone (GET /health on the same server, same connections). Start the server first, e.g. with
// scripts/bench_server.sh.
//
//   build/bench/server_rps_bench --url http://127.0.0.1:30000 [--connections 16] [--seconds 5]
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "http/client.h"

using namespace pdserve;

namespace {

struct Result {
  double rps = 0;
  int64_t ok = 0, failed = 0;
};

Result hammer(const std::string& url, const std::string& method, const std::string& body, int connections, double seconds) {
  std::atomic<int64_t> ok{0}, failed{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  const auto t0 = std::chrono::steady_clock::now();
  for (int c = 0; c < connections; ++c)
    threads.emplace_back([&] {
      http::Client client;  // one keep-alive connection per thread
      http::Headers h{{"Content-Type", "application/json"}};
      while (!stop) {
        auto r = client.request(method, url, body, h, std::chrono::seconds(60));
        (r && r->status == 200 ? ok : failed)++;
      }
    });
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : threads) t.join();
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return {static_cast<double>(ok) / dt, ok, failed};
}

}  // namespace

int main(int argc, char** argv) {
  std::string base = "http://127.0.0.1:30000";
  int connections = 16;
  double seconds = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--url")) base = argv[i + 1];
    else if (!std::strcmp(argv[i], "--connections")) connections = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--seconds")) seconds = std::atof(argv[i + 1]);
  }
  const std::string gen = R"({"input_ids": [0, 1, 2, 3], "sampling_params": {"max_new_tokens": 1, "temperature": 0}})";
  std::printf("server %s, %d keep-alive connections, %.0f s per row\n", base.c_str(), connections, seconds);
  std::printf("%-34s %12s %10s %8s\n", "workload", "requests/s", "ok", "failed");
  auto health = hammer(base + "/health", "GET", "", connections, seconds);
  std::printf("%-34s %12.0f %10lld %8lld\n", "GET /health (HTTP layer baseline)", health.rps,
              static_cast<long long>(health.ok), static_cast<long long>(health.failed));
  auto g = hammer(base + "/generate", "POST", gen, connections, seconds);
  std::printf("%-34s %12.0f %10lld %8lld\n", "POST /generate, 1 new token", g.rps, static_cast<long long>(g.ok),
              static_cast<long long>(g.failed));
  return 0;
}
