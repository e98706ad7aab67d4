#include "scheduler/step_profiler.h"

#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <set>

#include <fmt/format.h>

#include "base/json.h"
#include "base/logging.h"

namespace pdserve::scheduler {

using nlohmann::json;

namespace {

double steady_us() {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

const std::set<std::string>& known_activities() {
  static const std::set<std::string> k{"CPU", "GPU", "MEM", "CUDA_PROFILER", "RPD"};
  return k;
}

}  // namespace

std::string default_profiler_dir() {
  for (const char* name : {"SGLANG_TORCH_PROFILER_DIR", "PDSERVE_TORCH_PROFILER_DIR"}) {
    const char* v = std::getenv(name);
    if (v && *v) return v;
  }
  return "/tmp";
}

namespace {

// The client picks where the server writes: only inside the profiler root, so that a request
// cannot make the server write anywhere else on its disk (`..`, absolute paths, symlinks out).
Status check_inside_root(const std::string& dir, const std::string& root, const char* src) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path r = fs::weakly_canonical(fs::absolute(root, ec), ec);
  const fs::path d = fs::weakly_canonical(fs::absolute(dir, ec), ec);
  const fs::path rel = d.lexically_relative(r);
  if (ec || rel.empty() || *rel.begin() == "..")
    return make_error(ErrorCode::kInvalidArgument,
                      "{}: field 'output_dir' must be inside the profiler folder {} (SGLANG_TORCH_PROFILER_DIR), got '{}'",
                      src, root, dir);
  return ok_status();
}

}  // namespace

Result<ProfileRequest> parse_profile_request(const json& body, const std::string& default_dir) {
  const char* src = "/start_profile body";
  if (!body.is_null() && !body.is_object())
    return make_error(ErrorCode::kInvalidArgument, "{} must be a JSON object", src);
  // SGLang's ProfileReqInput fields; anything else is a typo the user should hear about.
  static const std::set<std::string> fields{"output_dir", "start_step", "num_steps", "activities",
                                            "profile_by_stage", "with_stack", "record_shapes",
                                            "merge_profiles", "profile_prefix", "profile_id"};
  ProfileRequest r;
  r.output_dir = default_dir;
  if (body.is_null()) return r;
  for (const auto& [k, v] : body.items())
    if (!fields.count(k)) return make_error(ErrorCode::kInvalidArgument, "{}: unknown field '{}'", src, k);
  PDSERVE_ASSIGN_OR_RETURN(r.output_dir, get_field_or<std::string>(body, "output_dir", src, default_dir));
  PDSERVE_ASSIGN_OR_RETURN(r.start_step, get_optional_field<int64_t>(body, "start_step", src));
  PDSERVE_ASSIGN_OR_RETURN(r.num_steps, get_optional_field<int64_t>(body, "num_steps", src));
  if (r.start_step && *r.start_step < 0)
    return make_error(ErrorCode::kInvalidArgument, "{}: field 'start_step' must be >= 0", src);
  if (r.num_steps && *r.num_steps <= 0)
    return make_error(ErrorCode::kInvalidArgument, "{}: field 'num_steps' must be > 0", src);
  PDSERVE_ASSIGN_OR_RETURN(r.activities,
                           get_field_or<std::vector<std::string>>(body, "activities", src, r.activities));
  for (const auto& a : r.activities)
    if (!known_activities().count(a))
      return make_error(ErrorCode::kInvalidArgument, "{}: unknown activity '{}' (use CPU, GPU, MEM, CUDA_PROFILER, RPD)",
                        src, a);
  PDSERVE_ASSIGN_OR_RETURN(r.profile_by_stage, get_field_or<bool>(body, "profile_by_stage", src, false));
  PDSERVE_ASSIGN_OR_RETURN(r.with_stack, get_field_or<bool>(body, "with_stack", src, true));
  PDSERVE_ASSIGN_OR_RETURN(r.record_shapes, get_field_or<bool>(body, "record_shapes", src, true));
  PDSERVE_ASSIGN_OR_RETURN(bool merge, get_field_or<bool>(body, "merge_profiles", src, false));
  (void)merge;  // accepted for compatibility: every rank's file is written either way
  PDSERVE_ASSIGN_OR_RETURN(r.profile_prefix, get_field_or<std::string>(body, "profile_prefix", src, ""));
  if (r.output_dir.empty()) r.output_dir = default_dir;
  PDSERVE_RETURN_IF_ERROR(check_inside_root(r.output_dir, default_dir, src));
  // The prefix starts each trace file's name: a name, not a path.
  if (r.profile_prefix.find('/') != std::string::npos || r.profile_prefix.find('\0') != std::string::npos ||
      r.profile_prefix.rfind("..", 0) == 0)
    return make_error(ErrorCode::kInvalidArgument, "{}: field 'profile_prefix' must be a file name prefix (no '/', no leading '..')", src);
  return r;
}

std::string trace_file_name(const ProfileRequest& req, const TraceRank& rank, const std::string& stage) {
  std::string name = req.profile_prefix + req.profile_id + "-TP-" + std::to_string(rank.tp_rank);
  if (rank.dp_rank) name += "-DP-" + std::to_string(*rank.dp_rank);
  if (rank.ep_size > 1) name += "-EP-" + std::to_string(rank.ep_rank);
  if (!stage.empty()) name += "-" + stage;
  return name + ".trace.json.gz";
}

Status write_gzip_file(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp" + std::to_string(::getpid());
  gzFile f = gzopen(tmp.c_str(), "wb6");
  if (!f) return make_error(ErrorCode::kIo, "cannot create {}", tmp);
  size_t off = 0;
  while (off < text.size()) {
    const unsigned n = static_cast<unsigned>(std::min<size_t>(text.size() - off, 1u << 30));
    if (gzwrite(f, text.data() + off, n) != static_cast<int>(n)) {
      gzclose(f);
      std::filesystem::remove(tmp);
      return make_error(ErrorCode::kIo, "writing {} failed", tmp);
    }
    off += n;
  }
  if (gzclose(f) != Z_OK) return make_error(ErrorCode::kIo, "closing {} failed", tmp);
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return make_error(ErrorCode::kIo, "renaming {} to {}: {}", tmp, path, ec.message());
  return ok_status();
}

json to_json(const ProfileRequest& r) {
  json j{{"profile_id", r.profile_id},     {"output_dir", r.output_dir},
         {"activities", r.activities},     {"profile_by_stage", r.profile_by_stage},
         {"with_stack", r.with_stack},     {"record_shapes", r.record_shapes},
         {"profile_prefix", r.profile_prefix}};
  j["start_step"] = r.start_step ? json(*r.start_step) : json(nullptr);
  j["num_steps"] = r.num_steps ? json(*r.num_steps) : json(nullptr);
  return j;
}

ProfileRequest profile_request_from_json(const json& j) {
  ProfileRequest r;
  r.profile_id = j.value("profile_id", "");
  r.output_dir = j.value("output_dir", default_profiler_dir());
  if (j.contains("start_step") && j["start_step"].is_number_integer()) r.start_step = j["start_step"].get<int64_t>();
  if (j.contains("num_steps") && j["num_steps"].is_number_integer()) r.num_steps = j["num_steps"].get<int64_t>();
  if (j.contains("activities") && j["activities"].is_array()) r.activities = j["activities"].get<std::vector<std::string>>();
  r.profile_by_stage = j.value("profile_by_stage", false);
  r.with_stack = j.value("with_stack", true);
  r.record_shapes = j.value("record_shapes", true);
  r.profile_prefix = j.value("profile_prefix", "");
  return r;
}

StepProfiler::StepProfiler(TraceRank rank, std::string process_name)
    : rank_(rank),
      process_name_(std::move(process_name)),
      epoch_us_(std::chrono::duration<double, std::micro>(std::chrono::system_clock::now().time_since_epoch()).count()),
      steady0_us_(steady_us()) {}

double StepProfiler::now_us() const { return epoch_us_ + (steady_us() - steady0_us_); }

json StepProfiler::control(const std::string& command, const json& args) {
  if (command == "start_profile") {
    auto st = start(profile_request_from_json(args));
    if (!st) return {{"success", false}, {"message", st.error().message()}};
    return {{"success", true}, {"message", "Start profiling."}};
  }
  if (command == "stop_profile") {
    if (stages_.empty())
      return {{"success", false}, {"message", "Profiling is not in progress. Call /start_profile first."}};
    const auto files = stop_all();
    return {{"success", true}, {"message", "Stop profiling."}, {"files", files}};
  }
  return {{"success", false}, {"message", "unknown profiler command '" + command + "'"}};
}

Status StepProfiler::start(ProfileRequest req) {
  if (!stages_.empty())
    return make_error(ErrorCode::kInvalidArgument, "Profiling is already in progress. Call /stop_profile first.");
  std::error_code ec;
  std::filesystem::create_directories(req.output_dir, ec);
  if (ec) return make_error(ErrorCode::kIo, "cannot create the profiler folder {}: {}", req.output_dir, ec.message());
  req_ = std::move(req);
  auto make = [&](std::string name) {
    Stage s;
    s.name = std::move(name);
    if (req_.start_step && !req_.profile_by_stage) {
      s.start_ct = std::max(*req_.start_step, forward_ct_ + 1);
      if (req_.num_steps) s.target_ct = *s.start_ct + *req_.num_steps;
    } else if (req_.num_steps && !req_.profile_by_stage) {
      s.target_ct = forward_ct_ + *req_.num_steps;
    }
    return s;
  };
  if (req_.profile_by_stage) {
    stages_.push_back(make("EXTEND"));
    stages_.push_back(make("DECODE"));
  } else {
    stages_.push_back(make(""));
  }
  for (auto& s : stages_)
    if (!s.start_ct) begin_recording(s);
  if (stages_.front().recording)
    log::info("Profiling starts. Traces will be saved to: {} (with profile id: {})", req_.output_dir, req_.profile_id);
  return ok_status();
}

std::vector<std::string> StepProfiler::stop_all() {
  std::vector<std::string> files;
  if (!stages_.empty()) log::info("Stop profiling...");
  for (auto& s : stages_) {
    auto f = finish(s);
    if (!f.empty()) files.push_back(std::move(f));
  }
  stages_.clear();
  log::info("Profiling done. Traces are saved to: {}", req_.output_dir);
  return files;
}

std::string StepProfiler::finish(Stage& s) {
  const int pid = static_cast<int>(::getpid());
  json events = json::array();
  const std::string label = process_name_ + " TP" + std::to_string(rank_.tp_rank) +
                            (rank_.dp_rank ? " DP" + std::to_string(*rank_.dp_rank) : "");
  events.push_back({{"ph", "M"}, {"name", "process_name"}, {"pid", pid}, {"tid", rank_.tp_rank}, {"args", {{"name", label}}}});
  events.push_back({{"ph", "M"}, {"name", "thread_name"}, {"pid", pid}, {"tid", rank_.tp_rank},
                    {"args", {{"name", "scheduler" + label.substr(process_name_.size())}}}});
  for (auto& e : s.events) events.push_back(std::move(e));
  append_kernel_events(s, events, pid);
  json doc{{"schemaVersion", 1},
           {"displayTimeUnit", "ms"},
           {"otherData", {{"producer", "pdserve"},
                          {"profile_id", req_.profile_id},
                          {"tp_rank", rank_.tp_rank},
                          {"dp_rank", rank_.dp_rank ? json(*rank_.dp_rank) : json(nullptr)},
                          {"ep_rank", rank_.ep_rank},
                          {"stage", s.name},
                          {"activities", req_.activities}}},
           {"traceEvents", std::move(events)}};
  const std::string path = (std::filesystem::path(req_.output_dir) / trace_file_name(req_, rank_, s.name)).string();
  auto st = write_gzip_file(path, doc.dump(-1, ' ', false, json::error_handler_t::replace));
  if (!st) {
    log::error("writing the trace failed: {}", st.error().message());
    return "";
  }
  return path;
}

bool StepProfiler::stage_matches(const Stage& s, const char* kind) const {
  if (s.name.empty()) return true;
  return (s.name == "EXTEND") == (std::string(kind) == "prefill");
}

void StepProfiler::batch_begin() {
  ++forward_ct_;
  batch_t0_ = now_us();
  batch_kind_ = nullptr;
  forward_dur_ = 0;
  if (stages_.empty()) return;
  // As SGLang's _profile_batch_predicate: the stop check first, then a deferred start.
  Stage& s = stages_.front();
  if (s.name.empty() && s.target_ct && s.recording && forward_ct_ >= *s.target_ct) {
    stop_all();
    return;
  }
  if (s.start_ct && *s.start_ct == forward_ct_ && !s.recording) {
    begin_recording(s);
    log::info("Profiling starts. Traces will be saved to: {} (with profile id: {})", req_.output_dir, req_.profile_id);
  }
}

void StepProfiler::begin_recording(Stage& s) {
  s.recording = true;
  const bool gpu = std::find(req_.activities.begin(), req_.activities.end(), "GPU") != req_.activities.end();
  if (!device_tracing_ || !gpu) return;
  auto t = ops::cuda::KernelTracer::start();
  if (t) {
    s.kernels = std::move(*t);
  } else {
    log::warning("profiler: no GPU kernel timings in this trace: {}", t.error().message());
  }
}

bool StepProfiler::any_recording() const {
  return std::any_of(stages_.begin(), stages_.end(), [](const Stage& s) { return s.recording; });
}

double StepProfiler::trace_us(int64_t steady_ns) const {
  return epoch_us_ + (static_cast<double>(steady_ns) / 1000.0 - steady0_us_);
}

void StepProfiler::forward_begin() {
  spans_.clear();
  // The model's spans cost a branch each unless a capture is on (base/trace_spans.h).
  if (any_recording()) trace::tls_span_buffer = &spans_;
  forward_t0_ = now_us();
}

void StepProfiler::forward_end(const char* kind, int64_t batch_size, int64_t tokens) {
  trace::tls_span_buffer = nullptr;
  forward_dur_ = now_us() - forward_t0_;
  batch_kind_ = kind;
  batch_size_ = batch_size;
  batch_tokens_ = tokens;
}

void StepProfiler::append_span_events(json& events, int pid) const {
  for (const auto& r : spans_.records) {
    if (r.end_ns == 0) continue;  // still open: a forward that threw past its spans
    const bool layer = r.index >= 0;
    // dur from the two rounded ends (epoch µs carry ~0.25 µs of precision): ts + dur is then the
    // end exactly, so a child that ends nanoseconds before its parent never appears to outlast it.
    const double ts = trace_us(r.start_ns), end = trace_us(r.end_ns);
    json e{{"ph", "X"}, {"cat", layer ? "layer" : "op"},
           {"name", layer ? fmt::format("{}.{}", r.name, r.index) : std::string(r.name)},
           {"pid", pid}, {"tid", rank_.tp_rank}, {"ts", ts}, {"dur", end - ts}};
    if (layer) e["args"] = {{"layer", r.index}};
    events.push_back(std::move(e));
  }
}

void StepProfiler::append_kernel_events(Stage& s, json& events, int pid) const {
  if (!s.kernels) return;
  const auto kernels = s.kernels->stop();
  s.kernels.reset();
  // One track per stream, below the scheduler's, as the PyTorch profiler's GPU rows.
  constexpr int kStreamTidBase = 1000000;
  std::set<uint32_t> streams;
  size_t w = 0;
  for (const auto& k : kernels) {
    const double ts = trace_us(k.start_ns), end = trace_us(k.end_ns);
    // Only kernels inside a recorded batch: not those of batches of the other stage's kind.
    while (w < s.batch_windows_us.size() && s.batch_windows_us[w].second < ts) ++w;
    if (w == s.batch_windows_us.size()) break;
    if (end < s.batch_windows_us[w].first) continue;
    streams.insert(k.stream);
    events.push_back({{"ph", "X"}, {"cat", "kernel"}, {"name", k.name}, {"pid", pid},
                      {"tid", kStreamTidBase + static_cast<int>(k.stream)}, {"ts", ts}, {"dur", end - ts},
                      {"args", {{"device", k.device}, {"stream", k.stream}, {"correlation", k.correlation},
                                {"graph", k.graph}}}});
  }
  for (uint32_t st : streams)
    events.push_back({{"ph", "M"}, {"name", "thread_name"}, {"pid", pid}, {"tid", kStreamTidBase + static_cast<int>(st)},
                      {"args", {{"name", fmt::format("GPU stream {}", st)}}}});
}

void StepProfiler::batch_end(bool worked, int64_t running, int64_t queued) {
  trace::tls_span_buffer = nullptr;
  if (stages_.empty() || !worked || !batch_kind_) return;
  const int pid = static_cast<int>(::getpid());
  const double end = now_us();
  json args{{"forward_ct", forward_ct_}, {"batch_kind", batch_kind_}, {"batch_size", batch_size_},
            {"num_tokens", batch_tokens_}, {"running_req", running}, {"queue_req", queued}};
  for (auto it = stages_.begin(); it != stages_.end();) {
    Stage& s = *it;
    if (!s.recording || !stage_matches(s, batch_kind_)) {
      ++it;
      continue;
    }
    s.events.push_back({{"ph", "X"}, {"cat", "scheduler"}, {"name", "run_batch"}, {"pid", pid},
                        {"tid", rank_.tp_rank}, {"ts", batch_t0_}, {"dur", end - batch_t0_}, {"args", args}});
    s.events.push_back({{"ph", "X"}, {"cat", "forward"}, {"name", std::string("forward_") + batch_kind_},
                        {"pid", pid}, {"tid", rank_.tp_rank}, {"ts", forward_t0_}, {"dur", forward_dur_},
                        {"args", args}});
    s.events.push_back({{"ph", "C"}, {"name", "running-req"}, {"pid", pid}, {"tid", rank_.tp_rank},
                        {"ts", batch_t0_}, {"args", {{"running", running}, {"queued", queued}}}});
    append_span_events(s.events, pid);
    s.batch_windows_us.emplace_back(batch_t0_, end);
    ++s.captured;
    // By stage: each stage ends after num_steps batches of its own kind.
    if (!s.name.empty() && req_.num_steps && s.captured >= *req_.num_steps) {
      log::info("Stop profiling-{}...", s.name);
      finish(s);
      it = stages_.erase(it);
      if (stages_.empty()) log::info("Profiling done. Traces are saved to: {}", req_.output_dir);
      continue;
    }
    ++it;
  }
}

}  // namespace pdserve::scheduler
