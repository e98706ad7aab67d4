// Do kernels launched on R streams of one GPU (one per rank thread) run at the same time?
//
// GPU EP with ranks sharing a GPU relies on it: every rank's dispatch kernel spins until every
// peer's has arrived. Each trial here launches on each of R streams a kernel that raises its flag
// and waits (bounded) for all R flags, optionally followed on the same stream by a second such
// kernel (as dispatch is followed by combine); a trial fails when a kernel times out, i.e. some
// kernel did not start until the others had given up. Modes:
//   fresh      R streams created for each trial by one thread, one after another (as the tests do)
//   own        each rank thread creates its own stream for each trial (as the server's ranks do)
//   fixed      R streams created once
//   primed     as fresh, but each stream runs a no-op kernel (and is synchronised) first
//   primed-nosync  the no-op kernel without the synchronisation
// Output: failures per mode, with CUDA_DEVICE_MAX_CONNECTIONS as seen by this process.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

__global__ void meet(unsigned long long* flags, int ranks, int me, unsigned long long epoch, unsigned long long timeout_ns,
                     int* failed) {
  if (threadIdx.x != 0) return;
  unsigned long long t0;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  if (blockIdx.x == 0) asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(flags + me), "l"(epoch) : "memory");
  for (int s = 0; s < ranks; ++s) {
    for (;;) {
      unsigned long long v, t;
      asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(flags + s) : "memory");
      if (v >= epoch) break;
      asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
      if (t - t0 > timeout_ns) {
        atomicExch(failed, 1);
        return;
      }
      __nanosleep(256);
    }
  }
}

__global__ void noop() {}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

struct Probe {
  int ranks, blocks;
  bool second;  // a second meeting kernel after the first on each stream
  unsigned long long* flags = nullptr;  // [2][ranks]
  int* failed = nullptr;
  unsigned long long epoch = 0;

  // One trial on the given streams; stream_of(r) is called on rank r's thread (may create it).
  template <typename StreamOf, typename Release>
  bool trial(StreamOf stream_of, Release release) {
    ++epoch;
    check(cudaMemset(failed, 0, sizeof(int)), "memset");
    check(cudaDeviceSynchronize(), "sync");
    std::vector<std::thread> th;
    for (int r = 0; r < ranks; ++r)
      th.emplace_back([&, r] {
        cudaStream_t s = stream_of(r);
        meet<<<blocks, 32, 0, s>>>(flags, ranks, r, epoch, 200000000ull, failed);
        if (second) meet<<<blocks, 32, 0, s>>>(flags + ranks, ranks, r, epoch, 200000000ull, failed);
        check(cudaStreamSynchronize(s), "stream sync");
        release(r, s);
      });
    for (auto& t : th) t.join();
    int f = 0;
    check(cudaMemcpy(&f, failed, sizeof(int), cudaMemcpyDeviceToHost), "copy");
    return f == 0;
  }
};

}  // namespace

int main(int argc, char** argv) {
  const int ranks = argc > 1 ? std::atoi(argv[1]) : 4;
  const int trials = argc > 2 ? std::atoi(argv[2]) : 200;
  const char* conn = std::getenv("CUDA_DEVICE_MAX_CONNECTIONS");
  check(cudaSetDevice(0), "device");
  Probe p{ranks, 16, true};
  check(cudaMalloc(&p.flags, 2 * ranks * sizeof(unsigned long long)), "malloc");
  check(cudaMemset(p.flags, 0, 2 * ranks * sizeof(unsigned long long)), "memset");
  check(cudaMalloc(&p.failed, sizeof(int)), "malloc");
  std::printf("coschedule probe: %d ranks, %d trials per mode, CUDA_DEVICE_MAX_CONNECTIONS=%s\n", ranks, trials,
              conn ? conn : "(unset: 8)");

  auto create = [] {
    cudaStream_t s;
    check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream");
    return s;
  };
  auto run = [&](const char* mode, auto&& per_trial) {
    int fails = 0;
    for (int t = 0; t < trials; ++t) fails += per_trial() ? 0 : 1;
    std::printf("  %-13s failures %d/%d\n", mode, fails, trials);
  };
  run("fresh", [&] {
    std::vector<cudaStream_t> s(static_cast<size_t>(ranks));
    for (auto& x : s) x = create();
    const bool ok = p.trial([&](int r) { return s[static_cast<size_t>(r)]; }, [](int, cudaStream_t) {});
    for (auto x : s) cudaStreamDestroy(x);
    return ok;
  });
  run("own", [&] {
    return p.trial([&](int) { return create(); }, [](int, cudaStream_t s) { cudaStreamDestroy(s); });
  });
  run("primed", [&] {
    std::vector<cudaStream_t> s(static_cast<size_t>(ranks));
    for (auto& x : s) {
      x = create();
      noop<<<1, 32, 0, x>>>();
      check(cudaStreamSynchronize(x), "prime");
    }
    const bool ok = p.trial([&](int r) { return s[static_cast<size_t>(r)]; }, [](int, cudaStream_t) {});
    for (auto x : s) cudaStreamDestroy(x);
    return ok;
  });
  run("primed-nosync", [&] {
    std::vector<cudaStream_t> s(static_cast<size_t>(ranks));
    for (auto& x : s) {
      x = create();
      noop<<<1, 32, 0, x>>>();
    }
    const bool ok = p.trial([&](int r) { return s[static_cast<size_t>(r)]; }, [](int, cudaStream_t) {});
    for (auto x : s) cudaStreamDestroy(x);
    return ok;
  });
  std::vector<cudaStream_t> fixed(static_cast<size_t>(ranks));
  for (auto& x : fixed) x = create();
  run("fixed", [&] { return p.trial([&](int r) { return fixed[static_cast<size_t>(r)]; }, [](int, cudaStream_t) {}); });
  return 0;
}
