#include "server/disagg_setup.h"

#include "base/logging.h"
#include "disagg/transfer_backend.h"

namespace pdserve::server {

Result<std::unique_ptr<DisaggSetup>> DisaggSetup::create(const ServerArgs& args) {
  PDSERVE_ASSIGN_OR_RETURN(auto mode, disagg::parse_mode(args.disaggregation_mode));
  // The backend name is checked even in mode null, so a typo fails at startup, not later.
  PDSERVE_ASSIGN_OR_RETURN(auto backend, disagg::parse_backend(args.disaggregation_transfer_backend));
  if (mode == scheduler::DisaggMode::kNull) return std::unique_ptr<DisaggSetup>();
  auto s = std::unique_ptr<DisaggSetup>(new DisaggSetup());
  s->opts_.mode = mode;
  s->opts_.backend = backend;
  s->opts_.bootstrap_port = args.disaggregation_bootstrap_port;
  s->opts_.ib_device = args.disaggregation_ib_device;
  s->opts_.api_key = args.api_key;  // the bootstrap server requires it; the decode sends it
  PDSERVE_RETURN_IF_ERROR(disagg::load_disagg_env(s->opts_));
  if (!args.disaggregation_ib_device.empty())
    log::warning("--disaggregation-ib-device {} is recorded but unused: the {} backend does not use RDMA devices",
                 args.disaggregation_ib_device, disagg::backend_name(backend));
  log::info("PD disaggregation: mode={}, transfer backend={}, bootstrap port={}, bootstrap timeout={}s, waiting timeout={}s, "
            "heartbeat interval={}s x {}",
            args.disaggregation_mode, disagg::backend_name(backend), args.disaggregation_bootstrap_port,
            s->opts_.bootstrap_timeout_s, s->opts_.waiting_timeout_s, s->opts_.heartbeat_interval_s,
            s->opts_.heartbeat_max_failure);
  return s;
}

DisaggSetup::~DisaggSetup() { stop(); }

Status DisaggSetup::start(const std::string& host, const std::vector<scheduler::Scheduler*>& schedulers,
                          const std::vector<scheduler::KvBufferView>& kv, const RankPlacement& where) {
  // Peers need an address they can reach: a wildcard bind advertises loopback.
  const std::string advertise = !where.advertise_host.empty()                              ? where.advertise_host
                                : host == "0.0.0.0" || host == "::" || host.empty() ? "127.0.0.1"
                                                                                    : host;
  const int local = static_cast<int>(schedulers.size());
  const int dp = where.dp_size > 0 ? where.dp_size : local;
  const std::string bootstrap_host = where.bootstrap_host.empty() ? advertise : where.bootstrap_host;
  // Test hook (DisaggOptions::test_attn_tp_*): attention-TP rank > 0 of an emulated group uses
  // rank 0's bootstrap server.
  const bool tp_follower = opts_.test_attn_tp_rank > 0;
  if (opts_.test_attn_tp_size > 1 && (dp != 1 || where.first_rank != 0))
    return make_error(ErrorCode::kInvalidArgument, "PDSERVE_DISAGGREGATION_TEST_ATTN_TP needs --dp-size 1 on one node");
  if (opts_.mode == scheduler::DisaggMode::kPrefill && where.run_bootstrap && !tp_follower) {
    // Bound on --host, as SGLang (server_args.host:disaggregation_bootstrap_port).
    PDSERVE_ASSIGN_OR_RETURN(bootstrap_, disagg::BootstrapServer::start(host, opts_.bootstrap_port, opts_.api_key));
    opts_.bootstrap_port = bootstrap_->port();
  }
  // Every rank is its own attention-TP group of one (server_args refuses attention TP > 1) unless
  // the test hook says otherwise, and the DeepSeek runner's KV is the MLA latent cache; a peer with
  // another attention-TP size still pairs (disagg::attn_tp_targets).
  const disagg::AttnTp attn_tp{opts_.test_attn_tp_size, opts_.test_attn_tp_rank, true};
  for (int i = 0; i < local; ++i) {
    const int rank = where.first_rank + i;
    if (kv[static_cast<size_t>(i)].layer_ptrs.empty() && opts_.backend != disagg::Backend::kFake)
      return make_error(ErrorCode::kUnsupported, "DP rank {} has no KV buffers to transfer", rank);
    PDSERVE_ASSIGN_OR_RETURN(auto backend, disagg::make_transfer_backend(opts_.backend, kv[static_cast<size_t>(i)]));
    if (opts_.mode == scheduler::DisaggMode::kPrefill) {
      auto m = std::make_shared<disagg::PrefillKvManager>(opts_, kv[static_cast<size_t>(i)], rank, dp, std::move(backend),
                                                        attn_tp);
      PDSERVE_RETURN_IF_ERROR(m->start(advertise, bootstrap_host, opts_.bootstrap_port));
      schedulers[static_cast<size_t>(i)]->set_disagg_endpoints(m);
      prefill_.push_back(std::move(m));
    } else {
      auto m = std::make_shared<disagg::DecodeKvManager>(opts_, kv[static_cast<size_t>(i)], rank, std::move(backend), attn_tp);
      PDSERVE_RETURN_IF_ERROR(m->start(advertise));
      schedulers[static_cast<size_t>(i)]->set_disagg_endpoints(m);
      decode_.push_back(std::move(m));
    }
  }
  return ok_status();
}

void DisaggSetup::stop() {
  for (auto& m : prefill_) m->stop();
  for (auto& m : decode_) m->stop();
  if (bootstrap_) bootstrap_->stop();
}

std::string DisaggSetup::warmup_body(int64_t dp_size) const {
  nlohmann::json ids = nlohmann::json::array(), hosts = nlohmann::json::array(), rooms = nlohmann::json::array();
  for (int64_t i = 0; i < dp_size; ++i) {
    ids.push_back({0, 1, 2, 3});
    hosts.push_back(disagg::kFakeBootstrapHost);
    // SGLang's rooms: i * (2^63 / dp) lands on rank i under room % dp.
    rooms.push_back(static_cast<int64_t>(static_cast<uint64_t>(i) * ((uint64_t{1} << 63) / static_cast<uint64_t>(dp_size))) + i);
  }
  return nlohmann::json{{"input_ids", ids},
                        {"bootstrap_host", hosts},
                        {"bootstrap_room", rooms},
                        {"sampling_params", {{"max_new_tokens", 8}, {"ignore_eos", true}, {"temperature", 0}}}}
      .dump();
}

std::vector<disagg::TransferSample> DisaggSetup::drain_samples() {
  std::vector<disagg::TransferSample> out;
  // The prefill measures first send -> ack; the decode measures init -> done. Each side reports its own.
  for (auto& m : prefill_)
    for (auto& s : m->stats().drain()) out.push_back(s);
  for (auto& m : decode_)
    for (auto& s : m->stats().drain()) out.push_back(s);
  return out;
}

nlohmann::json DisaggSetup::info() const {
  nlohmann::json j = {{"mode", opts_.mode == scheduler::DisaggMode::kPrefill ? "prefill" : "decode"},
                      {"transfer_backend", disagg::backend_name(opts_.backend)},
                      {"bootstrap_port", opts_.bootstrap_port},
                      {"bootstrap_timeout_s", opts_.bootstrap_timeout_s},
                      {"waiting_timeout_s", opts_.waiting_timeout_s},
                      {"heartbeat_interval_s", opts_.heartbeat_interval_s},
                      {"heartbeat_max_failure", opts_.heartbeat_max_failure}};
  nlohmann::json ranks = nlohmann::json::array();
  for (const auto& m : prefill_)
    ranks.push_back({{"endpoint", m->endpoint()}, {"transfers", m->stats().count()}, {"bytes", m->stats().bytes()},
                     {"tracked_rooms", m->tracked_rooms()}, {"failed_room_tombstones", m->failed_room_tombstones()}});
  for (const auto& m : decode_)
    ranks.push_back({{"endpoint", m->endpoint()}, {"transfers", m->stats().count()}, {"bytes", m->stats().bytes()}});
  j["ranks"] = ranks;
  if (bootstrap_) j["bootstrap_table"] = bootstrap_->table();
  return j;
}

}  // namespace pdserve::server
