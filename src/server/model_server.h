// `pdserve serve`: the model server process (SGLang's launch_server): model + tokenizer +
// schedulers + tokenizer manager + HTTP routes, with warmup, readiness and graceful shutdown.
#pragma once

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "http/server.h"
#include "model/deepseek_v3.h"
#include "parallel/node_group.h"
#include "scheduler/scheduler.h"
#include "server/decode_hold.h"
#include "server/disagg_setup.h"
#include "server/ep_ranks.h"
#include "server/expert_record.h"
#include "server/metrics.h"
#include "server/rank_handle.h"
#include "server/remote_ranks.h"
#include "server/server_args.h"
#include "server/tokenizer_manager.h"
#include "tokenizer/tokenizer.h"

namespace pdserve::server {

class ModelServer {
 public:
  // Loads everything and binds the port (args.port 0 = ephemeral); does not serve yet.
  static Result<std::unique_ptr<ModelServer>> create(ServerArgs args);
  ~ModelServer();

  // Starts schedulers and HTTP, runs the warmup request, logs "The server is fired up and ready to
  // roll!". Returns once serving. Multi-node: first waits for every node (model_server_nodes.cpp);
  // nodes other than 0 serve no HTTP, they run their DP ranks for node 0.
  Status start();
  // Blocks until shutdown() completed.
  void wait();
  // Graceful: stop accepting, abort queued and running requests with finish reason
  // abort("server shutting down"), let their answers reach the clients, stop. Idempotent.
  // `reason` (e.g. "received SIGTERM") is appended to what clients and the other nodes are told.
  void shutdown(const std::string& reason = "");

  uint16_t port() const { return http_ ? http_->port() : 0; }
  const ServerArgs& args() const { return args_; }
  // True once the server stopped because of a failure (a lost node), not by request.
  bool failed() const { return failed_; }

 private:
  ModelServer() = default;
  void register_routes();
  void register_control_routes();
  void register_openai_routes();
  nlohmann::json server_info();
  nlohmann::json model_info() const;
  // Sends a control command to every scheduler and collects the replies (one per DP rank).
  std::vector<nlohmann::json> fan_out(const std::string& command, const nlohmann::json& args);
  bool is_front() const { return args_.node_rank == 0; }
  // Multi-node (model_server_nodes.cpp): the rank channels before the schedulers exist, the
  // rendezvous and readiness barrier in start(), and what a lost node does.
  Status create_node_links();
  Status join_nodes();
  Status wait_for_remote_ranks();
  void on_node_event(const parallel::NodeEvent& e);

  ServerArgs args_;
  model::ModelConfig config_;
  std::shared_ptr<const model::DeepseekV3Model> model_;
  std::shared_ptr<const tokenizer::Tokenizer> tokenizer_;
  std::unique_ptr<EpRanks> ep_ranks_;  // expert parallelism; declared before the schedulers that use it
  std::vector<std::unique_ptr<scheduler::Scheduler>> schedulers_;  // this node's DP ranks
  std::vector<std::unique_ptr<LocalRank>> local_ranks_;
  std::vector<RankHandle*> ranks_;  // node 0: every DP rank of the server, by DP rank; others: local
  std::unique_ptr<RemoteRanks> remote_;   // node 0 of a multi-node server
  std::unique_ptr<RankService> service_;  // the other nodes
  std::unique_ptr<parallel::NodeGroup> group_;
  std::string node_ip_;  // this node's address as the other nodes reach it
  std::vector<scheduler::KvBufferView> kv_views_;  // per DP rank, for PD transfers
  std::shared_ptr<ExpertBalancing> experts_;       // placement + recorder; null without expert flags
  std::unique_ptr<DisaggSetup> disagg_;            // null unless --disaggregation-mode prefill|decode
  std::unique_ptr<TokenizerManager> tm_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<http::Server> http_;
  std::thread watchdog_;
  std::atomic<bool> ready_{false};
  std::atomic<bool> shutting_down_{false};
  std::atomic<bool> failed_{false};
  std::mutex done_mu_;
  std::condition_variable done_cv_;
  bool done_ = false;
  std::unique_ptr<DecodeHold> decode_hold_;  // /hold_decode; declared last so it goes before the ranks
};

// Registers `serve`; the returned callback runs it (exit code).
std::function<int()> add_serve_command(CLI::App& root);

}  // namespace pdserve::server
