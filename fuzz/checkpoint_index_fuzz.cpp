// The shard index (model.safetensors.index.json, read by model::Checkpoint::open): the input is
// the index text, next to two fixed valid shards, a.safetensors (tensors "x", "y") and
// b.safetensors ("z"). Every tensor an accepted index names must then be readable.
#include <cstdlib>
#include <cstring>
#include <string>

#include "fuzz/fuzz_util.h"
#include "model/safetensors.h"

namespace {

// A safetensors file from its JSON header and the size of its (zero) data buffer.
void write_shard(const std::filesystem::path& path, const std::string& header, size_t data_bytes) {
  std::string bytes(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(bytes.data(), &n, 8);  // little-endian hosts only, as the reader
  bytes += header;
  bytes.append(data_bytes, '\0');
  pdserve::fuzz::write_file(path, bytes);
}

const std::filesystem::path& model_dir() {
  static const std::filesystem::path dir = [] {
    auto d = pdserve::fuzz::scratch_dir() / "model";
    std::filesystem::create_directories(d);
    write_shard(d / "a.safetensors",
                R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                R"("y":{"dtype":"BF16","shape":[2,2],"data_offsets":[8,16]}})",
                16);
    write_shard(d / "b.safetensors", R"({"z":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})", 4);
    return d;
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto& dir = model_dir();
  pdserve::fuzz::write_file(dir / "model.safetensors.index.json", pdserve::fuzz::as_view(data, size));
  auto ck = pdserve::model::Checkpoint::open(dir);
  if (!ck) {
    if (ck.error().message().empty()) std::abort();
    return 0;
  }
  for (const std::string& name : ck->names()) {
    if (!ck->contains(name) || ck->info(name) == nullptr) std::abort();
    if (!ck->tensor(name)) std::abort();
  }
  return 0;
}
