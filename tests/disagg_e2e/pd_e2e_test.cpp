// PD disaggregation end to end: real prefill and decode processes (tiny model, CPU, loopback)
// driven with bootstrap fields as the router would, compared token for token with a single server,
// and put through faults. One set of servers serves the whole suite (startup dominates its time);
// the tests that kill servers run last.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <sstream>
#include <map>
#include <set>
#include <thread>

#include "disagg_e2e/pd_cluster.h"

namespace pdserve::test {
namespace {

// Timeouts short enough for the fault tests, long enough for a loaded 2-core CI machine.
const std::vector<std::pair<std::string, std::string>> kPdEnv = {
    {"SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL", "2"},
    {"SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE", "2"},
    {"SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT", "20"},
    {"SGLANG_DISAGGREGATION_WAITING_TIMEOUT", "20"}};

std::vector<std::pair<std::string, std::string>> with(std::vector<std::pair<std::string, std::string>> extra) {
  auto e = kPdEnv;
  e.insert(e.end(), extra.begin(), extra.end());
  return e;
}

// 64 prompts: lengths 3..300 (chunks of 64 tokens on every server), half of them sharing one of two
// 80-token prefixes (prefix cache hits on the prefill), ids inside the tiny model's vocabulary.
std::vector<std::vector<int32_t>> make_prompts(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> id(10, 20000);
  std::vector<std::vector<int32_t>> prefixes(2);
  for (auto& p : prefixes)
    for (int i = 0; i < 80; ++i) p.push_back(id(rng));
  const int lengths[] = {3, 7, 16, 31, 64, 65, 100, 150, 200, 300};
  std::vector<std::vector<int32_t>> out;
  for (int i = 0; i < n; ++i) {
    std::vector<int32_t> p;
    if (i % 2 == 1) p = prefixes[static_cast<size_t>(i / 2) % 2];
    const int extra = lengths[i % 10];
    for (int k = 0; k < extra; ++k) p.push_back(id(rng));
    out.push_back(std::move(p));
  }
  return out;
}

// Sum of a Prometheus metric's samples (all label sets) in /metrics.
double metric_sum(const ServerProcess& s, const std::string& name) {
  http::Client c;
  auto r = c.get(s.url("/metrics"), std::chrono::seconds(10));
  if (!r || r->status != 200) return -1;
  double sum = 0;
  std::istringstream in(r->body);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(name, 0) == 0 && (line[name.size()] == '{' || line[name.size()] == ' '))
      sum += std::stod(line.substr(line.rfind(' ') + 1));
  return sum;
}

class PdE2E : public ::testing::Test {
 protected:
  static inline std::unique_ptr<ServerProcess> single, p1, d2, p2, d1, p3;
  static inline int b1 = 0, b2 = 0, b3 = 0;  // bootstrap ports of p1, p2, p3

  static void SetUpTestSuite() {
    b1 = free_port();
    b2 = free_port();
    b3 = free_port();
    single = start_server({}, "pd_single");
    p1 = start_server({"--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port", std::to_string(b1)}, "pd_p1", kPdEnv);
    d2 = start_server({"--disaggregation-mode", "decode", "--dp-size", "2", "--enable-metrics"}, "pd_d2", kPdEnv);
    p2 = start_server({"--disaggregation-mode", "prefill", "--dp-size", "2", "--disaggregation-bootstrap-port", std::to_string(b2)},
                      "pd_p2", with({{"SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT", "10"}, {"SGLANG_DISAGGREGATION_WAITING_TIMEOUT", "10"}}));
    d1 = start_server({"--disaggregation-mode", "decode"}, "pd_d1", kPdEnv);
    // 10% of p3's transfers fail at random (SGLang's test hook).
    p3 = start_server({"--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port", std::to_string(b3), "--enable-metrics"},
                      "pd_p3",
                      with({{"DISAGGREGATION_TEST_FAILURE_PROB", "0.1"}}));
    for (auto* s : {&single, &p1, &d2, &p2, &d1, &p3}) ASSERT_TRUE((*s)->wait_ready()) << (*s)->log();
  }
  static void TearDownTestSuite() {
    for (auto* s : {&single, &p1, &d2, &p2, &d1, &p3}) s->reset();
  }

  // Greedy outputs of the single server for `prompts`, all sent at once.
  static std::vector<std::vector<int32_t>> reference(const std::vector<std::vector<int32_t>>& prompts, int max_new) {
    std::vector<std::future<Reply>> fs;
    for (const auto& p : prompts)
      fs.push_back(std::async(std::launch::async, [&, p] {
        return post(single->url("/generate"), {{"input_ids", p}, {"sampling_params", {{"max_new_tokens", max_new}, {"temperature", 0}}}});
      }));
    std::vector<std::vector<int32_t>> out;
    for (auto& f : fs) {
      Reply r = f.get();
      EXPECT_EQ(r.status, 200) << r.body.dump();
      out.push_back(r.status == 200 ? r.body["output_ids"].get<std::vector<int32_t>>() : std::vector<int32_t>{});
    }
    return out;
  }

  static void expect_equal_to_single(ServerProcess& p, ServerProcess& d, int bootstrap_port) {
    const auto prompts = make_prompts(64, 7);
    const auto want = reference(prompts, 12);
    std::vector<std::future<std::pair<Reply, Reply>>> fs;
    for (const auto& ids : prompts)
      fs.push_back(std::async(std::launch::async, [&, ids] { return pd_generate(p, d, pd_body(ids, 12, bootstrap_port, random_room())); }));
    for (size_t i = 0; i < fs.size(); ++i) {
      auto [pr, dr] = fs[i].get();
      ASSERT_EQ(dr.status, 200) << "prompt " << i << ": " << dr.body.dump() << dr.error;
      ASSERT_EQ(pr.status, 200) << "prompt " << i << ": " << pr.body.dump() << pr.error;
      EXPECT_EQ(dr.body["output_ids"].get<std::vector<int32_t>>(), want[i]) << "prompt " << i << " (" << prompts[i].size() << " tokens)";
      // The prefill answers with the first token only, as SGLang's prefill does.
      EXPECT_EQ(pr.body["meta_info"]["completion_tokens"], 1);
      EXPECT_EQ(pr.body["output_ids"][0], want[i][0]);
    }
    EXPECT_TRUE(wait_all_free(p, std::chrono::seconds(20)));
    EXPECT_TRUE(wait_all_free(d, std::chrono::seconds(20)));
  }
};

TEST_F(PdE2E, PrefillDp1DecodeDp2EqualsSingleServer) { expect_equal_to_single(*p1, *d2, b1); }

TEST_F(PdE2E, PrefillDp2DecodeDp1EqualsSingleServer) { expect_equal_to_single(*p2, *d1, b2); }

TEST_F(PdE2E, RequestsWithoutBootstrapFieldsAre400) {
  for (auto* s : {p1.get(), d2.get()}) {
    Reply r = post(s->url("/generate"), {{"input_ids", {1, 2, 3}}});
    EXPECT_EQ(r.status, 400);
    EXPECT_NE(r.body.dump().find("bootstrap room"), std::string::npos) << r.body.dump();
  }
}

TEST_F(PdE2E, WrongBootstrapPortFailsFastNamingTheAddress) {
  const int wrong = free_port();
  const auto t0 = std::chrono::steady_clock::now();
  Reply r = post(d2->url("/generate"), pd_body({5, 6, 7}, 4, wrong, random_room()));
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(r.status, 500);
  EXPECT_NE(r.body.dump().find("127.0.0.1:" + std::to_string(wrong)), std::string::npos) << r.body.dump();
  EXPECT_LT(s, 3.0);
  EXPECT_TRUE(wait_all_free(*d2, std::chrono::seconds(5)));
}

TEST_F(PdE2E, HealthGenerateUsesTheFakeBootstrapHost) {
  http::Client c;
  for (auto* s : {p1.get(), d2.get()}) {
    auto r = c.get(s->url("/health_generate"), std::chrono::seconds(30));
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->status, 200);
  }
}

// Abort in each queue state: the request ends with an abort finish reason and no page stays owned.
TEST_F(PdE2E, AbortInEveryQueueStateFreesTheKv) {
  // Prefill bootstrap queue: the decode never sends its pages.
  // Decode transfer queue: the prefill never gets the request (pages allocated, XFER sent).
  // Decode prealloc queue: a bootstrap server that accepts connections but never answers.
  const int silent_port = free_port();
  int silent = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(silent_port));
  ASSERT_EQ(::bind(silent, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(::listen(silent, 16), 0);
  struct Case {
    const char* name;
    ServerProcess* server;
    json body;
    const char* queue;  // the internal_state counter that shows the request in its state
  };
  const std::vector<int32_t> ids(100, 42);
  std::vector<Case> cases = {
      {"prefill bootstrap", p1.get(), pd_body(ids, 4, b1, random_room()), "num_prealloc_reqs"},
      {"decode transfer", d2.get(), pd_body(ids, 4, b1, random_room()), "num_transfer_reqs"},
      {"decode prealloc", d2.get(), pd_body(ids, 4, silent_port, random_room()), "num_prealloc_reqs"},
      // Decode running: a long generation (p2 + d1 pair), aborted mid-way.
      {"decode running", d1.get(), pd_body(ids, 4000, b2, random_room()), "num_running_reqs"},
  };
  for (auto& c : cases) {
    std::string rid = std::string("abort-") + c.name;
    std::replace(rid.begin(), rid.end(), ' ', '-');
    c.body["rid"] = rid;
    std::future<Reply> peer;
    if (std::string(c.name) == "decode running")
      peer = std::async(std::launch::async, [&] { return post(p2->url("/generate"), c.body); });
    auto f = std::async(std::launch::async, [&] { return post(c.server->url("/generate"), c.body); });
    // Abort only once the request is seen in the state under test.
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (queue_count(*c.server, c.queue) == 0 && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_GT(queue_count(*c.server, c.queue), 0) << c.name;
    Reply ab = post(c.server->url("/abort_request"), {{"rid", rid}});
    EXPECT_EQ(ab.status, 200) << c.name;
    Reply r = f.get();
    ASSERT_FALSE(r.body.is_discarded()) << c.name << ": " << r.error;
    EXPECT_EQ(r.body["meta_info"]["finish_reason"]["type"], "abort") << c.name << ": " << r.body.dump();
    if (peer.valid()) peer.get();
    EXPECT_TRUE(wait_all_free(*c.server, std::chrono::seconds(10))) << c.name;
  }
  ::close(silent);
  for (auto* s : {p1.get(), d2.get(), p2.get(), d1.get()}) EXPECT_TRUE(wait_all_free(*s, std::chrono::seconds(25)));
}

// 300 requests through a prefill that fails 10% of its transfers: each one either completes with the
// single server's output or fails cleanly (500 with a message), and no page leaks on either side.
TEST_F(PdE2E, RandomTransferFailuresLeakNothing) {
  const auto prompts = make_prompts(30, 11);
  const auto want = reference(prompts, 6);
  std::atomic<int> ok{0}, failed{0};
  std::vector<std::thread> workers;
  std::atomic<int> next{0};
  std::mutex mu;
  std::vector<std::string> problems;
  for (int w = 0; w < 12; ++w)
    workers.emplace_back([&] {
      for (int i; (i = next.fetch_add(1)) < 300;) {
        const size_t k = static_cast<size_t>(i) % prompts.size();
        auto [pr, dr] = pd_generate(*p3, *d2, pd_body(prompts[k], 6, b3, random_room()), 60);
        std::lock_guard<std::mutex> lock(mu);
        if (dr.status == 200 && dr.body["output_ids"].get<std::vector<int32_t>>() == want[k]) {
          ++ok;
        } else if (dr.status == 500 && dr.body["message"].is_string() && !dr.body["message"].get<std::string>().empty()) {
          ++failed;
        } else {
          problems.push_back(std::to_string(i) + ": " + std::to_string(dr.status) + " " + dr.body.dump() + dr.error);
        }
      }
    });
  for (auto& t : workers) t.join();
  EXPECT_TRUE(problems.empty()) << problems.size() << " bad answers, first: " << (problems.empty() ? "" : problems[0]);
  EXPECT_GT(failed.load(), 5);   // about 30 expected
  EXPECT_GT(ok.load(), 200);
  EXPECT_TRUE(wait_all_free(*p3, std::chrono::seconds(30)));
  EXPECT_TRUE(wait_all_free(*d2, std::chrono::seconds(30)));
  // Failures are counted on both sides (SGLang's metric names).
  EXPECT_GT(metric_sum(*p3, "sglang:num_transfer_failed_reqs_total"), 0);
  EXPECT_GT(metric_sum(*d2, "sglang:num_transfer_failed_reqs_total"), 0);
  EXPECT_GT(metric_sum(*d2, "sglang:kv_transfer_latency_ms_count"), 0);
  std::printf("random failures: %d completed, %d failed cleanly\n", ok.load(), failed.load());
}

// Kill the prefill while its requests are being prefilled and transferred: every affected decode
// request fails within the deadline, the decode's pages return, and a restarted prefill serves.
TEST_F(PdE2E, KillPrefillDuringTransfers) {
  std::vector<std::future<std::pair<Reply, Reply>>> fs;
  const std::vector<int32_t> long_prompt(600, 77);
  for (int i = 0; i < 16; ++i)
    fs.push_back(std::async(std::launch::async, [&] { return pd_generate(*p3, *d2, pd_body(long_prompt, 200, b3, random_room()), 60); }));
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  const auto killed = std::chrono::steady_clock::now();
  ::kill(p3->pid(), SIGKILL);
  int failed = 0;
  for (auto& f : fs) {
    auto [pr, dr] = f.get();
    if (dr.status == 200) continue;  // finished before the kill
    ++failed;
    EXPECT_EQ(dr.status, 500) << dr.body.dump() << dr.error;
    EXPECT_EQ(dr.body.value("code", 0), 500) << dr.body.dump();
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  EXPECT_GT(failed, 0);
  EXPECT_LT(s, 25.0);  // heartbeat (2 s x 2) or the 20 s waiting timeout, whichever first
  EXPECT_TRUE(wait_all_free(*d2, std::chrono::seconds(10)));
  // A prefill back on the same bootstrap port: the decode looks it up afresh.
  p3 = start_server({"--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port", std::to_string(b3)}, "pd_p3b", kPdEnv);
  ASSERT_TRUE(p3->wait_ready()) << p3->log();
  auto [pr, dr] = pd_generate(*p3, *d2, pd_body({5, 6, 7, 8}, 4, b3, random_room()));
  EXPECT_EQ(dr.status, 200) << dr.body.dump();
}

// Kill the decode while the prefill holds requests for it: the prefill frees its pages (send
// failure, or the bootstrap/ack deadline).
TEST_F(PdE2E, KillDecodeFreesThePrefillsPages) {
  std::vector<std::future<Reply>> prefill, decode;
  for (int i = 0; i < 16; ++i) {
    const json body = pd_body(std::vector<int32_t>(600, 55 + i), 500, b2, random_room());
    prefill.push_back(std::async(std::launch::async, [&, body] { return post(p2->url("/generate"), body, 60); }));
    decode.push_back(std::async(std::launch::async, [&, body] { return post(d1->url("/generate"), body, 60); }));
  }
  // Kill once the prefill holds requests for the decode (queued, computing or in flight).
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (queue_count(*p2, "num_queue_reqs") + queue_count(*p2, "num_running_reqs") + queue_count(*p2, "num_inflight_reqs") < 4 &&
         std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ::kill(d1->pid(), SIGKILL);
  int failed = 0;
  for (auto& f : prefill) {
    Reply r = f.get();
    if (r.status == 500) ++failed;
  }
  for (auto& f : decode) f.get();
  EXPECT_GT(failed, 0);  // the kill hit requests the prefill still held
  EXPECT_TRUE(wait_all_free(*p2, std::chrono::seconds(30))) << p2->log().substr(0, 2000);
}

}  // namespace
}  // namespace pdserve::test
