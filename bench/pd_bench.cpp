// PD disaggregation benchmarks (docs/perf/pd.md).
//
//   pd_bench transfer [--tokens 2000] [--requests 10] [--layout tiny|dsv3] [--page-size 1]
//       KV transfer of whole requests between an in-process prefill and decode manager over the
//       real protocol (bootstrap server, ZeroMQ control channel, tcp backend on loopback), from the
//       prefill's send to the decode's Success; beside memcpy of the same bytes (the ceiling of any
//       host-memory path) measured in the same run.
//   pd_bench ttft --single URL --prefill URL --decode URL --bootstrap-port N [--tokens 2000] [--n 10]
//       Time to first token of one streamed request at a time: single server vs the PD pair
//       (request sent to both, as the router does; TTFT read on the decode's stream).
//   pd_bench --cuda-ipc-self-test [--bytes N]     (CUDA builds, 2 GPUs)
//       cuda-ipc backend write GPU0 -> GPU1 beside cudaMemcpyPeer of the same bytes.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <future>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/logging.h"
#include "disagg/bootstrap_server.h"
#include "disagg/decode_manager.h"
#include "disagg/prefill_manager.h"
#include "http/client.h"

using namespace pdserve;
using namespace pdserve::disagg;
using Clock = std::chrono::steady_clock;

namespace {

std::map<std::string, std::string> parse_flags(int argc, char** argv, int from) {
  std::map<std::string, std::string> f;
  for (int i = from; i < argc; ++i) {
    std::string k = argv[i];
    if (k.rfind("--", 0) != 0) continue;
    f[k.substr(2)] = i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0 ? argv[++i] : "1";
  }
  return f;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

int transfer_bench(std::map<std::string, std::string> f) {
  const int64_t tokens = std::stoll(f.count("tokens") ? f["tokens"] : "2000");
  const int requests = std::stoi(f.count("requests") ? f["requests"] : "10");
  const std::string layout_name = f.count("layout") ? f["layout"] : "tiny";
  const int64_t page = std::stoll(f.count("page-size") ? f["page-size"] : "1");
  // tiny: the CI model's latent cache in f32; dsv3: DeepSeek-V3's 61 layers x 576 values in bf16.
  const int64_t layers = layout_name == "dsv3" ? 61 : 4;
  const int64_t bytes_per_token = layout_name == "dsv3" ? 576 * 2 : 80 * 4;
  const int64_t pages = (tokens + page - 1) / page;
  std::vector<std::vector<char>> src(static_cast<size_t>(layers)), dst(static_cast<size_t>(layers));
  scheduler::KvBufferView pv, dv;
  for (int64_t l = 0; l < layers; ++l) {
    src[static_cast<size_t>(l)].assign(static_cast<size_t>(pages * page * bytes_per_token), static_cast<char>(l));
    dst[static_cast<size_t>(l)].assign(static_cast<size_t>(pages * page * bytes_per_token), 0);
    pv.layer_ptrs.push_back(src[static_cast<size_t>(l)].data());
    dv.layer_ptrs.push_back(dst[static_cast<size_t>(l)].data());
  }
  for (auto* v : {&pv, &dv}) {
    v->bytes_per_token = bytes_per_token;
    v->page_size = page;
    v->num_pages = pages;
    v->dtype = layout_name == "dsv3" ? "bf16" : "f32";
  }
  DisaggOptions opts;
  if (f.count("chunk-bytes")) opts.max_chunk_bytes = std::stoll(f["chunk-bytes"]);
  auto bs = BootstrapServer::start("127.0.0.1", 0);
  if (!bs) return std::fprintf(stderr, "%s\n", bs.error().message().c_str()), 1;
  auto prefill = std::make_shared<PrefillKvManager>(opts, pv, 0, 1, *make_transfer_backend(Backend::kTcp, pv));
  auto decode = std::make_shared<DecodeKvManager>(opts, dv, 0, *make_transfer_backend(Backend::kTcp, dv));
  if (!prefill->start("127.0.0.1", "127.0.0.1", (*bs)->port()) || !decode->start("127.0.0.1")) return 1;
  std::vector<int32_t> ids(static_cast<size_t>(pages));
  for (int64_t i = 0; i < pages; ++i) ids[static_cast<size_t>(i)] = static_cast<int32_t>(i);
  const int64_t bytes = pages * page * bytes_per_token * layers;
  std::vector<double> secs;
  auto wait = [](auto& ep, scheduler::KvPoll want) {
    while (true) {
      auto p = ep->poll();
      if (p == want || p == scheduler::KvPoll::kFailed) return p;
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  };
  for (int r = 0; r <= requests; ++r) {  // request 0 warms the connection up
    const scheduler::BootstrapInfo info{"127.0.0.1", (*bs)->port(), static_cast<uint64_t>(1000 + r)};
    auto recv = decode->make_receiver("bench", info);
    auto send = prefill->make_sender("bench", info, pages);
    if (wait(recv, scheduler::KvPoll::kWaitingForInput) != scheduler::KvPoll::kWaitingForInput) return 1;
    recv->init(ids);
    if (wait(send, scheduler::KvPoll::kWaitingForInput) != scheduler::KvPoll::kWaitingForInput) return 1;
    scheduler::TransferMetadata meta;
    const auto t0 = Clock::now();
    send->send(ids, 0, true, &meta);
    if (wait(recv, scheduler::KvPoll::kSuccess) != scheduler::KvPoll::kSuccess)
      return std::fprintf(stderr, "transfer failed: %s\n", recv->failure().c_str()), 1;
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (wait(send, scheduler::KvPoll::kSuccess) != scheduler::KvPoll::kSuccess) return 1;
    if (r > 0) secs.push_back(s);
  }
  if (dst.back()[100] != static_cast<char>(layers - 1)) return std::fprintf(stderr, "data check failed\n"), 1;
  // Baseline: memcpy of the same bytes, layer by layer.
  std::vector<double> mem;
  for (int r = 0; r < requests; ++r) {
    const auto t0 = Clock::now();
    for (int64_t l = 0; l < layers; ++l)
      std::memcpy(dst[static_cast<size_t>(l)].data(), src[static_cast<size_t>(l)].data(), dst[static_cast<size_t>(l)].size());
    mem.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  const double t = median(secs), m = median(mem);
  std::printf("KV transfer, %lld-token request, layout %s (%lld layers x %lld B/token, page %lld), %.1f MB, chunk %lld B, %d requests\n",
              static_cast<long long>(tokens), layout_name.c_str(), static_cast<long long>(layers),
              static_cast<long long>(bytes_per_token), static_cast<long long>(page), static_cast<double>(bytes) / 1e6,
              static_cast<long long>(opts.max_chunk_bytes), requests);
  std::printf("| path | median ms | GB/s |\n|---|---|---|\n");
  std::printf("| tcp backend, loopback (send -> decode Success) | %.2f | %.2f |\n", t * 1e3, static_cast<double>(bytes) / t / 1e9);
  std::printf("| memcpy of the same bytes (baseline) | %.2f | %.2f |\n", m * 1e3, static_cast<double>(bytes) / m / 1e9);
  prefill->stop();
  decode->stop();
  return 0;
}

// TTFT of a streamed request: seconds until the first SSE event that carries output ids.
double ttft(const std::string& url, const nlohmann::json& body) {
  http::Client c;
  const auto t0 = Clock::now();
  double first = -1;
  http::StreamCallbacks cb(nullptr, nullptr, [&](const http::SseEvent& e) {
    if (first < 0 && e.data != "[DONE]") first = std::chrono::duration<double>(Clock::now() - t0).count();
    return true;
  });
  auto r = c.stream(http::ClientRequest("POST", url, body.dump(), http::Headers{{"Content-Type", "application/json"}},
                                        std::chrono::seconds(300)),
                    cb);
  if (!r || r->status != 200) return -1;
  return first;
}

int ttft_bench(std::map<std::string, std::string> f) {
  for (const char* k : {"single", "prefill", "decode", "bootstrap-port"})
    if (!f.count(k)) return std::fprintf(stderr, "ttft needs --single, --prefill, --decode and --bootstrap-port\n"), 2;
  const int tokens = std::stoi(f.count("tokens") ? f["tokens"] : "2000");
  const int n = std::stoi(f.count("n") ? f["n"] : "10");
  std::mt19937 rng(std::random_device{}());  // fresh prompts each run: no prefix-cache hits
  std::vector<double> single, pd;
  for (int i = 0; i <= n; ++i) {
    std::vector<int32_t> ids(static_cast<size_t>(tokens));
    for (auto& x : ids) x = static_cast<int32_t>(rng() % 20000 + 10);  // distinct prompts: no prefix-cache hits
    nlohmann::json body = {{"input_ids", ids}, {"stream", true}, {"sampling_params", {{"max_new_tokens", 4}, {"temperature", 0}}}};
    // Idle gaps: OpenMP workers of the server that just ran keep spinning for a while and would
    // slow whichever server runs next on a small machine.
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    const double s = ttft(f["single"] + "/generate", body);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    body["bootstrap_host"] = "127.0.0.1";
    body["bootstrap_port"] = std::stoi(f["bootstrap-port"]);
    body["bootstrap_room"] = static_cast<int64_t>(rng());
    auto pf = std::async(std::launch::async, [&, body] {
      http::Client c;
      nlohmann::json b = body;
      b["stream"] = false;
      return c.post_json(f["prefill"] + "/generate", b.dump(), std::chrono::seconds(300));
    });
    const double p = ttft(f["decode"] + "/generate", body);
    const auto prefilled = pf.get();  // a failed prefill would leave the decode's TTFT meaningless
    if (!prefilled || prefilled->status != 200)
      return std::fprintf(stderr, "request %d: the prefill failed: %s\n", i,
                          prefilled ? prefilled->body.c_str() : prefilled.error().message().c_str()),
             1;
    if (s < 0 || p < 0) return std::fprintf(stderr, "request %d failed\n", i), 1;
    if (i > 0) {  // the first pair warms connections up
      single.push_back(s);
      pd.push_back(p);
    }
  }
  std::printf("TTFT, %d-token prompts, %d sequential requests (median)\n", tokens, n);
  std::printf("| setup | TTFT ms |\n|---|---|\n| single server | %.1f |\n| PD (prefill + decode, tcp) | %.1f |\n", median(single) * 1e3,
              median(pd) * 1e3);
  std::printf("PD cost: %+.1f ms (%+.1f%%)\n", (median(pd) - median(single)) * 1e3, 100.0 * (median(pd) / median(single) - 1));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  log::init("warning");
  const std::string cmd = argc > 1 ? argv[1] : "";
  auto f = parse_flags(argc, argv, 1);
  if (cmd == "transfer") return transfer_bench(f);
  if (cmd == "ttft") return ttft_bench(f);
#if defined(PDSERVE_HAVE_CUDA)
  if (cmd == "--cuda-ipc-self-test") return cuda_ipc_self_test(std::stoll(f.count("bytes") ? f["bytes"] : "268435456"));
#endif
  std::fprintf(stderr, "usage: pd_bench transfer|ttft|--cuda-ipc-self-test [flags] (see the header of bench/pd_bench.cpp)\n");
  return 2;
}
