// The prefill's bootstrap server (SGLang's CommonKVBootstrapServer, sglang-spec §2.2): every prefill
// rank registers its ZeroMQ address with PUT /route at startup; decode ranks ask GET /route for the
// topology (engine_rank=-1) or for one rank's address, and poll GET /health as their heartbeat.
//
// Access: with an API key (the prefill's --api-key) both /route methods require
// "Authorization: Bearer KEY" (401 otherwise), so nobody who can reach the port can register a
// rank address of their choosing (and so receive the KV cache) or read the ranks' addresses.
// /health stays open: it reveals nothing and is the decode's heartbeat. SGLang's bootstrap server
// has no key; its clients send none, so a pdserve prefill with --api-key only pairs with decodes
// started with the same --api-key (docs/pd.md).
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

// The headers of a request to a bootstrap server: JSON, and the API key when there is one.
http::Headers bootstrap_headers(const std::string& api_key);

class BootstrapServer {
 public:
  // Binds host:port (0 = ephemeral) and serves on its own I/O thread. An empty api_key leaves
  // /route open (as SGLang).
  static Result<std::unique_ptr<BootstrapServer>> start(const std::string& host, int port,
                                                        const std::string& api_key = "");
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
