// The prefill's bootstrap server (SGLang's CommonKVBootstrapServer, sglang-spec §2.2): every prefill
// rank registers its ZeroMQ address with PUT /route at startup; decode ranks ask GET /route for the
// topology (engine_rank=-1) or for one rank's address, and poll GET /health as their heartbeat.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "http/server.h"

namespace pdserve::disagg {

class BootstrapServer {
 public:
  // Binds host:port (0 = ephemeral) and serves on its own I/O thread.
  static Result<std::unique_ptr<BootstrapServer>> start(const std::string& host, int port);
  ~BootstrapServer();
  uint16_t port() const { return http_->port(); }
  void stop();
  // For tests and /server_info: the registered table.
  nlohmann::json table() const;

 private:
  BootstrapServer() = default;
  void put_route(const http::Request& req, http::Responder& r);
  void get_route(const http::Request& req, http::Responder& r);

  std::unique_ptr<http::Server> http_;
  mutable std::mutex mu_;
  int attn_tp_size_ = 0, dp_size_ = 0, pp_size_ = 0;  // fixed by the first registration
  // [dp_group][attn_tp_rank][pp_rank] -> {"rank_ip","rank_port"}
  std::map<int, std::map<int, std::map<int, nlohmann::json>>> table_;
};

}  // namespace pdserve::disagg
