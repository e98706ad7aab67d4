// Inputs found by the fuzz targets (fuzz/tokenizer_load_fuzz.cpp, tokenizer_codec_fuzz.cpp), fed
// to the same entry points. Each once crashed the process or broke a documented property.
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace pdserve::tokenizer {
namespace {

Result<std::shared_ptr<Tokenizer>> load_text(const std::string& name, const std::string& tokenizer_json) {
  const auto dir = testing::temp_path(name);
  std::filesystem::create_directories(dir);
  testing::write_file(dir / "tokenizer.json", tokenizer_json);
  return Tokenizer::load(dir);
}

// nlohmann's parser throws out_of_range (not parse_error) for a number beyond double; the shared
// JSON reader (base/json.cpp) caught only parse_error, so load() threw.
TEST(FuzzRegression, NumberBeyondDoubleIsALoadError) {
  Result<std::shared_ptr<Tokenizer>> tok = Error(ErrorCode::kInternal, "not run");
  ASSERT_NO_THROW(tok = load_text("overflow", R"({"model": {"type": "BPE", "vocab": {"a": 1e999}}})"));
  ASSERT_FALSE(tok.has_value());
  EXPECT_EQ(tok.error().code(), ErrorCode::kCorrupt);
  EXPECT_NE(tok.error().message().find("tokenizer.json"), std::string::npos) << tok.error().message();
}

// The small valid tokenizer.json of the fuzz seeds, parsed, for the tests to break one field of.
nlohmann::json small_bpe() {
  return nlohmann::json::parse(testing::read_file(testing::source_dir() / "fuzz/corpus/tokenizer_load/small_bpe"));
}

TEST(FuzzRegression, SmallSeedLoads) {
  auto tok = load_text("seed", small_bpe().dump());
  ASSERT_TRUE(tok.has_value()) << tok.error().message();
  auto ids = (*tok)->encode("the hello 123", false);
  ASSERT_TRUE(ids.has_value());
  EXPECT_EQ((*tok)->decode(*ids, false).value(), "the hello 123");
}

// A flag of the wrong type made nlohmann's value() throw type_error out of load().
TEST(FuzzRegression, AddedTokenFlagOfWrongTypeIsALoadError) {
  auto j = small_bpe();
  j["added_tokens"][0]["special"] = "yes";
  Result<std::shared_ptr<Tokenizer>> tok = Error(ErrorCode::kInternal, "not run");
  ASSERT_NO_THROW(tok = load_text("flag", j.dump()));
  ASSERT_FALSE(tok.has_value());
  EXPECT_EQ(tok.error().code(), ErrorCode::kCorrupt);
  EXPECT_NE(tok.error().message().find("boolean"), std::string::npos) << tok.error().message();
}

// One id near 2^31 (added token or model token) made load() allocate ~64 GB for its id tables.
TEST(FuzzRegression, HugeTokenIdsAreLoadErrors) {
  auto added = small_bpe();
  added["added_tokens"][0]["id"] = 2000000000;
  auto model = small_bpe();
  model["model"]["vocab"]["\u0120the"] = 2100000000;
  for (const auto& [name, j] : {std::pair{"added", added}, std::pair{"model", model}}) {
    auto tok = load_text(std::string("huge_") + name, j.dump());
    ASSERT_FALSE(tok.has_value()) << name;
    EXPECT_EQ(tok.error().code(), ErrorCode::kCorrupt) << name;
    EXPECT_NE(tok.error().message().find("4194304"), std::string::npos) << tok.error().message();
  }
}

}  // namespace
}  // namespace pdserve::tokenizer
