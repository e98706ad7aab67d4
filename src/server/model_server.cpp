#include "server/model_server.h"

#include <cstdlib>
#include <chrono>
#include <cstdio>
#include <string_view>
#include <thread>

#include "base/logging.h"
#include "http/client.h"
#include "http/signals.h"
#include "moe/ep_dispatch_low_latency.h"
#include "scheduler/model_runner.h"

namespace pdserve::server {

namespace {

// The tokenizer as the scheduler's stop-string decoder.
class TokenizerTextDecoder final : public scheduler::TextDecoder {
 public:
  explicit TokenizerTextDecoder(std::shared_ptr<const tokenizer::Tokenizer> t) : tok_(std::move(t)) {}
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const override {
    std::vector<int32_t> known;
    for (int32_t id : ids)
      if (tok_->token_bytes(id)) known.push_back(id);
    auto s = tok_->decode(known, skip_special_tokens);
    return s ? *s : std::string();
  }

 private:
  std::shared_ptr<const tokenizer::Tokenizer> tok_;
};

// The CPU runner, or the GPU model (memory planning, graphs) when --device resolves to cuda.
// Fills the derived flags (context length, cache size, running-request cap) on the way.
// PDSERVE_HOST_SAMPLING=1 copies the logits to the host and samples there (as the CPU backend),
// for comparisons; by default the GPU draws the tokens (docs/gpu.md).
bool device_sampling_from_env() {
  const char* host_sampling = std::getenv("PDSERVE_HOST_SAMPLING");
  return !(host_sampling && std::string_view(host_sampling) == "1");
}

// The most new tokens one forward of a rank carries: sizes the GPU activation arena and the
// GPU EP normal-mode buffers alike, so both must come from here.
int64_t max_forward_tokens(const ServerArgs& a) { return std::max(a.max_prefill_tokens, a.chunked_prefill_size); }

// GPU expert parallelism: one GPU model per EP rank on the rank's GPU (the routed experts live in
// the rank's hook, so each model uploads the rest), the KV cache of ranks sharing a GPU split
// evenly. Returns rank 0's runner; every rank's goes to `runners`.
Result<std::shared_ptr<scheduler::ModelRunner>> make_ep_gpu_runners(std::shared_ptr<const model::DeepseekV3Model> model,
                                                                    ServerArgs& args, model::GpuModelOptions go,
                                                                    const EpRanks& ep,
                                                                    std::vector<std::shared_ptr<scheduler::ModelRunner>>& runners) {
  // Decode graphs hold one low-latency exchange per MoE layer: sizes up to its tokens per rank.
  const int64_t max_dispatch = ep.max_dispatch_tokens_per_rank();
  std::vector<int64_t> graph_bs;
  for (int64_t b : go.cuda_graph_bs)
    if (b <= max_dispatch) graph_bs.push_back(b);
  if (graph_bs.size() < go.cuda_graph_bs.size())
    log::info("CUDA graph sizes above {} (SGLANG_DEEPEP_NUM_MAX_DISPATCH_TOKENS_PER_RANK) are not captured: "
              "such decode batches run eagerly", max_dispatch);
  go.cuda_graph_bs = graph_bs;
  go.routed_experts_elsewhere = true;
  const bool device_sampling = device_sampling_from_env();
  int64_t min_tokens = -1;
  for (int r = 0; r < ep.size(); ++r) {
    go.device = ep.gpu(r);
    go.later_models_on_device = 0;
    for (int later = r + 1; later < ep.size(); ++later) go.later_models_on_device += ep.gpu(later) == go.device ? 1 : 0;
    log::info("EP rank {} on GPU {}", r, go.device);
    PDSERVE_ASSIGN_OR_RETURN(auto gpu, model::DeepseekV3GpuModel::create(model, go));
    // Captured now, before any rank serves: capturing runs no exchange (the model's doc says why).
    gpu->set_routed_experts(ep.experts(r));
    PDSERVE_RETURN_IF_ERROR(gpu->capture_routed_graphs());
    const int64_t tokens = gpu->memory().max_total_num_tokens;
    min_tokens = min_tokens < 0 ? tokens : std::min(min_tokens, tokens);
    runners.push_back(std::make_shared<scheduler::GpuRunner>(std::move(gpu), device_sampling, ep.experts(r)));
  }
  args.max_total_tokens = min_tokens;
  PDSERVE_RETURN_IF_ERROR(args.resolve(model->config().max_position_embeddings, 0));
  return runners.front();
}

// `count_experts`: the expert distribution recorder needs per-layer expert counts from every pass.
Result<std::shared_ptr<scheduler::ModelRunner>> make_runner(std::shared_ptr<const model::DeepseekV3Model> model,
                                                            ServerArgs& args, const EpRanks* ep, bool count_experts,
                                                            std::vector<std::shared_ptr<scheduler::ModelRunner>>& ep_runners) {
  const auto& c = model->config();
  if (args.device == "auto") args.device = model::cuda_device_available() ? "cuda" : "cpu";
  if (args.device == "cpu") {
    const int64_t bytes_per_token = c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim) * 4;
    PDSERVE_RETURN_IF_ERROR(args.resolve(c.max_position_embeddings, bytes_per_token));
    log::info("Load weight end. type=DeepseekV3ForCausalLM, dtype={}, device=cpu", c.quantization ? "fp8_e4m3" : "bfloat16");
    log::info("KV Cache is allocated. #tokens: {}, KV size: {:.2f} GB", args.max_total_tokens,
              static_cast<double>(args.max_total_tokens * bytes_per_token) / 1e9);
    return std::shared_ptr<scheduler::ModelRunner>(
        std::make_shared<scheduler::DeepseekV3Runner>(model, args.max_total_tokens, args.page_size));
  }
  model::GpuModelOptions go;
  go.device = args.base_gpu_id;
  go.mem_fraction_static = args.mem_fraction_static > 0 ? args.mem_fraction_static : 0.88;
  go.max_total_tokens = args.max_total_tokens;
  go.page_size = args.page_size;
  go.context_length = args.context_length > 0 ? args.context_length : c.max_position_embeddings;
  go.max_forward_tokens = max_forward_tokens(args);
  go.count_experts = count_experts;
  if (!args.disable_cuda_graph) {
    const int64_t max_running = args.max_running_requests > 0 ? args.max_running_requests : 1024;
    const int64_t max_bs = args.cuda_graph_max_bs > 0 ? args.cuda_graph_max_bs : std::min<int64_t>(max_running, 64);
    go.cuda_graph_bs = args.cuda_graph_bs.empty() ? model::default_cuda_graph_bs(max_bs) : args.cuda_graph_bs;
    for (int64_t b : go.cuda_graph_bs)
      if (b <= 0) return make_error(ErrorCode::kInvalidArgument, "--cuda-graph-bs entries must be positive, got {}", b);
  }
  if (ep && ep->on_gpu()) return make_ep_gpu_runners(model, args, go, *ep, ep_runners);
  PDSERVE_ASSIGN_OR_RETURN(auto gpu, model::DeepseekV3GpuModel::create(model, go));
  args.max_total_tokens = gpu->memory().max_total_num_tokens;
  PDSERVE_RETURN_IF_ERROR(args.resolve(c.max_position_embeddings, 0));
  return std::shared_ptr<scheduler::ModelRunner>(
      std::make_shared<scheduler::GpuRunner>(std::move(gpu), device_sampling_from_env()));
}

}  // namespace

Result<std::unique_ptr<ModelServer>> ModelServer::create(ServerArgs args) {
  auto s = std::unique_ptr<ModelServer>(new ModelServer());
  // Layout mistakes fail before a (possibly huge) model is loaded.
  PDSERVE_RETURN_IF_ERROR(args.resolve_parallel());
  // GPU EP ranks spin in their dispatch/combine kernels until the peers' data arrives, so nothing
  // else on the GPU may wait for every running kernel: each rank's stream needs its own hardware
  // queue (CUDA hands out 8 by default), and kernels must be loaded at start-up, since loading a
  // module on a kernel's first launch (CUDA's default lazy loading) synchronises the context, which
  // waits for the spinning peers. Both set before CUDA initialises here; explicit settings win.
  if (args.expert_parallel() && args.device != "cpu") {
    setenv("CUDA_DEVICE_MAX_CONNECTIONS", "32", 0);
    setenv("CUDA_MODULE_LOADING", "EAGER", 0);
  }
  if (args.nnodes > 1) PDSERVE_RETURN_IF_ERROR(parallel::parse_host_port(args.dist_init_addr));
  PDSERVE_ASSIGN_OR_RETURN(s->config_, model::load_model_config(args.model_path, args.json_model_override_args));
  // SGLang's kernel and tuning flags, before the (long) weight load: a refused one fails at once.
  PDSERVE_ASSIGN_OR_RETURN(auto compat_notes,
                           args.compat.resolve(s->config_, args.disaggregation_mode, args.expert_parallel()));
  const auto tok_dir = tokenizer::resolve_tokenizer_dir(args.model_path, args.tokenizer_path);
  auto tok = tokenizer::Tokenizer::load(tok_dir);
  if (!tok)
    return Error(tok.error().code(), tok.error().message() +
                                         " (the DeepSeek-V3 tokenizer files are installed by scripts/setup.sh; or pass --tokenizer-path)");
  s->tokenizer_ = *tok;
  PDSERVE_ASSIGN_OR_RETURN(model::LoadFormat format, model::parse_load_format(args.load_format));
  if (args.expert_parallel()) {
    if (args.nnodes > 1)
      return make_error(ErrorCode::kUnsupported, "--moe-a2a-backend deepep runs on one node in this build (--nnodes 1)");
    if (args.device == "auto") args.device = model::cuda_device_available() ? "cuda" : "cpu";
  }
  model::LoadOptions load{format, static_cast<uint64_t>(args.dummy_seed), args.json_model_override_args};
  // GPU EP ranks make their own slice of dummy routed experts: the host never holds them all
  // (DeepSeek-V3's are ~650 GB in FP8, more than an 8-GPU host's memory).
  load.dummy_routed_experts = !(args.expert_parallel() && args.device == "cuda");
  PDSERVE_ASSIGN_OR_RETURN(auto model, model::DeepseekV3Model::load(args.model_path, load));
  s->model_ = std::move(model);
  const auto& c = s->config_;
  if (!(args.watchdog_timeout > 0)) return make_error(ErrorCode::kInvalidArgument, "--watchdog-timeout must be positive");
  PDSERVE_ASSIGN_OR_RETURN(s->disagg_, DisaggSetup::create(args));
  for (const auto& note : args.layout->notes()) log::info("{}", note);
  for (const auto& a : args.adjustments) log::warning("{}", a);
  if (args.enable_two_batch_overlap)
    log::warning("--enable-two-batch-overlap is accepted but not implemented: passes run without the overlap");
  for (const auto& note : compat_notes) log::info("{}", note);
  if (args.expert.enable_eplb && args.nnodes > 1)  // each node would rebalance on its own share of the counts
    return make_error(ErrorCode::kUnsupported, "--enable-eplb runs on a one-node server only in this build");
  // The placement (and recorder) first: EP ranks hold the physical experts it names.
  const int ep_group = args.expert_parallel() ? args.layout->world_size() : static_cast<int>(args.dp_size);
  PDSERVE_ASSIGN_OR_RETURN(s->experts_, ExpertBalancing::create(args.expert, c, ep_group, args.served_model_name));
  if (args.expert_parallel()) {
    EpRanksOptions eo;
    PDSERVE_ASSIGN_OR_RETURN(eo.max_dispatch_tokens_per_rank, moe::max_dispatch_tokens_per_rank_from_env());
    eo.timeout = std::chrono::milliseconds(static_cast<int64_t>(args.watchdog_timeout * 500));
    eo.device = args.device;
    eo.base_gpu_id = static_cast<int>(args.base_gpu_id);
    eo.max_forward_tokens = max_forward_tokens(args);
    if (s->experts_) eo.placement = {s->experts_->location(), s->experts_->dispatch_algorithm(), s->experts_->eplb()};
    PDSERVE_ASSIGN_OR_RETURN(s->ep_ranks_, EpRanks::create(*args.layout, s->model_, eo));
    const int64_t physical = eo.placement.num_physical(c);
    log::info("DeepEP MoE: {} EP ranks, {} routed experts each ({} physical in all), --deepep-mode {}, low-latency "
              "buffers for {} tokens per rank",
              args.ep_size, physical / args.ep_size, physical, args.deepep_mode, eo.max_dispatch_tokens_per_rank);
  }
  std::vector<std::shared_ptr<scheduler::ModelRunner>> ep_gpu_runners;  // GPU EP: one per rank
  PDSERVE_ASSIGN_OR_RETURN(auto runner, make_runner(s->model_, args, s->ep_ranks_.get(),
                                                    s->experts_ && s->experts_->needs_expert_counts(), ep_gpu_runners));
  if (args.context_length > c.max_position_embeddings)
    log::warning("--context-length {} is longer than the model's max_position_embeddings {}", args.context_length,
                 c.max_position_embeddings);
  std::string avail;
  if (const auto* gpu = dynamic_cast<const scheduler::GpuRunner*>(runner.get()))
    avail = fmt::format(", available_gpu_mem={:.2f} GB", gpu->model().memory().avail_gb);
  s->args_ = std::move(args);
  const auto& a = s->args_;

  auto decoder = std::make_shared<TokenizerTextDecoder>(s->tokenizer_);
  scheduler::SchedulerConfig sc;
  sc.max_running_requests = a.max_running_requests;
  sc.chunked_prefill_size = a.chunked_prefill_size;
  sc.max_prefill_tokens = a.max_prefill_tokens;
  sc.disable_radix_cache = a.disable_radix_cache;
  sc.schedule_policy = a.schedule_policy;
  sc.decode_log_interval = a.decode_log_interval;
  sc.context_length = a.context_length;
  sc.eos_token_id = s->tokenizer_->eos_id() >= 0 ? s->tokenizer_->eos_id() : c.eos_token_id;
  sc.random_seed = a.random_seed;
  // SGLang's new-token-ratio schedule: start at 0.7 x conservativeness, decay over 600 decode steps
  // to 14% of that.
  sc.init_new_token_ratio = std::min(0.7 * a.schedule_conservativeness, 1.0);
  sc.min_new_token_ratio = std::min(sc.init_new_token_ratio * 0.14, 1.0);
  sc.new_token_ratio_decay = (sc.init_new_token_ratio - sc.min_new_token_ratio) / 600.0;
  if (s->disagg_) {
    sc.disagg_mode = s->disagg_->mode();
    sc.num_reserved_decode_tokens = a.num_reserved_decode_tokens;
    sc.disagg_polling_interval = a.disaggregation_decode_polling_interval;
  }
  ModelServer* self = s.get();
  // This node's DP ranks: one scheduler each, with its own KV cache over the shared (read-only)
  // weights. Outputs go to the tokenizer manager, or on a node other than 0 to node 0.
  for (int64_t i = 0; i < a.ranks_per_node(); ++i) {
    const int64_t rank = a.first_local_rank() + i;
    if (i > 0 && ep_gpu_runners.empty() && !dynamic_cast<scheduler::DeepseekV3Runner*>(runner.get()))
      return make_error(ErrorCode::kUnsupported,
                        "more than one DP rank per process on GPUs needs --moe-a2a-backend deepep in this build");
    std::shared_ptr<scheduler::ModelRunner> rank_runner =
        !ep_gpu_runners.empty() ? ep_gpu_runners.at(static_cast<size_t>(rank))
        : s->ep_ranks_          ? std::make_shared<scheduler::DeepseekV3Runner>(s->model_, a.max_total_tokens, a.page_size,
                                                                                s->ep_ranks_->experts(static_cast<int>(rank)))
        : i == 0                ? runner
                                : std::make_shared<scheduler::DeepseekV3Runner>(s->model_, a.max_total_tokens, a.page_size);
    if (s->experts_) {
      PDSERVE_ASSIGN_OR_RETURN(rank_runner, s->experts_->wrap(rank_runner, static_cast<int>(rank), args.expert_parallel()));
    }
    sc.dp_rank = static_cast<int>(rank);
    sc.dp_size = static_cast<int>(a.dp_size);
    // With DP attention each DP rank is tp/dp consecutive TP ranks; it logs as the first.
    sc.tp_size = static_cast<int>(a.tp_size);
    sc.tp_rank = static_cast<int>(rank * (a.tp_size / std::max<int64_t>(1, a.dp_size)));
    sc.ep_size = s->ep_ranks_ ? static_cast<int>(a.ep_size) : 1;
    sc.ep_rank = s->ep_ranks_ ? static_cast<int>(rank) : 0;
    s->kv_views_.push_back(rank_runner->kv_buffers());
    s->schedulers_.push_back(std::make_unique<scheduler::Scheduler>(
        sc, rank_runner, decoder, [self](scheduler::RequestOutput&& out) {
          if (self->service_) self->service_->deliver(std::move(out));
          else self->tm_->on_output(std::move(out));
        }));
    if (s->ep_ranks_) s->schedulers_.back()->set_step_sync(s->ep_ranks_->sync(static_cast<int>(rank)));
    s->local_ranks_.push_back(std::make_unique<LocalRank>(s->schedulers_.back().get()));
  }
  log::info("max_total_num_tokens={}, chunked_prefill_size={}, max_prefill_tokens={}, max_running_requests={}, context_len={}{}",
            s->schedulers_[0]->max_total_num_tokens(), a.chunked_prefill_size, a.max_prefill_tokens,
            a.max_running_requests, a.context_length, avail);
  PDSERVE_RETURN_IF_ERROR(s->create_node_links());
  if (!s->is_front()) return s;  // no HTTP front, tokenizer manager or metrics on the other nodes
  std::vector<const RankHandle*> craw(s->ranks_.begin(), s->ranks_.end());
  s->tm_ = std::make_unique<TokenizerManager>(s->tokenizer_, s->ranks_, a.served_model_name, a.context_length);
  if (s->disagg_) s->tm_->set_disagg(s->disagg_->mode(), a.disaggregation_bootstrap_port);
  s->tm_->set_dp_follows_bootstrap_room(a.compat.dp_follows_bootstrap_room());
  if (a.enable_metrics) {
    s->metrics_ = std::make_unique<Metrics>(a.served_model_name, craw);
    s->tm_->set_metrics(s->metrics_.get());
    if (s->disagg_) s->metrics_->set_transfer_source([self] { return self->disagg_->drain_samples(); });
    if (s->experts_ && (s->experts_->eplb() || s->experts_->balance_metrics()))
      s->metrics_->set_extra_source([self](const std::string& labels) { return self->experts_->render_metrics(labels); });
  }
  http::ServerOptions ho;
  ho.host = a.host;
  ho.port = static_cast<uint16_t>(a.port);
  ho.io_threads = 2;
  ho.max_body_bytes = static_cast<size_t>(a.max_body_bytes);
  auto ms = [](double seconds) { return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)); };
  ho.header_timeout = ms(a.http_header_timeout);
  ho.body_timeout = ms(a.http_body_timeout);
  ho.idle_timeout = ms(a.http_idle_timeout);
  ho.write_timeout = ms(a.http_write_timeout);
  ho.max_queued_bytes = static_cast<size_t>(a.http_max_queued_bytes);
  ho.error_body = [](int status, std::string_view msg) { return error_body(status, std::string(msg)).dump(); };
  s->http_ = std::make_unique<http::Server>(ho);
  s->register_routes();
  return s;
}

ModelServer::~ModelServer() { shutdown(); }

Status ModelServer::start() {
  std::vector<scheduler::Scheduler*> local;
  for (auto& s : schedulers_) local.push_back(s.get());
  RankPlacement where;
  where.first_rank = static_cast<int>(args_.first_local_rank());
  where.dp_size = static_cast<int>(args_.dp_size);
  where.run_bootstrap = is_front();
  if (args_.nnodes > 1) {
    where.bootstrap_host = parallel::parse_host_port(args_.dist_init_addr)->first;
    where.advertise_host = node_ip_;
  }
  // Node 0's bootstrap server is up before the other nodes join, so they can register with it.
  if (disagg_ && is_front()) PDSERVE_RETURN_IF_ERROR(disagg_->start(args_.host, local, kv_views_, where));
  if (args_.nnodes > 1) PDSERVE_RETURN_IF_ERROR(join_nodes());
  if (disagg_ && !is_front()) PDSERVE_RETURN_IF_ERROR(disagg_->start(args_.host, local, kv_views_, where));
  if (shutting_down_) return make_error(ErrorCode::kInternal, "the server stopped while starting");
  for (auto& s : schedulers_) s->start();
  // As SGLang's watchdog: a batch that runs longer than --watchdog-timeout means the server is hung
  // (a stuck kernel or collective); crash loudly so a supervisor restarts it rather than serving
  // nothing forever.
  watchdog_ = std::thread([this] {
    while (!shutting_down_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      for (auto& s : schedulers_)
        if (s->current_batch_seconds() > args_.watchdog_timeout) {
          log::error("Scheduler watchdog timeout (self.watchdog_timeout={}, self.soft=False)", args_.watchdog_timeout);
          std::fflush(nullptr);
          std::abort();
        }
    }
  });
  if (!is_front()) {
    log::info("Node {} runs DP ranks {}..{} for node 0 at {}", args_.node_rank, args_.first_local_rank(),
              args_.first_local_rank() + args_.ranks_per_node() - 1, args_.dist_init_addr);
    return ok_status();
  }
  if (args_.nnodes > 1) PDSERVE_RETURN_IF_ERROR(wait_for_remote_ranks());
  PDSERVE_RETURN_IF_ERROR(http_->start());
  if (!args_.skip_server_warmup) {
    // As SGLang: one real request through the HTTP front before declaring readiness.
    http::Client client;
    const std::string url = "http://" + std::string(args_.host == "0.0.0.0" ? "127.0.0.1" : args_.host == "::" ? "[::1]" : args_.host) +
                            ":" + std::to_string(port()) + "/generate";
    http::Headers h{{"Content-Type", "application/json"}};
    if (!args_.api_key.empty()) h.add("Authorization", "Bearer " + args_.api_key);
    std::string body = R"({"input_ids": [0, 1, 2, 3], "sampling_params": {"max_new_tokens": 8, "temperature": 0}})";
    // PD: one fake-host request per DP rank (no peer is needed), as SGLang's PD warmup.
    if (disagg_) {
      log::info("Start of pd disaggregation warmup ...");
      body = disagg_->warmup_body(args_.dp_size);
    }
    auto r = client.request("POST", url, body, h, std::chrono::seconds(600));
    if (!r || r->status != 200)
      return make_error(ErrorCode::kInternal, "warmup request failed: {}", r ? r->body : r.error().message());
    if (disagg_)
      log::info("End of {} disaggregation mode warmup with status {}, resp: {}", args_.disaggregation_mode, r->status, r->body);
  }
  ready_ = true;
  log::info("The server is fired up and ready to roll!");
  return ok_status();
}

void ModelServer::wait() {
  if (http_) {
    http_->wait();
    // The front stops when shutdown() (maybe on another thread) closes it: return only once that
    // shutdown finished, so that nothing is torn down under it.
    shutdown();
  }
  std::unique_lock lk(done_mu_);
  done_cv_.wait(lk, [this] { return done_; });
}

void ModelServer::shutdown(const std::string& reason) {
  if (shutting_down_.exchange(true)) return;
  ready_ = false;
  // Abort everything first so each client gets a final answer, then close the connections.
  const std::string message = reason.empty() ? "server shutting down" : "server shutting down: " + reason;
  if (remote_) remote_->finish_all(message);
  for (auto& s : schedulers_) s->stop(message);
  if (group_) group_->leave(message);  // the other nodes stop too
  if (disagg_) disagg_->stop();
  if (http_) http_->stop(std::chrono::milliseconds(3000));
  if (service_) service_->stop();
  if (remote_) remote_->stop();
  if (watchdog_.joinable() && watchdog_.get_id() != std::this_thread::get_id()) watchdog_.join();
  {
    std::lock_guard lk(done_mu_);
    done_ = true;
  }
  done_cv_.notify_all();
}

std::vector<nlohmann::json> ModelServer::fan_out(const std::string& command, const nlohmann::json& args) {
  std::vector<std::future<nlohmann::json>> futures;
  for (auto* s : ranks_) futures.push_back(s->control(command, args));
  std::vector<nlohmann::json> out;
  for (auto& f : futures) out.push_back(f.get());
  return out;
}

nlohmann::json ModelServer::model_info() const {
  return {{"model_path", args_.model_path},
          {"tokenizer_path", args_.tokenizer_path.empty() ? args_.model_path : args_.tokenizer_path},
          {"is_generation", true},
          {"preferred_sampling_params", nullptr},
          {"weight_version", "default"},
          {"has_image_understanding", false},
          {"has_audio_understanding", false},
          {"model_type", "deepseek_v3"},
          {"architectures", {"DeepseekV3ForCausalLM"}}};
}

nlohmann::json ModelServer::server_info() {
  nlohmann::json j = args_.to_json();
  j["max_total_num_tokens"] = schedulers_[0]->max_total_num_tokens();
  j["max_req_input_len"] = std::min<int64_t>(args_.context_length - 1, schedulers_[0]->max_req_input_len());
  j["internal_states"] = fan_out("internal_state", {});
  if (disagg_) j["disaggregation"] = disagg_->info();
  j["version"] = "pdserve 0.1.0";
  return j;
}

std::function<int()> add_serve_command(CLI::App& root) {
  auto args = std::make_shared<ServerArgs>();
  CLI::App* app = root.add_subcommand("serve", "Run a model server with SGLang's HTTP API");
  add_server_flags(*app, *args);
  return [args] {
    try {
      log::init(args->log_level);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      return 2;
    }
    auto server = ModelServer::create(*args);
    if (!server) {
      std::fprintf(stderr, "error: %s\n", server.error().message().c_str());
      return 1;
    }
    ModelServer* s = server->get();
    http::SignalWatcher watcher([s](int signo) {
      log::info("Received {}, shutting down", signo == SIGTERM ? "SIGTERM" : "SIGINT");
      s->shutdown(signo == SIGTERM ? "received SIGTERM" : "received SIGINT");
    });
    if (auto st = s->start(); !st) {
      std::fprintf(stderr, "error: %s\n", st.error().message().c_str());
      s->shutdown();
      return 1;
    }
    s->wait();
    return s->failed() ? 1 : 0;
  };
}

}  // namespace pdserve::server
