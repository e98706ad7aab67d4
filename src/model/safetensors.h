// safetensors checkpoints: one file or shards listed by model.safetensors.index.json, mmap'ed.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "tensor/tensor.h"

namespace pdserve::model {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;  // meaningful only when loadable()
  std::string dtype_name;     // as written in the header: "BF16", "F8_E4M3", "F64", ...
  Shape shape;
  std::filesystem::path file;
  size_t data_begin = 0;  // relative to the file's data buffer
  size_t data_end = 0;

  // False for safetensors dtypes pdserve has no DType for (F64, BOOL, U8, ...).
  bool loadable() const { return dtype_from_safetensors(dtype_name).has_value(); }
};

// One mmap'ed .safetensors file with a validated header: 8-byte length within the file and the
// ~100 MB limit; UTF-8 JSON object; every entry has a known dtype, non-negative shape, offsets with
// end - begin = numel * dtype size, inside the data buffer, non-overlapping, covering it without
// holes; "__metadata__" (string map) allowed. Unknown dtypes (F64, BOOL, ...) are loadable only
// as metadata: they are an error when their tensor is read.
class SafetensorsFile {
 public:
  static Result<std::shared_ptr<SafetensorsFile>> open(const std::filesystem::path& path);
  ~SafetensorsFile();

  const std::filesystem::path& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // A zero-copy view into the mapping (keeps the mapping alive); a copy for a tensor whose start
  // is not aligned to its element size.
  Result<Tensor> tensor(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  std::filesystem::path path_;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  std::shared_ptr<void> mapping_;  // munmap on last release
  const char* data_ = nullptr;     // start of the data buffer
  size_t data_size_ = 0;
};

// All tensors of a checkpoint folder: model.safetensors.index.json if present (every listed shard
// must exist and hold the tensors the index assigns to it; tensors a shard holds but the index does
// not list are ignored), else all *.safetensors files in the folder (a tensor in two files is an
// error). A path to a single .safetensors file opens just that file.
class Checkpoint {
 public:
  static Result<Checkpoint> open(const std::filesystem::path& dir);

  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  Result<Tensor> tensor(const std::string& name) const;  // error names the tensor and the folder
  const TensorInfo* info(const std::string& name) const;
  std::vector<std::string> names() const;
  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::filesystem::path dir_;
  std::map<std::string, std::shared_ptr<SafetensorsFile>> where_;
};

// Writes tensors to one .safetensors file (header padded to 8 bytes, {"format":"pt"} metadata).
// Used by tests and tools (dummy checkpoints, corrupt-file fixtures).
Status write_safetensors(const std::filesystem::path& path, const std::map<std::string, Tensor>& tensors);

}  // namespace pdserve::model
