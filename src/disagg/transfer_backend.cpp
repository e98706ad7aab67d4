#include "disagg/transfer_backend.h"

#include <cstring>

namespace pdserve::disagg {

namespace {

// Host memory: the payload is the chunk's bytes in block order.
class TcpBackend final : public TransferBackend {
 public:
  explicit TcpBackend(scheduler::KvBufferView local) : local_(std::move(local)) {}
  const char* name() const override { return "tcp"; }
  Result<std::string> local_descriptor() override { return std::string(); }
  Status open_peer(const std::string&, const std::string&) override { return ok_status(); }
  void close_peer(const std::string&) override {}
  Result<std::string> write(const std::string&, std::span<const Block> blocks) override {
    int64_t total = 0;
    for (const auto& b : blocks) total += b.len;
    std::string payload(static_cast<size_t>(total), '\0');
    char* out = payload.data();
    for (const auto& b : blocks) {
      PDSERVE_RETURN_IF_ERROR(check(b, b.src_offset));
      std::memcpy(out, static_cast<const char*>(local_.layer_ptrs[static_cast<size_t>(b.layer)]) + b.src_offset,
                  static_cast<size_t>(b.len));
      out += b.len;
    }
    return payload;
  }
  Status apply(std::span<const Block> blocks, std::string_view payload) override {
    int64_t total = 0;
    for (const auto& b : blocks) total += b.len;
    if (total != static_cast<int64_t>(payload.size()))
      return make_error(ErrorCode::kInvalidArgument, "DATA payload has {} bytes, its blocks describe {}", payload.size(), total);
    const char* in = payload.data();
    for (const auto& b : blocks) {
      PDSERVE_RETURN_IF_ERROR(check(b, b.dst_offset));
      std::memcpy(static_cast<char*>(local_.layer_ptrs[static_cast<size_t>(b.layer)]) + b.dst_offset, in,
                  static_cast<size_t>(b.len));
      in += b.len;
    }
    return ok_status();
  }

 private:
  Status check(const Block& b, int64_t offset) const {
    const int64_t size = local_.num_pages * local_.page_size * local_.bytes_per_token;
    if (b.layer < 0 || b.layer >= static_cast<int32_t>(local_.layer_ptrs.size()) || offset < 0 || b.len < 0 ||
        offset + b.len > size)
      return make_error(ErrorCode::kInvalidArgument, "block (layer {}, offset {}, {} bytes) is outside the KV buffers", b.layer,
                        offset, b.len);
    return ok_status();
  }
  scheduler::KvBufferView local_;
};

class FakeBackend final : public TransferBackend {
 public:
  const char* name() const override { return "fake"; }
  Result<std::string> local_descriptor() override { return std::string(); }
  Status open_peer(const std::string&, const std::string&) override { return ok_status(); }
  void close_peer(const std::string&) override {}
  Result<std::string> write(const std::string&, std::span<const Block>) override { return std::string(); }
  Status apply(std::span<const Block>, std::string_view) override { return ok_status(); }
};

}  // namespace

Result<std::unique_ptr<TransferBackend>> make_transfer_backend(Backend b, const scheduler::KvBufferView& local) {
  switch (b) {
    case Backend::kTcp:
      if (local.on_device)
        return make_error(ErrorCode::kUnsupported, "the tcp transfer backend moves host memory; this server's KV is on the GPU "
                                                   "(use --disaggregation-transfer-backend cuda-ipc)");
      return std::unique_ptr<TransferBackend>(std::make_unique<TcpBackend>(local));
    case Backend::kFake:
      return std::unique_ptr<TransferBackend>(std::make_unique<FakeBackend>());
    case Backend::kCudaIpc:
#if defined(PDSERVE_HAVE_CUDA)
      if (!local.on_device)
        return make_error(ErrorCode::kUnsupported, "the cuda-ipc transfer backend needs the KV cache on a GPU (--device cuda)");
      return make_cuda_ipc_backend(local);
#else
      return make_error(ErrorCode::kUnsupported, "cuda-ipc needs a CUDA build");
#endif
  }
  return make_error(ErrorCode::kInvalidArgument, "unknown transfer backend");
}

}  // namespace pdserve::disagg
