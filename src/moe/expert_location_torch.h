// Reads PyTorch `torch.save` files (SGLang's expert-distribution dumps, `.pt`) without Python, so
// recordings made with SGLang can seed `--init-expert-location` and `pdserve eplb`.
//
// Why hand-written: the format is a ZIP archive (entries stored uncompressed by PyTorch's writer)
// holding `data.pkl`, a pickle whose tensors point at raw little-endian storages `data/<key>`;
// libtorch is far too heavy a dependency for this and no Debian package reads pickles from C++.
// Only the pickle opcodes `torch.save` emits for dicts of tensors, numbers, strings and None are
// understood; anything else (custom classes, zip64, compressed entries) is a clear kUnsupported.
#pragma once

#include <filesystem>
#include <string_view>

#include <nlohmann/json.hpp>

#include "base/status.h"

namespace pdserve::moe {

// The saved object as JSON: dicts with string keys -> objects, lists/tuples -> arrays, tensors
// (int64/int32/int16/int8/uint8/bool/float32/float64, any device tag) -> nested arrays of their
// shape, None -> null. kNotFound / kIo for the file, kCorrupt for a malformed archive or pickle.
Result<nlohmann::json> read_torch_file_as_json(const std::filesystem::path& path);
// The same from the file's bytes; `source` names it in messages.
Result<nlohmann::json> parse_torch_bytes_as_json(std::string_view bytes, std::string_view source);

}  // namespace pdserve::moe
