// cuda-ipc: KV transfer between two GPUs of one host. The decode exports a CUDA IPC handle for
// each layer buffer at registration (with the buffer's offset inside its allocation, since a handle
// names the whole allocation); the prefill opens them once per session and copies device to device
// on its own stream (NVLink/PCIe peer copies), so no byte passes through host memory. Completion is
// the DONE message as for every backend. Compiled only in CUDA builds; tested by
// cuda_ipc_self_test() on a 2-GPU machine (`pd_bench --cuda-ipc-self-test`).
#if defined(PDSERVE_HAVE_CUDA)

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>

#include <cuda.h>
#include <cuda_runtime.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "disagg/transfer_backend.h"

namespace pdserve::disagg {

namespace {

std::string cuda_error(cudaError_t e, const char* what) { return fmt::format("{}: {}", what, cudaGetErrorString(e)); }

std::string to_hex(const void* p, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) s += fmt::format("{:02x}", static_cast<const unsigned char*>(p)[i]);
  return s;
}

bool from_hex(const std::string& s, void* out, size_t n) {
  if (s.size() != 2 * n) return false;
  for (size_t i = 0; i < n; ++i) static_cast<unsigned char*>(out)[i] = static_cast<unsigned char>(std::stoi(s.substr(2 * i, 2), nullptr, 16));
  return true;
}

// Offset of `p` inside its allocation, through the driver entry point (no link-time libcuda).
Result<size_t> allocation_offset(void* p) {
  using Fn = CUresult (*)(CUdeviceptr*, size_t*, CUdeviceptr);
  static Fn fn = nullptr;
  if (!fn) {
    void* sym = nullptr;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &sym, 12000, cudaEnableDefault, &q) != cudaSuccess || !sym)
      return make_error(ErrorCode::kUnsupported, "cuMemGetAddressRange is not available");
    fn = reinterpret_cast<Fn>(sym);
  }
  CUdeviceptr base = 0;
  size_t size = 0;
  if (fn(&base, &size, reinterpret_cast<CUdeviceptr>(p)) != CUDA_SUCCESS)
    return make_error(ErrorCode::kIo, "cuMemGetAddressRange failed for a KV buffer");
  return static_cast<size_t>(reinterpret_cast<CUdeviceptr>(p) - base);
}

class CudaIpcBackend final : public TransferBackend {
 public:
  explicit CudaIpcBackend(scheduler::KvBufferView local) : local_(std::move(local)) {
    cudaPointerAttributes attr{};
    if (!local_.layer_ptrs.empty() && cudaPointerGetAttributes(&attr, local_.layer_ptrs[0]) == cudaSuccess) device_ = attr.device;
  }
  ~CudaIpcBackend() override {
    for (auto& [s, p] : peers_) close(p);
    if (stream_) cudaStreamDestroy(stream_);
  }
  const char* name() const override { return "cuda-ipc"; }

  Result<std::string> local_descriptor() override {
    cudaSetDevice(device_);
    nlohmann::json layers = nlohmann::json::array();
    for (void* p : local_.layer_ptrs) {
      cudaIpcMemHandle_t h;
      if (auto e = cudaIpcGetMemHandle(&h, p); e != cudaSuccess) return make_error(ErrorCode::kIo, "{}", cuda_error(e, "cudaIpcGetMemHandle"));
      PDSERVE_ASSIGN_OR_RETURN(size_t off, allocation_offset(p));
      layers.push_back({{"handle", to_hex(&h, sizeof(h))}, {"offset", off}});
    }
    return nlohmann::json{{"device", device_}, {"layers", layers}}.dump();
  }

  Status open_peer(const std::string& session, const std::string& descriptor) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (peers_.count(session)) return ok_status();
    cudaSetDevice(device_);
    Peer peer;
    try {
      const auto j = nlohmann::json::parse(descriptor);
      for (const auto& l : j.at("layers")) {
        cudaIpcMemHandle_t h;
        if (!from_hex(l.at("handle").get<std::string>(), &h, sizeof(h)))
          return make_error(ErrorCode::kInvalidArgument, "bad IPC handle from decode {}", session);
        void* base = nullptr;
        if (auto e = cudaIpcOpenMemHandle(&base, h, cudaIpcMemLazyEnablePeerAccess); e != cudaSuccess) {
          close(peer);
          return make_error(ErrorCode::kIo, "decode {}: {} (are both GPUs on this host?)", session,
                            cuda_error(e, "cudaIpcOpenMemHandle"));
        }
        peer.bases.push_back(base);
        peer.layers.push_back(static_cast<char*>(base) + l.at("offset").get<size_t>());
      }
    } catch (const std::exception& e) {
      close(peer);
      return make_error(ErrorCode::kInvalidArgument, "bad cuda-ipc descriptor from decode {}: {}", session, e.what());
    }
    if (peer.layers.size() != local_.layer_ptrs.size()) {
      close(peer);
      return make_error(ErrorCode::kInvalidArgument, "decode {} exported {} layer buffers, this prefill has {}", session,
                        peer.layers.size(), local_.layer_ptrs.size());
    }
    peers_[session] = std::move(peer);
    return ok_status();
  }

  void close_peer(const std::string& session) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = peers_.find(session);
    if (it == peers_.end()) return;
    close(it->second);
    peers_.erase(it);
  }

  Result<std::string> write(const std::string& session, std::span<const Block> blocks) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = peers_.find(session);
    if (it == peers_.end()) return make_error(ErrorCode::kInvalidArgument, "decode {} has no open IPC handles", session);
    cudaSetDevice(device_);
    if (!stream_) cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking);
    for (const auto& b : blocks) {
      const auto l = static_cast<size_t>(b.layer);
      if (l >= it->second.layers.size()) return make_error(ErrorCode::kInvalidArgument, "block layer {} out of range", b.layer);
      auto e = cudaMemcpyAsync(static_cast<char*>(it->second.layers[l]) + b.dst_offset,
                               static_cast<const char*>(local_.layer_ptrs[l]) + b.src_offset, static_cast<size_t>(b.len),
                               cudaMemcpyDeviceToDevice, stream_);
      if (e != cudaSuccess) return make_error(ErrorCode::kIo, "{}", cuda_error(e, "cudaMemcpyAsync (cuda-ipc)"));
    }
    // The chunk is complete before DONE can follow it on the control channel.
    if (auto e = cudaStreamSynchronize(stream_); e != cudaSuccess)
      return make_error(ErrorCode::kIo, "{}", cuda_error(e, "cudaStreamSynchronize (cuda-ipc)"));
    return std::string();
  }

  Status apply(std::span<const Block>, std::string_view payload) override {
    if (!payload.empty()) return make_error(ErrorCode::kInvalidArgument, "cuda-ipc received a host payload");
    return ok_status();
  }

 private:
  struct Peer {
    std::vector<void*> bases, layers;
  };
  static void close(Peer& p) {
    for (void* b : p.bases) cudaIpcCloseMemHandle(b);
    p.bases.clear();
    p.layers.clear();
  }
  scheduler::KvBufferView local_;
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  std::mutex mu_;
  std::map<std::string, Peer> peers_;
};

}  // namespace

std::unique_ptr<TransferBackend> make_cuda_ipc_backend(const scheduler::KvBufferView& local) {
  return std::make_unique<CudaIpcBackend>(local);
}

int cuda_ipc_self_test(int64_t bytes) {
  // The child (decode, GPU 1) exports a buffer; the parent (prefill, GPU 0) writes it through the
  // backend. Forked before either process touches CUDA.
  int to_parent[2], to_child[2];
  if (pipe(to_parent) != 0 || pipe(to_child) != 0) return 1;
  const pid_t pid = fork();
  if (pid == 0) {
    cudaSetDevice(1);
    void* dst = nullptr;
    if (cudaMalloc(&dst, static_cast<size_t>(bytes)) != cudaSuccess) _exit(2);
    cudaMemset(dst, 0, static_cast<size_t>(bytes));
    scheduler::KvBufferView v;
    v.layer_ptrs = {dst};
    v.bytes_per_token = bytes;
    v.page_size = 1;
    v.num_pages = 1;
    v.on_device = true;
    auto desc = CudaIpcBackend(v).local_descriptor();
    if (!desc) _exit(3);
    const std::string d = *desc + "\n";
    if (write(to_parent[1], d.data(), d.size()) != static_cast<ssize_t>(d.size())) _exit(4);
    char c;
    if (read(to_child[0], &c, 1) != 1) _exit(5);
    std::vector<unsigned char> host(static_cast<size_t>(bytes));
    cudaMemcpy(host.data(), dst, host.size(), cudaMemcpyDeviceToHost);
    for (size_t i = 0; i < host.size(); ++i)
      if (host[i] != static_cast<unsigned char>(i * 7 + 3)) _exit(6);
    _exit(0);
  }
  std::string desc;
  for (char c; read(to_parent[0], &c, 1) == 1 && c != '\n';) desc += c;
  cudaSetDevice(0);
  void* src = nullptr;
  cudaMalloc(&src, static_cast<size_t>(bytes));
  std::vector<unsigned char> host(static_cast<size_t>(bytes));
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<unsigned char>(i * 7 + 3);
  cudaMemcpy(src, host.data(), host.size(), cudaMemcpyHostToDevice);
  scheduler::KvBufferView v;
  v.layer_ptrs = {src};
  v.bytes_per_token = bytes;
  v.page_size = 1;
  v.num_pages = 1;
  v.on_device = true;
  CudaIpcBackend backend(v);
  if (auto st = backend.open_peer("self-test", desc); !st) {
    std::fprintf(stderr, "cuda-ipc self-test: %s\n", st.error().message().c_str());
    kill(pid, SIGKILL);
    return 1;
  }
  const Block block{0, 0, 0, 0, bytes};
  const int iters = 20;
  (void)backend.write("self-test", std::span<const Block>(&block, 1));  // warm up
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) (void)backend.write("self-test", std::span<const Block>(&block, 1));
  const double ipc_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
  // Baseline measured in the same run: cudaMemcpyPeer of the same bytes into GPU 1.
  void* peer = nullptr;
  cudaSetDevice(1);
  cudaMalloc(&peer, static_cast<size_t>(bytes));
  cudaSetDevice(0);
  cudaMemcpyPeer(peer, 1, src, 0, static_cast<size_t>(bytes));
  cudaDeviceSynchronize();
  t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) cudaMemcpyPeer(peer, 1, src, 0, static_cast<size_t>(bytes));
  cudaDeviceSynchronize();
  const double peer_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
  backend.close_peer("self-test");
  (void)!write(to_child[1], "x", 1);
  int status = 0;
  waitpid(pid, &status, 0);
  const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  char name0[256] = {0}, name1[256] = {0};
  cudaDeviceProp p0{}, p1{};
  if (cudaGetDeviceProperties(&p0, 0) == cudaSuccess) std::snprintf(name0, sizeof(name0), "%s", p0.name);
  if (cudaGetDeviceProperties(&p1, 1) == cudaSuccess) std::snprintf(name1, sizeof(name1), "%s", p1.name);
  std::printf("cuda-ipc self-test: %s -> %s, %lld bytes\n", name0, name1, static_cast<long long>(bytes));
  std::printf("| path | GB/s |\n|---|---|\n| cuda-ipc backend write | %.1f |\n| cudaMemcpyPeer (baseline) | %.1f |\n",
              static_cast<double>(bytes) / ipc_s / 1e9, static_cast<double>(bytes) / peer_s / 1e9);
  std::printf("ratio %.0f%% of cudaMemcpyPeer; data check in the decode process: %s\n", 100.0 * peer_s / ipc_s, ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}

}  // namespace pdserve::disagg

#endif  // PDSERVE_HAVE_CUDA
