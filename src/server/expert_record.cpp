#include "server/expert_record.h"

#include <thread>

#include "base/json.h"
#include "base/logging.h"
#include "server/response_channel.h"

namespace pdserve::server {

using nlohmann::json;

namespace {

// Feeds the recorder: while it records, the inner runner reports each MoE layer's chosen experts
// (counts per expert, which a GPU runner takes from its CUDA graphs; every token's choice in
// per_token mode, which makes GPU passes eager), this rank's dispatcher turns them into physical
// copies, and the pass is recorded. With
// --enable-eplb it also counts the pass for the rebalancer and, between passes, picks up the
// placement the rebalancer published (this thread owns the dispatcher).
class RecordingRunner final : public scheduler::ModelRunner {
 public:
  RecordingRunner(std::shared_ptr<scheduler::ModelRunner> inner, std::shared_ptr<const ExpertBalancing> owner,
                  moe::DispatchAlgorithm dispatch, int rank, int top_k, bool ep_ranks)
      : inner_(std::move(inner)), owner_(std::move(owner)), recorder_(owner_->recorder()),
        eplb_(ep_ranks ? nullptr : owner_->eplb()), metrics_(owner_->balance_metrics()),
        placement_(owner_->eplb(), owner_->location(), dispatch, rank), rank_(rank), top_k_(top_k) {}
  int64_t vocab_size() const override { return inner_->vocab_size(); }
  int64_t num_pages() const override { return inner_->num_pages(); }
  int64_t page_size() const override { return inner_->page_size(); }
  const char* name() const override { return inner_->name(); }
  scheduler::KvBufferView kv_buffers() override { return inner_->kv_buffers(); }
  bool last_forward_used_graph() const override { return inner_->last_forward_used_graph(); }
  bool set_routing_trace(model::RoutingTrace* trace) override { return inner_->set_routing_trace(trace); }
  bool set_expert_counts(model::ExpertCounts* counts) override { return inner_->set_expert_counts(counts); }
  void begin_group_step(const scheduler::GroupStep& step) override {
    ++group_step_;
    inner_->begin_group_step(step);
  }
  Status idle_forward() override {
    Status s = inner_->idle_forward();
    // An idle EP rank's share of the group's pass is nothing; reported, so that the pass's
    // balancedness is complete now instead of after the metrics' lag.
    if (s.has_value() && metrics_ && recorder_->recording()) {
      moe::PassRouting idle;
      idle.forward_pass_id = group_step_;
      idle.rank = rank_;
      idle.forward_mode = "idle";
      if (auto m = metrics_->add(idle, {}); !m.has_value()) log::warning("expert balancedness: {}", m.error().message());
    }
    return s;
  }

  Result<Tensor> forward(const std::vector<model::SequenceInput>& batch, bool all_logits) override {
    return pass(batch, [&] { return inner_->forward(batch, all_logits); });
  }
  // Device sampling (GPU runners) stays on: a traced pass reports its routing either way.
  bool samples_on_device() const override { return inner_->samples_on_device(); }
  Result<std::vector<int32_t>> forward_sample(const std::vector<model::SequenceInput>& batch,
                                              const std::vector<model::RowSampling>& rows) override {
    return pass(batch, [&] { return inner_->forward_sample(batch, rows); });
  }

 private:
  template <typename Run>
  auto pass(const std::vector<model::SequenceInput>& batch, Run run) -> decltype(run()) {
    // EP ranks number their passes by group step, the same on every rank for the same pass (idle
    // steps included), so the recorder and the metrics add up one pass of the whole group; other
    // ranks count their own passes.
    const int64_t pass_id = group_step_ >= 0 ? group_step_ : forward_ct_;
    ++forward_ct_;
    placement_.sync();
    auto out = record_pass(batch, run, pass_id);
    if (eplb_) eplb_->on_forward_pass(pass_id);
    return out;
  }

  template <typename Run>
  auto record_pass(const std::vector<model::SequenceInput>& batch, Run run, int64_t pass_id) -> decltype(run()) {
    if (!recorder_->recording()) return run();
    const bool per_token = recorder_->options().mode == moe::RecorderMode::kPerToken;
    model::RoutingTrace trace;
    model::ExpertCounts counts;
    if (per_token) inner_->set_routing_trace(&trace);
    else inner_->set_expert_counts(&counts);
    auto out = run();
    if (per_token) inner_->set_routing_trace(nullptr);
    else inner_->set_expert_counts(nullptr);
    if (!out.has_value()) return out;
    moe::PassRouting pass;
    pass.forward_pass_id = pass_id;
    pass.rank = rank_;
    pass.top_k = top_k_;
    bool decode = true;
    for (const auto& seq : batch) decode = decode && seq.tokens.size() == 1 && seq.prefix_len > 0;
    pass.forward_mode = decode ? "decode" : "extend";
    auto& dispatcher = placement_.dispatcher();
    for (const auto& [layer, logical] : counts.per_layer) {
      auto& row = pass.physical_counts[static_cast<int>(layer)];
      row.assign(static_cast<size_t>(dispatcher.location().layout().num_physical), 0);
      dispatcher.counts_to_physical(static_cast<int>(layer), logical, row);
    }
    if (per_token) {
      for (const auto& seq : batch)
        for (size_t i = 0; i < seq.tokens.size(); ++i) {
          pass.input_ids.push_back(seq.tokens[i]);
          pass.positions.push_back(static_cast<int32_t>(seq.prefix_len + static_cast<int64_t>(i)));
        }
    }
    for (auto& [layer, rows] : trace.experts) {
      auto& ids = pass.physical_ids[static_cast<int>(layer)];
      for (const auto& row : rows) ids.insert(ids.end(), row.begin(), row.end());
      dispatcher.to_physical(static_cast<int>(layer), ids);
    }
    // Counted once for the recorder and the metrics. Errors are bugs, not the request's fault:
    // logged, the request goes on.
    auto flat = moe::physical_counts_of(pass, recorder_->options().layout);
    Status st = flat.has_value() ? ok_status() : Status(flat.error());
    if (st.has_value() && metrics_) st = metrics_->add(pass, *flat);
    if (st.has_value()) st = recorder_->record(pass, std::move(*flat));  // last: it takes the counts
    if (!st.has_value()) log::warning("expert distribution recorder: {}", st.error().message());
    return out;
  }

  std::shared_ptr<scheduler::ModelRunner> inner_;
  std::shared_ptr<const ExpertBalancing> owner_;  // keeps the recorder, placement and rebalancer alive
  moe::ExpertDistributionRecorder* recorder_;
  moe::EplbManager* eplb_;  // what this runner drives: null without --enable-eplb, or on EP ranks
  moe::ExpertBalanceMetrics* metrics_;  // null without --enable-expert-distribution-metrics
  // The recording's logical -> physical map. On EP ranks it follows new placements by version, so
  // a pass at a switch may be recorded under the next placement one step early (the rebalancer
  // restarts its window when a rebalance ends, so that pass is in no window it uses).
  moe::RankExpertLocation placement_;
  int rank_, top_k_;
  int64_t forward_ct_ = 0;
  int64_t group_step_ = -1;  // begin_group_step calls so far, minus one (EP ranks only)
};

}  // namespace

Result<std::shared_ptr<ExpertBalancing>> ExpertBalancing::create(const ExpertArgs& args, const model::ModelConfig& cfg,
                                                                 int ep_size, const std::string& model_name) {
  const bool asked = !args.recorder_mode.empty() || args.ep_num_redundant_experts > 0 ||
                     args.init_expert_location != "trivial" || args.enable_eplb ||
                     args.enable_expert_distribution_metrics;
  if (cfg.n_routed_experts <= 0) {
    if (asked)
      return make_error(ErrorCode::kInvalidArgument,
                        "expert flags (--expert-distribution-recorder-mode, --init-expert-location, ...) need a MoE "
                        "model; this one has no routed experts");
    return std::shared_ptr<ExpertBalancing>();
  }
  if (!asked) return std::shared_ptr<ExpertBalancing>();  // nothing to place or record: no constraint on --dp-size
  auto self = std::make_shared<ExpertBalancing>();
  self->args_ = args;
  if (args.enable_eplb) {
    if (args.eplb_rebalance_num_iterations < 1)
      return make_error(ErrorCode::kInvalidArgument, "--eplb-rebalance-num-iterations must be at least 1, got {}",
                        args.eplb_rebalance_num_iterations);
    if (args.eplb_rebalance_layers_per_chunk == 0 || args.eplb_rebalance_layers_per_chunk < -1)
      return make_error(ErrorCode::kInvalidArgument, "--eplb-rebalance-layers-per-chunk must be at least 1, got {}",
                        args.eplb_rebalance_layers_per_chunk);
    // SGLang: the rebalancer needs a window; without a recorder mode it records `stat` over the
    // last --eplb-rebalance-num-iterations passes.
    if (args.recorder_mode.empty()) {
      self->args_.recorder_mode = "stat";
      self->args_.recorder_buffer_size = args.eplb_rebalance_num_iterations;
    }
  }
  // SGLang: the metrics record in stat mode unless a mode is given.
  if (args.enable_expert_distribution_metrics && self->args_.recorder_mode.empty()) self->args_.recorder_mode = "stat";
  self->top_k_ = static_cast<int>(cfg.num_experts_per_tok);
  PDSERVE_ASSIGN_OR_RETURN(self->dispatch_, moe::parse_dispatch_algorithm(args.ep_dispatch_algorithm));
  moe::ExpertLayout layout{static_cast<int>(cfg.num_hidden_layers), static_cast<int>(cfg.n_routed_experts),
                           static_cast<int>(cfg.n_routed_experts) + args.ep_num_redundant_experts, ep_size};
  moe::EplbOptions eplb;
  eplb.num_groups = static_cast<int>(std::max<int64_t>(1, cfg.n_group));
  eplb.num_nodes = 1;  // one server process
  PDSERVE_ASSIGN_OR_RETURN(eplb.algorithm, moe::parse_eplb_algorithm(args.eplb_algorithm));
  PDSERVE_ASSIGN_OR_RETURN(auto source, moe::read_expert_location_source(args.init_expert_location));
  auto loc = moe::build_expert_location(source, layout, eplb);
  if (!loc.has_value()) return loc.error().with_context("--init-expert-location");
  self->location_ = std::make_shared<const moe::ExpertLocation>(std::move(*loc));
  // Say what is in effect (users ask whether EPLB is silently off; cpp-anchors §4.7).
  std::string balance;
  if (source.kind == moe::ExpertLocationSource::Kind::kCounts) {
    moe::Matrix counts = source.summed_counts();
    auto trivial = moe::ExpertLocation::trivial(layout);
    auto before = compute_balancedness(counts, trivial->physical_to_logical(), ep_size);
    auto after = compute_balancedness(counts, self->location_->physical_to_logical(), ep_size);
    if (before.has_value() && after.has_value())
      balance = fmt::format(", balancedness of the recorded load: trivial {:.3f} -> placed {:.3f}", before->mean,
                            after->mean);
  }
  log::info("Expert placement: {} layers x {} logical experts on {} physical ({} redundant, {} per rank, ep size {}), "
            "init-expert-location={}, eplb-algorithm={}, ep-dispatch-algorithm={}{}",
            layout.num_layers, layout.num_logical, layout.num_physical, args.ep_num_redundant_experts,
            layout.num_local_physical(), ep_size,
            source.kind == moe::ExpertLocationSource::Kind::kTrivial ? "trivial" : source.origin, args.eplb_algorithm,
            args.ep_dispatch_algorithm, balance);
  if (!self->args_.recorder_mode.empty()) {
    moe::RecorderOptions ro;
    PDSERVE_ASSIGN_OR_RETURN(ro.mode, moe::parse_recorder_mode(self->args_.recorder_mode));
    ro.buffer_size = self->args_.recorder_buffer_size;
    ro.layout = layout;
    ro.model = model_name;
    ro.num_groups = eplb.num_groups;
    PDSERVE_ASSIGN_OR_RETURN(self->recorder_, moe::ExpertDistributionRecorder::create(std::move(ro)));
  }
  if (args.enable_expert_distribution_metrics) {
    self->metrics_ = std::make_unique<moe::ExpertBalanceMetrics>(layout, moe::balancedness_metric_from_env());
    log::info("ExpertDistributionRecorder auto start record since enable_expert_distribution_metrics");
    self->recorder_->start();
  }
  if (args.enable_eplb) {
    moe::EplbManagerOptions mo;
    mo.rebalance_num_iterations = args.eplb_rebalance_num_iterations;
    mo.layers_per_chunk = args.eplb_rebalance_layers_per_chunk;
    mo.min_rebalancing_utilization_threshold = args.eplb_min_rebalancing_utilization_threshold;
    mo.eplb = eplb;
    PDSERVE_ASSIGN_OR_RETURN(self->eplb_, moe::EplbManager::create(mo, self->location_, self->recorder_.get()));
  }
  return self;
}

Result<std::shared_ptr<scheduler::ModelRunner>> ExpertBalancing::wrap(std::shared_ptr<scheduler::ModelRunner> inner,
                                                                      int rank, bool ep_ranks) {
  if (!recorder_) return inner;
  if (metrics_) metrics_->add_rank();
  const bool reports = needs_expert_counts() ? inner->set_expert_counts(nullptr) : inner->set_routing_trace(nullptr);
  if (!reports)
    return make_error(ErrorCode::kUnsupported,
                      "--expert-distribution-recorder-mode {} needs a backend that reports expert routing (the CPU "
                      "and CUDA DeepSeek-V3 backends in this build)",
                      moe::recorder_mode_name(recorder_->options().mode));
  return std::shared_ptr<scheduler::ModelRunner>(
      std::make_shared<RecordingRunner>(std::move(inner), shared_from_this(), dispatch_, rank, top_k_, ep_ranks));
}

std::string ExpertBalancing::render_metrics(const std::string& labels) const {
  return (eplb_ ? eplb_->render_metrics(labels) : std::string()) +
         (metrics_ ? metrics_->render_metrics(labels) : std::string());
}

json expert_record_node_command(ExpertBalancing* experts, const json& args) {
  if (!experts || !experts->recorder())
    return {{"success", false}, {"message", "the expert distribution recorder is off on this node"}};
  const std::string action = args.is_object() ? args.value("action", "") : "";
  if (action == "start") experts->recorder()->start();
  else if (action == "stop") experts->recorder()->stop();
  else if (action == "dump") return {{"success", true}, {"dump", experts->recorder()->dump(*experts->location())}};
  else return {{"success", false}, {"message", "unknown expert record action '" + action + "'"}};
  return {{"success", true}};
}

Status merge_expert_dumps(json& into, const json& other) {
  try {
    json& a = into.at("logical_count");
    const json& b = other.at("logical_count");
    // Nodes count their own forward passes; the latest passes line up (every node was recording).
    if (b.size() > a.size()) {
      json padded = json::array();
      for (size_t i = 0; i < b.size() - a.size(); ++i) {
        json zero = b[i];
        for (auto& row : zero)
          for (auto& v : row) v = 0;
        padded.push_back(std::move(zero));
      }
      for (auto& p : a) padded.push_back(std::move(p));
      a = std::move(padded);
    }
    const size_t off = a.size() - b.size();
    for (size_t i = 0; i < b.size(); ++i) {
      json& pa = a[off + i];
      const json& pb = b[i];
      if (pa.size() != pb.size()) throw std::length_error("layer counts differ");
      for (size_t l = 0; l < pb.size(); ++l) {
        if (pa[l].size() != pb[l].size()) throw std::length_error("expert counts differ");
        for (size_t e = 0; e < pb[l].size(); ++e) pa[l][e] = pa[l][e].get<int64_t>() + pb[l][e].get<int64_t>();
      }
    }
    if (other.contains("records") && into.contains("records"))
      for (const auto& r : other.at("records")) into["records"].push_back(r);
    auto& meta = into.at("metadata");
    meta["num_passes"] = std::max(meta.value("num_passes", int64_t{0}), other.at("metadata").value("num_passes", int64_t{0}));
  } catch (const std::exception& e) {
    return make_error(ErrorCode::kCorrupt, "cannot merge another node's expert distribution: {}", e.what());
  }
  return ok_status();
}

void register_expert_record_routes(http::Server& server, std::shared_ptr<ExpertBalancing> experts,
                                   const std::string& api_key, OtherNodesRecorder others) {
  // Every other node must have done it too; the first failure is the answer.
  auto others_ok = [others](const std::string& action, std::shared_ptr<http::Responder>& r) {
    if (!others) return true;
    for (const auto& rep : others(action))
      if (!rep.value("success", false)) {
        r->respond(500, error_body(500, "another node's recorder failed to " + action + ": " +
                                            rep.value("message", std::string("no answer")))
                            .dump());
        return false;
      }
    return true;
  };
  // The recorder itself is shared by all ranks and thread safe, so the routes act on it directly.
  auto guard = [experts](std::shared_ptr<http::Responder>& r) {
    if (experts && experts->recorder()) return true;
    r->respond(400, error_body(400, "the expert distribution recorder is off: start the server with "
                                    "--expert-distribution-recorder-mode stat|per_pass|per_token")
                        .dump());
    return false;
  };
  auto body_ok = [](const http::Request& req, std::shared_ptr<http::Responder>& r) {
    if (req.body.empty()) return true;
    auto body = parse_json(req.body, "request body");
    if (body.has_value() && body->is_object()) return true;
    r->respond(400, error_body(400, body.has_value() ? "the body must be a JSON object" : body.error().message()).dump());
    return false;
  };
  // The other nodes answer over the network: not on an I/O thread.
  auto start = [experts, guard, body_ok, others_ok](http::Request req, std::shared_ptr<http::Responder> r) {
    if (!body_ok(req, r) || !guard(r)) return;
    std::thread([experts, r, others_ok]() mutable {
      experts->recorder()->start();
      if (others_ok("start", r)) r->respond(200, "Start recording the expert distribution.\n", "text/plain");
    }).detach();
  };
  auto stop = [experts, guard, body_ok, others_ok](http::Request req, std::shared_ptr<http::Responder> r) {
    if (!body_ok(req, r) || !guard(r)) return;
    std::thread([experts, r, others_ok]() mutable {
      experts->recorder()->stop();
      if (others_ok("stop", r)) r->respond(200, "Stop recording the expert distribution.\n", "text/plain");
    }).detach();
  };
  auto dump = [experts, guard, body_ok, others](http::Request req, std::shared_ptr<http::Responder> r) {
    if (!body_ok(req, r) || !guard(r)) return;
    // Writing a long recording takes a while: not on an I/O thread.
    std::thread([experts, r, others] {
      json merged = experts->recorder()->dump(*experts->location());
      if (others) {
        for (const auto& rep : others("dump")) {
          Status st = rep.value("success", false) ? merge_expert_dumps(merged, rep.value("dump", json()))
                                                  : Status(Error(ErrorCode::kIo, rep.value("message", std::string("no answer"))));
          if (!st) {
            r->respond(500, error_body(500, "another node's recorder: " + st.error().message()).dump());
            return;
          }
        }
      }
      auto path = experts->recorder()->write_dump(moe::expert_distribution_dir_from_env(), merged);
      if (path.has_value()) r->respond(200, "Dump expert distribution record.\n", "text/plain");
      else r->respond(500, error_body(500, path.error().message()).dump());
    }).detach();
  };
  for (const char* method : {"GET", "POST"}) {
    server.route(method, "/start_expert_distribution_record", http::require_api_key(api_key, start));
    server.route(method, "/stop_expert_distribution_record", http::require_api_key(api_key, stop));
    server.route(method, "/dump_expert_distribution_record", http::require_api_key(api_key, dump));
  }
}

}  // namespace pdserve::server
