// Inputs found by the fuzz targets (fuzz/model_config_fuzz.cpp, safetensors_fuzz.cpp,
// checkpoint_index_fuzz.cpp), fed to the same entry points. Each once crashed the process.
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "model/config.h"
#include "model/safetensors.h"

namespace pdserve::model {
namespace {

namespace fs = std::filesystem;

fs::path temp_dir() {
  fs::path p = fs::temp_directory_path() / ("pdserve_model_fuzz_regression_" + std::to_string(::getpid()) + "_" +
                                            ::testing::UnitTest::GetInstance()->current_test_info()->name());
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// nlohmann's parser throws out_of_range (not parse_error) for a number beyond double; only
// parse_error was caught, so the exception escaped parse_model_config (found in 51k runs).
TEST(FuzzRegression, ConfigNumberBeyondDoubleIsAnError) {
  const std::string text = R"({"architectures": [77777e7777777777777777777777777777777], "vocab_size": 129280})";
  Result<ModelConfig> cfg = Error(ErrorCode::kInternal, "not run");
  ASSERT_NO_THROW(cfg = parse_model_config(text, "fuzz/config.json"));
  ASSERT_FALSE(cfg.has_value());
  EXPECT_EQ(cfg.error().code(), ErrorCode::kCorrupt);
  EXPECT_NE(cfg.error().message().find("fuzz/config.json"), std::string::npos) << cfg.error().message();
}

// The same parser call reads a safetensors header and the shard index.
TEST(FuzzRegression, SafetensorsHeaderNumberBeyondDoubleIsCorrupt) {
  const fs::path dir = temp_dir();
  const std::string header = R"({"__metadata__": {"x": 1e999}})";
  std::string bytes(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(bytes.data(), &n, 8);
  write_bytes(dir / "a.safetensors", bytes + header);
  Result<std::shared_ptr<SafetensorsFile>> file = Error(ErrorCode::kInternal, "not run");
  ASSERT_NO_THROW(file = SafetensorsFile::open(dir / "a.safetensors"));
  ASSERT_FALSE(file.has_value());
  EXPECT_EQ(file.error().code(), ErrorCode::kCorrupt);
  fs::remove_all(dir);
}

TEST(FuzzRegression, ShardIndexNumberBeyondDoubleIsCorrupt) {
  const fs::path dir = temp_dir();
  write_bytes(dir / "model.safetensors.index.json", R"({"metadata": {"total_size": -1e400}, "weight_map": {}})");
  Result<Checkpoint> ck = Error(ErrorCode::kInternal, "not run");
  ASSERT_NO_THROW(ck = Checkpoint::open(dir));
  ASSERT_FALSE(ck.has_value());
  EXPECT_EQ(ck.error().code(), ErrorCode::kCorrupt);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace pdserve::model
