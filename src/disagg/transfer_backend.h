// How KV bytes move once the control channel has paired a prefill rank with a decode rank. The
// backend never changes what the scheduler sees: the same Blocks are planned for every backend,
// and completion is always the DONE message on the control channel.
//   tcp       host memory anywhere: write() gathers the chunk's bytes into a payload that travels
//             as a DATA message on the ZeroMQ TCP connection; the decode's apply() scatters it.
//   fake      moves nothing (warmup, health checks, protocol tests).
//   cuda-ipc  GPU memory on one host: the decode exports IPC handles of its layer buffers at
//             registration; the prefill opens them once and copies device to device (NVLink).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "base/status.h"
#include "disagg/options.h"
#include "disagg/protocol.h"
#include "scheduler/model_runner.h"

namespace pdserve::disagg {

class TransferBackend {
 public:
  virtual ~TransferBackend() = default;
  virtual const char* name() const = 0;
  // Decode side: what a prefill needs to write into our buffers (sent with REG; may be empty).
  virtual Result<std::string> local_descriptor() = 0;
  // Prefill side: a decode session registered with `descriptor`.
  virtual Status open_peer(const std::string& session, const std::string& descriptor) = 0;
  virtual void close_peer(const std::string& session) = 0;
  // Prefill side: moves one chunk to `session`. Returns the payload the decode must apply (tcp),
  // or an empty string when the bytes already arrived (cuda-ipc, fake).
  virtual Result<std::string> write(const std::string& session, std::span<const Block> blocks) = 0;
  // Decode side: applies a DATA payload. Blocks were bounds-checked by the caller.
  virtual Status apply(std::span<const Block> blocks, std::string_view payload) = 0;
};

// `local` are this rank's KV buffers (read by a prefill, written by a decode).
Result<std::unique_ptr<TransferBackend>> make_transfer_backend(Backend b, const scheduler::KvBufferView& local);

#if defined(PDSERVE_HAVE_CUDA)
std::unique_ptr<TransferBackend> make_cuda_ipc_backend(const scheduler::KvBufferView& local);
// Self-test for the GPU machine: copies `bytes` from GPU 0 to an IPC-exported buffer on GPU 1
// (through a forked process, as IPC handles cannot be opened in the process that made them), checks
// the bytes, and prints GB/s beside cudaMemcpyPeer of the same bytes. 0 on success.
int cuda_ipc_self_test(int64_t bytes);
#endif

}  // namespace pdserve::disagg
