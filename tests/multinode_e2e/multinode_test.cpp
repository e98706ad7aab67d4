// Multi-node servers as real processes on loopback (docs/cluster.md): `--dist-init-addr
// --nnodes --node-rank` with DP attention, node 0 serving HTTP and forwarding to node 1's ranks.
// Checks the output equals one process's, that control commands reach every node's ranks, and
// what happens when a node dies, never joins, or is configured differently.
#include <filesystem>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "server/server_process.h"

namespace pdserve::test {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

// The flags of node `rank` of a `nnodes`-node server with one DP rank per node.
std::vector<std::string> node_flags(int nnodes, int rank, int init_port, std::vector<std::string> extra = {},
                                    int dist_timeout = 60) {
  std::vector<std::string> f = {"--device",  "cpu",  "--tp-size",   std::to_string(nnodes), "--dp-size", std::to_string(nnodes),
                                "--enable-dp-attention", "--dist-init-addr", "127.0.0.1:" + std::to_string(init_port),
                                "--nnodes",  std::to_string(nnodes), "--node-rank", std::to_string(rank),
                                "--dist-timeout", std::to_string(dist_timeout)};
  f.insert(f.end(), extra.begin(), extra.end());
  return f;
}

struct TwoNodes {
  explicit TwoNodes(const std::string& name, std::vector<std::string> extra0 = {}, std::vector<std::string> extra1 = {}) {
    const int init_port = free_port();
    // Node 1 first: it waits for node 0 (the order must not matter).
    node1 = std::make_unique<ServerProcess>(node_flags(2, 1, init_port, extra1), name + "_node1");
    node0 = std::make_unique<ServerProcess>(node_flags(2, 0, init_port, extra0), name + "_node0");
  }
  std::unique_ptr<ServerProcess> node1, node0;
};

json generate(ServerProcess& s, const json& body, int* status = nullptr) {
  http::Client c;
  auto r = c.request("POST", s.url("/generate"), body.dump(), json_headers(), 120s);
  if (!r) {
    ADD_FAILURE() << r.error().message();
    return json();
  }
  if (status) *status = r->status;
  return json::parse(r->body, nullptr, false);
}

json greedy(const std::string& text, int max_new_tokens) {
  return {{"text", text}, {"sampling_params", {{"max_new_tokens", max_new_tokens}, {"temperature", 0}}}};
}

TEST(MultiNode, TwoNodesGiveTheSameGreedyOutputAsOneProcess) {
  ServerProcess single({"--device", "cpu"}, "mn_single");
  TwoNodes two("mn_equal");
  ASSERT_TRUE(single.wait_ready()) << single.log();
  ASSERT_TRUE(two.node0->wait_ready()) << two.node0->log() << "\n--- node 1:\n" << two.node1->log();

  // Round robin over the two DP ranks: consecutive requests land on node 0 and node 1.
  const std::vector<std::string> prompts = {"The capital of France is", "1, 2, 3, 4,", "Hello", "def fib(n):",
                                            "Once upon a time", "Mixture of experts"};
  for (const auto& p : prompts) {
    const json a = generate(single, greedy(p, 16)), b = generate(*two.node0, greedy(p, 16));
    ASSERT_TRUE(a.contains("output_ids")) << a.dump();
    ASSERT_TRUE(b.contains("output_ids")) << b.dump();
    EXPECT_EQ(a["output_ids"], b["output_ids"]) << p;
    EXPECT_EQ(a["text"], b["text"]) << p;
  }
  // A batch spreads over both ranks too.
  json batch = {{"text", prompts}, {"sampling_params", {{"max_new_tokens", 8}, {"temperature", 0}}}};
  const json ba = generate(single, batch), bb = generate(*two.node0, batch);
  ASSERT_TRUE(ba.is_array() && bb.is_array()) << bb.dump();
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(ba[i]["output_ids"], bb[i]["output_ids"]) << i;

  // Node 1's rank really ran requests (its own log, with its DP rank), and control commands
  // reach both ranks.
  EXPECT_NE(two.node1->log().find("DP1 TP1] Prefill batch"), std::string::npos) << two.node1->log();
  http::Client c;
  auto load = c.get(two.node0->url("/get_load"));
  ASSERT_TRUE(load && load->status == 200);
  const json l = json::parse(load->body);
  ASSERT_EQ(l.size(), 2u) << l.dump();
  EXPECT_EQ(l[1]["dp_rank"], 1);
  auto info = c.get(two.node0->url("/server_info"));
  ASSERT_TRUE(info && info->status == 200);
  EXPECT_EQ(json::parse(info->body)["internal_states"].size(), 2u);

  // A profile covers every rank on every node: one trace file per DP rank.
  const auto dir = std::filesystem::temp_directory_path() / ("pdserve_mn_profile_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  auto st = c.request("POST", two.node0->url("/start_profile"), json{{"output_dir", dir.string()}, {"num_steps", 2}}.dump(),
                      json_headers());
  ASSERT_TRUE(st && st->status == 200) << (st ? st->body : st.error().message());
  for (int i = 0; i < 4; ++i) generate(*two.node0, greedy(prompts[static_cast<size_t>(i)], 4));
  std::vector<std::string> traces;
  for (int i = 0; i < 100 && traces.size() < 2; ++i) {
    traces.clear();
    if (std::filesystem::exists(dir))
      for (const auto& e : std::filesystem::directory_iterator(dir)) traces.push_back(e.path().filename().string());
    std::this_thread::sleep_for(100ms);
  }
  ASSERT_EQ(traces.size(), 2u);
  std::sort(traces.begin(), traces.end());
  EXPECT_NE(traces[0].find("-DP-0"), std::string::npos) << traces[0];
  EXPECT_NE(traces[1].find("-DP-1"), std::string::npos) << traces[1];
  std::filesystem::remove_all(dir);

  // An orderly stop of node 0 stops node 1 too, both cleanly.
  EXPECT_EQ(two.node0->terminate(), 0);
  EXPECT_EQ(two.node1->wait_exit(20s), 0) << two.node1->log();
  EXPECT_NE(two.node1->log().find("Node 0 ("), std::string::npos);
  EXPECT_EQ(single.terminate(), 0);
}

// The expert recorder starts, stops and dumps on every node; node 0's dump holds both nodes'
// counts, equal to those of one process running the same two DP ranks.
TEST(MultiNode, ExpertRecordCoversEveryNode) {
  const auto dir = std::filesystem::temp_directory_path() / ("pdserve_mn_experts_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  ::setenv("SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR", dir.c_str(), 1);  // inherited by the servers
  const std::vector<std::string> rec = {"--expert-distribution-recorder-mode", "stat", "--expert-distribution-recorder-buffer-size",
                                        "-1"};
  std::vector<std::string> single_flags = {"--device", "cpu", "--dp-size", "2"};
  single_flags.insert(single_flags.end(), rec.begin(), rec.end());
  ServerProcess single(single_flags, "mn_rec_single");
  TwoNodes two("mn_rec", rec, rec);
  ::unsetenv("SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR");
  ASSERT_TRUE(single.wait_ready()) << single.log();
  ASSERT_TRUE(two.node0->wait_ready()) << two.node0->log() << "\n--- node 1:\n" << two.node1->log();
  auto record = [&](ServerProcess& s) {
    http::Client c;
    for (const char* path : {"/start_expert_distribution_record"}) {
      auto r = c.request("POST", s.url(path), "{}", json_headers());
      EXPECT_TRUE(r && r->status == 200) << (r ? r->body : r.error().message());
    }
    for (int i = 0; i < 4; ++i) generate(s, greedy("expert load " + std::to_string(i), 6));
    for (const char* path : {"/stop_expert_distribution_record", "/dump_expert_distribution_record"}) {
      auto r = c.request("POST", s.url(path), "{}", json_headers());
      EXPECT_TRUE(r && r->status == 200) << (r ? r->body : r.error().message());
    }
  };
  auto dumps = [&] {
    std::vector<std::filesystem::path> out;
    if (std::filesystem::exists(dir))
      for (const auto& e : std::filesystem::directory_iterator(dir))
        if (e.path().extension() == ".json") out.push_back(e.path());
    return out;
  };
  record(single);
  ASSERT_EQ(dumps().size(), 1u);
  const json one = json::parse(read_file(dumps()[0]));
  std::filesystem::remove_all(dir);
  record(*two.node0);
  ASSERT_EQ(dumps().size(), 1u);  // written once, by node 0
  const json both = json::parse(read_file(dumps()[0]));
  ASSERT_EQ(both["logical_count"].size(), 1u);
  int64_t total = 0;
  for (const auto& row : both["logical_count"][0])
    for (const auto& v : row) total += v.get<int64_t>();
  EXPECT_GT(total, 0);
  EXPECT_EQ(one["logical_count"], both["logical_count"]);
  std::filesystem::remove_all(dir);
}

// Long requests on both ranks, then node 1 is killed: node 0 names the lost node, every client
// gets an answer, and node 0 exits (non-zero) well within the heartbeat timeout.
TEST(MultiNode, KilledNodeIsReportedAndTheServerStops) {
  TwoNodes two("mn_kill1");
  ASSERT_TRUE(two.node0->wait_ready()) << two.node0->log() << "\n--- node 1:\n" << two.node1->log();
  std::vector<std::future<int>> clients;
  for (int i = 0; i < 4; ++i)
    clients.push_back(std::async(std::launch::async, [&two, i] {
      int status = 0;
      json body = greedy("request " + std::to_string(i), 100000);
      body["sampling_params"]["ignore_eos"] = true;
      generate(*two.node0, body, &status);
      return status;
    }));
  // Both ranks are busy before the kill.
  http::Client c;
  bool busy = false;
  for (int i = 0; i < 100 && !busy; ++i) {
    auto load = c.get(two.node0->url("/get_load"));
    if (load && load->status == 200) {
      const json l = json::parse(load->body);
      busy = l.size() == 2 && l[0]["num_reqs"].get<int>() > 0 && l[1]["num_reqs"].get<int>() > 0;
    }
    if (!busy) std::this_thread::sleep_for(100ms);
  }
  ASSERT_TRUE(busy);
  const auto t0 = std::chrono::steady_clock::now();
  ::kill(two.node1->pid(), SIGKILL);
  EXPECT_EQ(two.node1->wait_exit(5s), 128 + SIGKILL);
  EXPECT_EQ(two.node0->wait_exit(15s), 1) << two.node0->log();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 12s);
  const std::string log = two.node0->log();
  EXPECT_NE(log.find("node 1 ("), std::string::npos) << log;
  EXPECT_NE(log.find("is lost"), std::string::npos) << log;
  for (auto& f : clients) {
    ASSERT_EQ(f.wait_for(20s), std::future_status::ready);
    EXPECT_GE(f.get(), 500);  // nobody waits forever, nobody gets a silent 200
  }
}

TEST(MultiNode, LostNodeZeroStopsTheOtherNodes) {
  TwoNodes two("mn_kill0");
  ASSERT_TRUE(two.node0->wait_ready()) << two.node0->log();
  ::kill(two.node0->pid(), SIGKILL);
  EXPECT_EQ(two.node0->wait_exit(5s), 128 + SIGKILL);
  EXPECT_EQ(two.node1->wait_exit(15s), 1) << two.node1->log();
  EXPECT_NE(two.node1->log().find("Node 0 ("), std::string::npos) << two.node1->log();
  EXPECT_NE(two.node1->log().find("is lost"), std::string::npos) << two.node1->log();
}

TEST(MultiNode, NodeThatNeverJoinsIsNamed) {
  ServerProcess node0(node_flags(3, 0, free_port(), {}, 3), "mn_missing");
  EXPECT_EQ(node0.wait_exit(60s), 1) << node0.log();
  EXPECT_NE(node0.log().find("node rank(s) 1, 2 did not join"), std::string::npos) << node0.log();
}

TEST(MultiNode, DifferentSettingsAreRefusedOnBothSides) {
  TwoNodes two("mn_mismatch", {}, {"--page-size", "2"});
  EXPECT_EQ(two.node0->wait_exit(60s), 1) << two.node0->log();
  EXPECT_EQ(two.node1->wait_exit(60s), 1) << two.node1->log();
  for (const std::string& log : {two.node0->log(), two.node1->log()}) {
    EXPECT_NE(log.find("page_size=1"), std::string::npos) << log;
    EXPECT_NE(log.find("page_size=2"), std::string::npos) << log;
  }
}

TEST(MultiNode, BadLayoutsFailAtStartupWithAMessage) {
  struct Case {
    std::vector<std::string> flags;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{"--device", "cpu", "--nnodes", "2"}, "--nnodes > 1 needs --dist-init-addr"},
      {{"--device", "cpu", "--dp-size", "3", "--tp-size", "3", "--enable-dp-attention", "--nnodes", "2", "--dist-init-addr",
        "127.0.0.1:1"},
       "must be a multiple of --nnodes"},
      {{"--device", "cpu", "--tp-size", "2"}, "without --enable-dp-attention"},
      {{"--device", "cpu", "--tp-size", "4", "--dp-size", "2", "--enable-dp-attention"}, "attention tensor parallelism"},
      {{"--device", "cpu", "--nnodes", "2", "--node-rank", "2", "--dist-init-addr", "127.0.0.1:1"}, "--node-rank 2 must be below"},
      {{"--device", "cpu", "--nnodes", "2", "--dp-size", "2", "--dist-init-addr", "nohost"}, "HOST:PORT"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    ServerProcess p(cases[i].flags, "mn_bad" + std::to_string(i));
    EXPECT_EQ(p.wait_exit(60s), 1) << p.log();
    EXPECT_NE(p.log().find(cases[i].message), std::string::npos) << p.log();
  }
  // A bad heartbeat timeout in the environment stops the server instead of being replaced quietly.
  ::setenv("PDSERVE_NODE_HEARTBEAT_TIMEOUT", "soon", 1);  // inherited by the server
  ServerProcess p(node_flags(2, 0, free_port()), "mn_bad_heartbeat");
  ::unsetenv("PDSERVE_NODE_HEARTBEAT_TIMEOUT");
  EXPECT_EQ(p.wait_exit(60s), 1) << p.log();
  EXPECT_NE(p.log().find("PDSERVE_NODE_HEARTBEAT_TIMEOUT=soon must be seconds"), std::string::npos) << p.log();
}

}  // namespace
}  // namespace pdserve::test
