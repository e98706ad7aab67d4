// Helpers shared by the fuzz targets: a private scratch folder for entry points that read files
// (safetensors, shard index, tokenizer.json) and the source tree for fixtures.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <system_error>

#include "fuzz/fuzz_paths.h"

namespace pdserve::fuzz {

// One folder per fuzzing process (libFuzzer's -jobs/-fork run several), removed at exit. Kept in
// /dev/shm when it exists: every input is written to a file, and tmpfs keeps that off the disk.
inline const std::filesystem::path& scratch_dir() {
  struct Folder {
    std::filesystem::path dir;
    Folder() {
      std::error_code ec;
      std::filesystem::path base = std::filesystem::is_directory("/dev/shm", ec)
                                       ? std::filesystem::path("/dev/shm")
                                       : std::filesystem::temp_directory_path();
      dir = base / ("pdserve_fuzz_" + std::to_string(::getpid()));
      std::filesystem::create_directories(dir);
    }
    ~Folder() {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  };
  static Folder folder;
  return folder.dir;
}

inline void write_file(const std::filesystem::path& path, std::string_view bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string_view as_view(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// The repository (fixtures such as the DeepSeek-V3 tokenizer): $PDSERVE_SOURCE_DIR, else the
// folder this build was configured from.
inline std::filesystem::path source_dir() {
  if (const char* env = std::getenv("PDSERVE_SOURCE_DIR"); env && *env) return env;
  return kConfiguredSourceDir;
}

}  // namespace pdserve::fuzz
