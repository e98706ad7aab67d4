#include "model/safetensors.h"

#include <unistd.h>

#include <cstring>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace pdserve::model {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// A fresh folder per test, removed afterwards; fixtures are written by the tests themselves.
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("pdserve_safetensors_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

// A raw file: 8-byte little-endian header length, the header text, then `data`.
void write_raw(const fs::path& p, const std::string& header, const std::string& data, uint64_t header_len) {
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&header_len), 8);
  out << header << data;
}
void write_raw(const fs::path& p, const std::string& header, const std::string& data) {
  write_raw(p, header, data, header.size());
}

void write_text(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::binary) << text; }

template <typename T>
Tensor filled(const Shape& shape, DType dtype, T start) {
  Tensor t = Tensor::empty(shape, dtype);
  T* d = t.data<T>();
  for (int64_t i = 0; i < t.numel(); ++i) d[i] = static_cast<T>(start + static_cast<T>(i));
  return t;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         (a.nbytes() == 0 || std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0);
}

// Asserts an error with `code` whose message names `file` and contains `what`, on one line.
template <typename T>
void expect_error(const Result<T>& r, ErrorCode code, const std::string& file, const std::string& what) {
  ASSERT_FALSE(r.has_value()) << "expected an error containing: " << what;
  const std::string& m = r.error().message();
  EXPECT_EQ(r.error().code(), code) << m;
  EXPECT_NE(m.find(file), std::string::npos) << m;
  EXPECT_NE(m.find(what), std::string::npos) << m;
  EXPECT_EQ(m.find('\n'), std::string::npos) << m;
}

std::map<std::string, Tensor> sample_tensors() {
  std::map<std::string, Tensor> m;
  m["a.f32"] = filled<float>({2, 3}, DType::kF32, 1.5f);
  m["b.bf16"] = filled<uint16_t>({4}, DType::kBF16, uint16_t{0x3f80});
  m["c.f16"] = filled<uint16_t>({3, 1}, DType::kF16, uint16_t{0x3c00});
  m["d.weight"] = filled<uint8_t>({3, 5}, DType::kF8E4M3, uint8_t{0x30});
  m["d.weight_scale_inv"] = filled<float>({1, 1}, DType::kF32, 0.25f);
  m["e.i32"] = filled<int32_t>({5}, DType::kI32, -2);
  m["f.i64"] = filled<int64_t>({2}, DType::kI64, int64_t{1} << 40);
  m["g.scalar"] = filled<float>({}, DType::kF32, 3.5f);
  m["h.empty"] = Tensor::empty({0, 7}, DType::kBF16);
  return m;
}

TEST(Safetensors, RoundTripKeepsDtypesShapesAndBytes) {
  TempDir tmp;
  const fs::path p = tmp.path / "model.safetensors";
  auto tensors = sample_tensors();
  ASSERT_TRUE(write_safetensors(p, tensors).has_value());

  // Header length is a multiple of 8 so the data buffer is aligned.
  uint64_t n = 0;
  std::ifstream(p, std::ios::binary).read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u);

  auto f = SafetensorsFile::open(p);
  ASSERT_TRUE(f.has_value()) << f.error().message();
  EXPECT_EQ((*f)->metadata().at("format"), "pt");
  ASSERT_EQ((*f)->tensors().size(), tensors.size());
  for (const auto& [name, want] : tensors) {
    const TensorInfo& info = (*f)->tensors().at(name);
    EXPECT_EQ(info.dtype, want.dtype()) << name;
    EXPECT_EQ(info.dtype_name, dtype_safetensors_name(want.dtype())) << name;
    EXPECT_TRUE(info.loadable());
    EXPECT_EQ(info.shape, want.shape()) << name;
    EXPECT_EQ(info.file, p);
    auto got = (*f)->tensor(name);
    ASSERT_TRUE(got.has_value()) << got.error().message();
    EXPECT_TRUE(same_bytes(*got, want)) << name;
  }
  EXPECT_EQ((*f)->tensors().at("g.scalar").data_end - (*f)->tensors().at("g.scalar").data_begin, 4u);
  EXPECT_EQ((*f)->tensor("g.scalar")->data<float>()[0], 3.5f);
  EXPECT_EQ((*f)->tensor("h.empty")->numel(), 0);
  EXPECT_EQ((*f)->tensor("f.i64")->data<int64_t>()[1], (int64_t{1} << 40) + 1);

  // Zero-copy: two reads view the same bytes; views outlive the file object.
  Tensor a = *(*f)->tensor("a.f32");
  EXPECT_EQ(a.raw_data(), (*f)->tensor("a.f32")->raw_data());
  f = Result<std::shared_ptr<SafetensorsFile>>(std::shared_ptr<SafetensorsFile>());
  EXPECT_EQ(a.data<float>()[5], 6.5f);

  auto missing = SafetensorsFile::open(p)->get()->tensor("zzz");
  expect_error(missing, ErrorCode::kNotFound, p.string(), "no tensor 'zzz'");
}

TEST(Safetensors, WritesNonContiguousViewsContiguously) {
  TempDir tmp;
  const fs::path p = tmp.path / "x.safetensors";
  Tensor full = filled<float>({3, 4}, DType::kF32, 0.0f);
  Tensor col = full.slice(1, 1, 3);  // [3, 2], strided
  ASSERT_TRUE(write_safetensors(p, {{"col", col}}).has_value());
  auto t = SafetensorsFile::open(p)->get()->tensor("col");
  ASSERT_TRUE(t.has_value());
  const float want[] = {1, 2, 5, 6, 9, 10};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(t->data<float>()[i], want[i]);
}

TEST(Safetensors, MissingFileIsNotFound) {
  TempDir tmp;
  const fs::path p = tmp.path / "absent.safetensors";
  expect_error(SafetensorsFile::open(p), ErrorCode::kNotFound, p.string(), "cannot open");
}

TEST(Safetensors, FileShorterThan8BytesIsCorrupt) {
  TempDir tmp;
  const fs::path p = tmp.path / "short.safetensors";
  write_text(p, "abcde");
  expect_error(SafetensorsFile::open(p), ErrorCode::kCorrupt, p.string(), "file is 5 bytes, shorter than the 8-byte");
}

TEST(Safetensors, HeaderLengthBeyondFileIsCorrupt) {
  TempDir tmp;
  const fs::path p = tmp.path / "long.safetensors";
  write_raw(p, "{}      ", "", 1000);
  expect_error(SafetensorsFile::open(p), ErrorCode::kCorrupt, p.string(),
               "header length 1000 exceeds the file size of 16 bytes");
}

TEST(Safetensors, HeaderLengthLimits) {
  TempDir tmp;
  const fs::path p = tmp.path / "limits.safetensors";
  write_raw(p, "{}      ", "", 1);
  expect_error(SafetensorsFile::open(p), ErrorCode::kCorrupt, p.string(), "header length 1 is below the minimum of 2");
  write_raw(p, "{}      ", "", 100'000'001);
  expect_error(SafetensorsFile::open(p), ErrorCode::kCorrupt, p.string(),
               "header length 100000001 exceeds the limit of 100000000 bytes");
}

TEST(Safetensors, HeaderNotJsonIsCorrupt) {
  TempDir tmp;
  const fs::path p = tmp.path / "bad.safetensors";
  write_raw(p, "{\"a\": [1, 2}   ", "");
  expect_error(SafetensorsFile::open(p), ErrorCode::kCorrupt, p.string(), "header is not valid JSON");
  write_raw(p, "{\"a\xff\": 1}", "");  // ill-formed UTF-8
  expect_error(SafetensorsFile::open(p), ErrorCode::kCorrupt, p.string(), "header is not valid JSON");
}

TEST(Safetensors, HeaderNotObjectIsCorrupt) {
  TempDir tmp;
  const fs::path p = tmp.path / "arr.safetensors";
  write_raw(p, "[1, 2]  ", "");
  expect_error(SafetensorsFile::open(p), ErrorCode::kCorrupt, p.string(), "header is not a JSON object (got [1,2])");
}

TEST(Safetensors, MetadataMustBeStrings) {
  TempDir tmp;
  const fs::path p = tmp.path / "meta.safetensors";
  write_raw(p, R"({"__metadata__": {"format": 1}})", "");
  expect_error(SafetensorsFile::open(p), ErrorCode::kCorrupt, p.string(), "'__metadata__' value for 'format' is not a string");
}

TEST(Safetensors, UnloadableDtypeFailsOnlyWhenRead) {
  TempDir tmp;
  const fs::path p = tmp.path / "f64.safetensors";
  write_raw(p,
            R"({"d": {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]},)"
            R"( "x": {"dtype": "F32", "shape": [1], "data_offsets": [16, 20]}})",
            std::string(20, '\0'));
  auto f = SafetensorsFile::open(p);
  ASSERT_TRUE(f.has_value()) << f.error().message();
  EXPECT_FALSE((*f)->tensors().at("d").loadable());
  EXPECT_EQ((*f)->tensors().at("d").dtype_name, "F64");
  EXPECT_TRUE((*f)->tensor("x").has_value());
  expect_error((*f)->tensor("d"), ErrorCode::kUnsupported, p.string(), "tensor 'd' has dtype F64, which pdserve cannot load");
}

TEST(Safetensors, UnknownDtypeIsCorrupt) {
  TempDir tmp;
  const fs::path p = tmp.path / "q7.safetensors";
  write_raw(p, R"({"q": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 2]}})", "ab");
  expect_error(SafetensorsFile::open(p), ErrorCode::kCorrupt, p.string(), "tensor 'q' has unknown dtype 'Q7'");
}

TEST(Safetensors, BadShapeIsCorrupt) {
  TempDir tmp;
  const fs::path p = tmp.path / "neg.safetensors";
  write_raw(p, R"({"n": {"dtype": "F32", "shape": [-1, 2], "data_offsets": [0, 0]}})", "");
  expect_error(SafetensorsFile::open(p), ErrorCode::kCorrupt, p.string(), "tensor 'n' has an invalid shape [-1,2]");
}

TEST(Safetensors, ShapeOffsetSizeMismatchIsCorrupt) {
  TempDir tmp;
  const fs::path p = tmp.path / "mismatch.safetensors";
  write_raw(p, R"({"m": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})", std::string(20, '\0'));
  expect_error(SafetensorsFile::open(p), ErrorCode::kCorrupt, p.string(),
               "tensor 'm' of dtype F32 and shape [2, 3] needs 24 bytes but data_offsets [0, 20) span 20");
}

TEST(Safetensors, OffsetsBeyondBufferAreCorrupt) {
  TempDir tmp;
  const fs::path p = tmp.path / "model-00001.safetensors";
  write_raw(p, R"({"x.weight": {"dtype": "F32", "shape": [25], "data_offsets": [0, 100]}})", std::string(64, '\0'));
  auto r = SafetensorsFile::open(p);
  expect_error(r, ErrorCode::kCorrupt, p.string(), "tensor 'x.weight' data_offsets [0, 100) exceed the data buffer of 64 bytes");
  EXPECT_EQ(r.error().message(),
            p.string() + ": tensor 'x.weight' data_offsets [0, 100) exceed the data buffer of 64 bytes");
}

TEST(Safetensors, OverlappingTensorsAreCorrupt) {
  TempDir tmp;
  const fs::path p = tmp.path / "overlap.safetensors";
  write_raw(p,
            R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},)"
            R"( "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})",
            std::string(24, '\0'));
  expect_error(SafetensorsFile::open(p), ErrorCode::kCorrupt, p.string(), "tensors 'a' [0, 16) and 'b' [8, 24) overlap");
}

TEST(Safetensors, HoleInBufferIsCorrupt) {
  TempDir tmp;
  const fs::path p = tmp.path / "hole.safetensors";
  write_raw(p,
            R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
            R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}})",
            std::string(24, '\0'));
  expect_error(SafetensorsFile::open(p), ErrorCode::kCorrupt, p.string(),
               "bytes [8, 16) of the data buffer belong to no tensor (hole before 'b')");
  write_raw(p, R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", std::string(16, '\0'));
  expect_error(SafetensorsFile::open(p), ErrorCode::kCorrupt, p.string(),
               "bytes [8, 16) at the end of the data buffer belong to no tensor");
}

TEST(Safetensors, TruncatedFileIsCorrupt) {
  TempDir tmp;
  const fs::path p = tmp.path / "cut.safetensors";
  ASSERT_TRUE(write_safetensors(p, sample_tensors()).has_value());
  fs::resize_file(p, fs::file_size(p) - 3);
  // The tensor at the end of the buffer ("h.empty" is zero-size, so the last bytes are g.scalar).
  expect_error(SafetensorsFile::open(p), ErrorCode::kCorrupt, p.string(), "exceed the data buffer");
}

// Two shards and an index, as transformers writes them; shard 2 carries an extra tensor that the
// index does not list (ignored).
void write_sharded(const fs::path& dir) {
  ASSERT_TRUE(write_safetensors(dir / "model-00001-of-00002.safetensors",
                                {{"a", filled<float>({2}, DType::kF32, 1.0f)},
                                 {"b", filled<uint16_t>({3}, DType::kBF16, uint16_t{7})}})
                  .has_value());
  ASSERT_TRUE(write_safetensors(dir / "model-00002-of-00002.safetensors",
                                {{"c", filled<int32_t>({2, 2}, DType::kI32, 10)},
                                 {"extra", filled<float>({1}, DType::kF32, 0.0f)}})
                  .has_value());
  json index = {{"metadata", {{"total_size", 30}, {"total_parameters", 9}}},
                {"weight_map",
                 {{"a", "model-00001-of-00002.safetensors"},
                  {"b", "model-00001-of-00002.safetensors"},
                  {"c", "model-00002-of-00002.safetensors"}}}};
  write_text(dir / "model.safetensors.index.json", index.dump(2));
}

TEST(Checkpoint, ShardedWithIndex) {
  TempDir tmp;
  write_sharded(tmp.path);
  auto ck = Checkpoint::open(tmp.path);
  ASSERT_TRUE(ck.has_value()) << ck.error().message();
  EXPECT_EQ(ck->names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_FALSE(ck->contains("extra"));
  EXPECT_EQ(ck->dir(), tmp.path);
  ASSERT_NE(ck->info("c"), nullptr);
  EXPECT_EQ(ck->info("c")->file, tmp.path / "model-00002-of-00002.safetensors");
  EXPECT_EQ(ck->info("nope"), nullptr);
  auto c = ck->tensor("c");
  ASSERT_TRUE(c.has_value()) << c.error().message();
  EXPECT_EQ(c->shape(), (Shape{2, 2}));
  EXPECT_EQ(c->data<int32_t>()[3], 13);
  EXPECT_EQ(ck->tensor("a")->data<float>()[1], 2.0f);
  expect_error(ck->tensor("extra"), ErrorCode::kNotFound, tmp.path.string(), "no tensor 'extra'");
}

TEST(Checkpoint, FolderWithoutIndexUsesAllFiles) {
  TempDir tmp;
  write_sharded(tmp.path);
  fs::remove(tmp.path / "model.safetensors.index.json");
  auto ck = Checkpoint::open(tmp.path);
  ASSERT_TRUE(ck.has_value()) << ck.error().message();
  EXPECT_EQ(ck->names(), (std::vector<std::string>{"a", "b", "c", "extra"}));
  auto single = Checkpoint::open(tmp.path / "model-00002-of-00002.safetensors");
  ASSERT_TRUE(single.has_value()) << single.error().message();
  EXPECT_EQ(single->names(), (std::vector<std::string>{"c", "extra"}));
}

TEST(Checkpoint, IndexPointingToMissingShardIsNotFound) {
  TempDir tmp;
  write_sharded(tmp.path);
  fs::remove(tmp.path / "model-00002-of-00002.safetensors");
  expect_error(Checkpoint::open(tmp.path), ErrorCode::kNotFound, "model.safetensors.index.json",
               "shard 'model-00002-of-00002.safetensors' (listed for tensor 'c') does not exist");
}

TEST(Checkpoint, IndexNamingTensorAbsentFromShardIsCorrupt) {
  TempDir tmp;
  write_sharded(tmp.path);
  json index = json::parse(std::ifstream(tmp.path / "model.safetensors.index.json"));
  index["weight_map"]["ghost"] = "model-00001-of-00002.safetensors";
  write_text(tmp.path / "model.safetensors.index.json", index.dump());
  expect_error(Checkpoint::open(tmp.path), ErrorCode::kCorrupt, "model.safetensors.index.json",
               "tensor 'ghost' is assigned to shard 'model-00001-of-00002.safetensors', which does not contain it");
}

TEST(Checkpoint, IndexWithoutWeightMapIsCorrupt) {
  TempDir tmp;
  write_sharded(tmp.path);
  write_text(tmp.path / "model.safetensors.index.json", R"({"metadata": {}})");
  expect_error(Checkpoint::open(tmp.path), ErrorCode::kCorrupt, "model.safetensors.index.json",
               "missing 'weight_map' object");
  write_text(tmp.path / "model.safetensors.index.json", R"({"weight_map": )");
  expect_error(Checkpoint::open(tmp.path), ErrorCode::kCorrupt, "model.safetensors.index.json", "invalid JSON");
}

TEST(Checkpoint, DuplicateTensorAcrossFilesWithoutIndexIsCorrupt) {
  TempDir tmp;
  ASSERT_TRUE(write_safetensors(tmp.path / "one.safetensors", {{"w", filled<float>({1}, DType::kF32, 0.f)}}).has_value());
  ASSERT_TRUE(write_safetensors(tmp.path / "two.safetensors", {{"w", filled<float>({1}, DType::kF32, 0.f)}}).has_value());
  expect_error(Checkpoint::open(tmp.path), ErrorCode::kCorrupt, tmp.path.string(),
               "tensor 'w' is in both one.safetensors and two.safetensors");
}

TEST(Checkpoint, EmptyFolderIsNotFound) {
  TempDir tmp;
  write_text(tmp.path / "config.json", "{}");
  auto r = Checkpoint::open(tmp.path);
  expect_error(r, ErrorCode::kNotFound, tmp.path.string(), "no *.safetensors files in");
  EXPECT_EQ(r.error().message(), "no *.safetensors files in " + tmp.path.string());
  expect_error(Checkpoint::open(tmp.path / "absent"), ErrorCode::kNotFound, (tmp.path / "absent").string(),
               "no such directory");
}

TEST(Checkpoint, CorruptShardErrorNamesTheShard) {
  TempDir tmp;
  write_sharded(tmp.path);
  const fs::path shard = tmp.path / "model-00001-of-00002.safetensors";
  fs::resize_file(shard, 4);
  expect_error(Checkpoint::open(tmp.path), ErrorCode::kCorrupt, shard.string(), "shorter than the 8-byte");
}

}  // namespace
}  // namespace pdserve::model
