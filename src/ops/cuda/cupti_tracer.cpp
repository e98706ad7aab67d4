#include "ops/cuda/cupti_tracer.h"

#ifdef PDSERVE_HAVE_CUDA

#include <cuda_runtime.h>
#include <cupti_activity.h>
#include <cxxabi.h>
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <mutex>

#include "base/logging.h"

namespace pdserve::ops::cuda {

namespace {

int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string demangle(const char* name) {
  if (!name) return "?";
  int status = 0;
  char* d = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  if (status != 0 || !d) return name;
  std::string out(d);
  std::free(d);
  return out;
}

// The CUPTI entry points we use, resolved from the dlopen'ed library.
struct CuptiApi {
  decltype(&cuptiActivityEnable) enable = nullptr;
  decltype(&cuptiActivityDisable) disable = nullptr;
  decltype(&cuptiActivityRegisterCallbacks) register_callbacks = nullptr;
  decltype(&cuptiActivityFlushAll) flush_all = nullptr;
  decltype(&cuptiActivityGetNextRecord) next_record = nullptr;
  decltype(&cuptiGetTimestamp) timestamp = nullptr;
  decltype(&cuptiGetResultString) result_string = nullptr;
};

// Process-wide state: one CUPTI activity stream shared by every session. Two locks: `control_mu`
// orders sessions starting and stopping (and the library calls that enable, flush and disable),
// `mu` guards the records, which CUPTI's buffer callback appends from its own thread or from
// inside a flush; no CUPTI call is made while `mu` is held.
struct Shared {
  std::mutex control_mu;
  std::mutex mu;
  bool loaded = false;
  std::string load_error;
  CuptiApi api;
  int sessions = 0;                // under control_mu
  int64_t cupti_to_steady_ns = 0;  // steady = cupti + this; under mu
  std::vector<KernelRecord> records;  // under mu
};

Shared& shared() {
  static Shared* s = new Shared();  // never destroyed: CUPTI may call back during exit
  return *s;
}

constexpr size_t kBufferBytes = 8 << 20;

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = *buffer ? kBufferBytes : 0;
  *max_records = 0;  // as many as fit
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  Shared& s = shared();
  std::vector<KernelRecord> got;
  CUpti_Activity* rec = nullptr;
  while (s.api.next_record && s.api.next_record(buffer, valid, &rec) == CUPTI_SUCCESS) {
    if (rec->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL && rec->kind != CUPTI_ACTIVITY_KIND_KERNEL) continue;
    // The leading fields (through graphId) have the same layout in every CUpti_ActivityKernel
    // version CUDA 13's CUPTI can deliver.
    const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(rec);
    KernelRecord r;
    r.name = demangle(k->name);
    r.start_ns = static_cast<int64_t>(k->start);
    r.end_ns = static_cast<int64_t>(k->end);
    r.device = k->deviceId;
    r.stream = k->streamId;
    r.correlation = k->correlationId;
    r.graph = k->graphId;
    got.push_back(std::move(r));
  }
  std::free(buffer);
  std::lock_guard<std::mutex> lock(s.mu);
  for (auto& r : got) {
    r.start_ns += s.cupti_to_steady_ns;
    r.end_ns += s.cupti_to_steady_ns;
    s.records.push_back(std::move(r));
  }
}

// Loads libcupti once (under control_mu); the error is kept and repeated to later callers.
bool load_locked(Shared& s) {
  if (s.loaded) return true;
  if (!s.load_error.empty()) return false;
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("PDSERVE_CUPTI_LIBRARY"); env && *env) candidates.push_back(env);
  for (const char* c : {"libcupti.so.13", "libcupti.so", "/usr/local/cuda/extras/CUPTI/lib64/libcupti.so",
                        "/usr/local/cuda/lib64/libcupti.so"})
    candidates.emplace_back(c);
  void* lib = nullptr;
  std::string tried;
  for (const auto& c : candidates) {
    lib = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib) break;
    tried += (tried.empty() ? "" : ", ") + c;
  }
  if (!lib) {
    s.load_error = "libcupti not found (tried " + tried + "; set PDSERVE_CUPTI_LIBRARY)";
    return false;
  }
  auto sym = [&](auto& fn, const char* name) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
    return fn != nullptr;
  };
  CuptiApi a;
  if (!sym(a.enable, "cuptiActivityEnable") || !sym(a.disable, "cuptiActivityDisable") ||
      !sym(a.register_callbacks, "cuptiActivityRegisterCallbacks") || !sym(a.flush_all, "cuptiActivityFlushAll") ||
      !sym(a.next_record, "cuptiActivityGetNextRecord") || !sym(a.timestamp, "cuptiGetTimestamp") ||
      !sym(a.result_string, "cuptiGetResultString")) {
    s.load_error = "libcupti lacks an activity API symbol";
    return false;
  }
  s.api = a;
  if (CUptiResult r = s.api.register_callbacks(buffer_requested, buffer_completed); r != CUPTI_SUCCESS) {
    const char* text = nullptr;
    s.api.result_string(r, &text);
    s.load_error = std::string("cuptiActivityRegisterCallbacks: ") + (text ? text : "error");
    return false;
  }
  s.loaded = true;
  return true;
}

std::string cupti_error(const CuptiApi& api, const char* what, CUptiResult r) {
  const char* text = nullptr;
  api.result_string(r, &text);
  return std::string(what) + ": " + (text ? text : "CUPTI error " + std::to_string(static_cast<int>(r)));
}

}  // namespace

Result<std::unique_ptr<KernelTracer>> KernelTracer::start() {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();
    return make_error(ErrorCode::kUnsupported, "no CUDA device on this thread");
  }
  Shared& s = shared();
  std::lock_guard<std::mutex> control(s.control_mu);
  if (!load_locked(s)) return make_error(ErrorCode::kUnsupported, "{}", s.load_error);
  if (s.sessions == 0) {
    // CONCURRENT_KERNEL rather than KERNEL: the latter serializes kernels, changing the timings.
    if (CUptiResult r = s.api.enable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL); r != CUPTI_SUCCESS)
      return make_error(ErrorCode::kUnsupported, "{}", cupti_error(s.api, "cuptiActivityEnable", r));
    // The two clocks read back to back: the offset maps CUPTI's timestamps to steady_clock.
    uint64_t cupti_now = 0;
    const int64_t before = steady_ns();
    const CUptiResult tr = s.api.timestamp(&cupti_now);
    const int64_t after = steady_ns();
    if (tr != CUPTI_SUCCESS) {
      s.api.disable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
      return make_error(ErrorCode::kUnsupported, "{}", cupti_error(s.api, "cuptiGetTimestamp", tr));
    }
    std::lock_guard<std::mutex> lock(s.mu);
    s.cupti_to_steady_ns = (before + after) / 2 - static_cast<int64_t>(cupti_now);
    s.records.clear();
  }
  ++s.sessions;
  return std::unique_ptr<KernelTracer>(new KernelTracer(device, steady_ns()));
}

std::vector<KernelRecord> KernelTracer::stop() {
  if (stopped_) return {};
  stopped_ = true;
  Shared& s = shared();
  std::lock_guard<std::mutex> control(s.control_mu);
  // Without `mu`: the flush calls buffer_completed on this thread, which takes it.
  if (CUptiResult r = s.api.flush_all(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED); r != CUPTI_SUCCESS)
    log::warning("{}", cupti_error(s.api, "cuptiActivityFlushAll", r));
  std::vector<KernelRecord> mine;
  const bool last = --s.sessions == 0;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    for (const auto& r : s.records)
      if (static_cast<int>(r.device) == device_ && r.start_ns >= start_ns_) mine.push_back(r);
    if (last) s.records.clear();
  }
  if (last) s.api.disable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
  std::sort(mine.begin(), mine.end(), [](const KernelRecord& a, const KernelRecord& b) { return a.start_ns < b.start_ns; });
  return mine;
}

KernelTracer::~KernelTracer() { stop(); }

}  // namespace pdserve::ops::cuda

#else  // !PDSERVE_HAVE_CUDA

namespace pdserve::ops::cuda {

Result<std::unique_ptr<KernelTracer>> KernelTracer::start() {
  return make_error(ErrorCode::kUnsupported, "this build has no CUDA (PDSERVE_CUDA=OFF)");
}
std::vector<KernelRecord> KernelTracer::stop() { return {}; }
KernelTracer::~KernelTracer() = default;

}  // namespace pdserve::ops::cuda

#endif
