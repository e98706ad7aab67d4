#include "base/json.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

namespace pdserve {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

class TempDir : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("pdserve_json_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path write(const std::string& name, const std::string& text) {
    fs::path p = dir_ / name;
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }
  fs::path dir_;
};

TEST_F(TempDir, MissingFileIsNotFound) {
  auto r = read_json_file(dir_ / "nope.json");
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), ErrorCode::kNotFound);
  EXPECT_NE(r.error().message().find("nope.json"), std::string::npos) << r.error().message();
}

TEST_F(TempDir, DirectoryIsAnIoError) {
  auto r = read_json_file(dir_);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), ErrorCode::kIo);
}

TEST_F(TempDir, ReadsValidJson) {
  auto r = read_json_file(write("ok.json", R"({"hidden_size": 7168, "name": "x"})"));
  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_EQ((*r)["hidden_size"], 7168);
}

TEST_F(TempDir, BadJsonIsCorruptWithPosition) {
  fs::path p = write("bad.json", "{\"a\": 1,\n \"b\": tru }");
  auto r = read_json_file(p);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), ErrorCode::kCorrupt);
  const std::string& m = r.error().message();
  EXPECT_EQ(m.rfind(p.string() + ": invalid JSON at byte ", 0), 0u) << m;
  // The parser reports the 19th byte (the space after "tru": not a literal), line 2 column 10.
  EXPECT_NE(m.find("at byte 19:"), std::string::npos) << m;
  EXPECT_NE(m.find("line 2, column 10"), std::string::npos) << m;
  EXPECT_EQ(m.find("[json.exception"), std::string::npos) << m;
}

TEST_F(TempDir, EmptyFileIsCorrupt) {
  auto r = read_json_file(write("empty.json", ""));
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), ErrorCode::kCorrupt);
}

TEST_F(TempDir, WriteThenReadRoundTrips) {
  json v = {{"physical_to_logical_map", {{0, 1, 2}, {2, 1, 0}}}, {"note", "ünïcode"}};
  fs::path p = dir_ / "out.json";
  ASSERT_TRUE(write_json_file(p, v).has_value());
  auto r = read_json_file(p);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(*r, v);
  // Overwrite and leave no temporary files behind.
  ASSERT_TRUE(write_json_file(p, json{{"x", 1}}, -1).has_value());
  EXPECT_EQ(*read_json_file(p), (json{{"x", 1}}));
  int files = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir_)) ++files;
  EXPECT_EQ(files, 1);
}

TEST_F(TempDir, WriteIntoMissingFolderFails) {
  auto s = write_json_file(dir_ / "no" / "such" / "x.json", json::object());
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().code(), ErrorCode::kIo);
}

TEST(JsonFields, TypedAccess) {
  json o = json::parse(R"({"n": 61, "f": 2.5, "i_as_f": 10000, "s": "yarn", "b": true,
                           "v": [1, 2, 3], "m": {"a": 1.0}, "neg": -1, "null": null})");
  EXPECT_EQ(*get_field<int>(o, "n", "config.json"), 61);
  EXPECT_EQ(*get_field<int64_t>(o, "n", "config.json"), 61);
  EXPECT_DOUBLE_EQ(*get_field<double>(o, "f", "config.json"), 2.5);
  EXPECT_FLOAT_EQ(*get_field<float>(o, "i_as_f", "config.json"), 10000.0f);
  EXPECT_EQ(*get_field<std::string>(o, "s", "config.json"), "yarn");
  EXPECT_TRUE(*get_field<bool>(o, "b", "config.json"));
  EXPECT_EQ(*get_field<std::vector<int>>(o, "v", "config.json"), (std::vector<int>{1, 2, 3}));
  EXPECT_EQ((get_field<std::map<std::string, double>>(o, "m", "x")->at("a")), 1.0);
  EXPECT_EQ(*get_field<int>(o, "neg", "x"), -1);
  EXPECT_EQ(get_field<json>(o, "m", "x")->size(), 1u);
}

TEST(JsonFields, WrongTypeMessages) {
  json o = json::parse(R"({"n": "61", "f": 2.5, "v": [1, "x"], "neg": -1, "big": 10000000000, "b": 1})");
  auto r = get_field<int>(o, "n", "config.json");
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(r.error().message(), "config.json: field 'n' must be an integer");
  EXPECT_EQ(get_field<int>(o, "f", "config.json").error().message(), "config.json: field 'f' must be an integer");
  EXPECT_EQ(get_field<std::string>(o, "f", "req").error().message(), "req: field 'f' must be a string");
  EXPECT_EQ(get_field<bool>(o, "b", "req").error().message(), "req: field 'b' must be a boolean");
  EXPECT_EQ(get_field<double>(o, "n", "req").error().message(), "req: field 'n' must be a number");
  EXPECT_EQ(get_field<std::vector<int>>(o, "v", "req").error().message(),
            "req: field 'v' must be an array of integers");
  EXPECT_EQ(get_field<std::vector<std::vector<double>>>(o, "v", "req").error().message(),
            "req: field 'v' must be an array of arrays of numbers");
  EXPECT_EQ(get_field<uint32_t>(o, "neg", "req").error().message(),
            "req: field 'neg' must be an integer in [0, 4294967295]");
  EXPECT_EQ(get_field<int32_t>(o, "big", "req").error().message(),
            "req: field 'big' must be an integer in [-2147483648, 2147483647]");
  EXPECT_EQ(*get_field<int64_t>(o, "big", "req"), 10000000000);
  EXPECT_EQ(get_field<int>(o, "n", "config.json", ErrorCode::kCorrupt).error().code(), ErrorCode::kCorrupt);
}

TEST(JsonFields, MissingAndOptional) {
  json o = json::parse(R"({"rope_scaling": null, "q": 3, "s": 1})");
  EXPECT_EQ(get_field<int>(o, "missing", "config.json").error().message(), "config.json: missing field 'missing'");
  EXPECT_FALSE(get_field<json>(o, "rope_scaling", "config.json").has_value());
  auto a = get_optional_field<json>(o, "rope_scaling", "config.json");
  ASSERT_TRUE(a.has_value());
  EXPECT_FALSE(a->has_value());
  auto b = get_optional_field<int>(o, "q", "config.json");
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(**b, 3);
  EXPECT_FALSE(get_optional_field<std::string>(o, "q", "c").has_value());
  EXPECT_EQ(*get_field_or<int>(o, "absent", "c", 17), 17);
  EXPECT_EQ(*get_field_or<int>(o, "s", "c", 17), 1);
  EXPECT_FALSE(get_field_or<std::string>(o, "s", "c", "x").has_value());
  EXPECT_EQ(get_field<int>(json::array(), "x", "body").error().message(), "body: expected a JSON object");
}

TEST(JsonFields, ParseJsonNamesItsSource) {
  auto r = parse_json("[1, 2", "request body");
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().message().rfind("request body: invalid JSON at byte 6: ", 0), 0u) << r.error().message();
}

}  // namespace
}  // namespace pdserve
