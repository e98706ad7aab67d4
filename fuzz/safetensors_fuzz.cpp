// safetensors headers (model::SafetensorsFile::open): the input is the whole file (8-byte header
// length, JSON header, data buffer), written to a scratch file and mmap'ed as a checkpoint shard
// is. Every tensor the header validation accepts must lie inside the data buffer: its first and
// last bytes are read (a bad offset faults or trips ASan), and its size must match its shape.
#include <cstdlib>

#include "fuzz/fuzz_util.h"
#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = pdserve::fuzz::scratch_dir() / "input.safetensors";
  pdserve::fuzz::write_file(path, pdserve::fuzz::as_view(data, size));
  auto file = pdserve::model::SafetensorsFile::open(path);
  if (!file) {
    if (file.error().message().empty()) std::abort();
    return 0;
  }
  size_t covered = 0;
  for (const auto& [name, info] : (*file)->tensors()) {
    if (info.data_end < info.data_begin || info.data_end > size) std::abort();
    covered += info.data_end - info.data_begin;
    auto t = (*file)->tensor(name);
    if (!t) {
      if (info.loadable()) std::abort();  // only unknown dtypes may refuse a validated entry
      continue;
    }
    if (t->nbytes() != info.data_end - info.data_begin) std::abort();
    if (t->nbytes() > 0) {
      const volatile char* bytes = static_cast<const char*>(t->raw_data());
      (void)bytes[0];
      (void)bytes[t->nbytes() - 1];
    }
  }
  if (covered > size) std::abort();
  return 0;
}
