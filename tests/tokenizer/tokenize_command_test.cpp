// `pdserve tokenize` end to end: the real binary on files.
#include <gtest/gtest.h>

#include "test_util.h"
#include "tokenizer/utf8.h"

namespace pdserve::tokenizer {
namespace {

using testing::read_file;
using testing::run_command;
using testing::shell_quote;
using testing::temp_path;
using testing::write_file;

int tokenize(const std::string& args, std::string* log) {
  return run_command(shell_quote(PDSERVE_BINARY) + " tokenize " + args, log);
}

TEST(TokenizeCommand, EncodesAndDecodes) {
  const auto in = temp_path("cli_in.json"), out = temp_path("cli_out.json");
  write_file(in, R"(["Hello, my dog is cute", "", "中文<｜User｜>"])");
  std::string log;
  ASSERT_EQ(tokenize("--tokenizer-path " + shell_quote(testing::model_dir().string()) + " --input-file " +
                         shell_quote(in.string()) + " --output-json " + shell_quote(out.string()),
                     &log),
            0)
      << log;
  auto j = nlohmann::json::parse(read_file(out));
  ASSERT_EQ(j["ids"].size(), 3u);
  EXPECT_EQ(j["ids"][0], nlohmann::json({19923, 14, 1026, 6397, 344, 33125}));
  EXPECT_EQ(j["ids"][1], nlohmann::json::array());
  EXPECT_EQ(j["ids"][2].back(), 128803);

  // --add-special-tokens prepends BOS (add_bos_token is true); the model folder's config.json
  // locates the tokenizer when --tokenizer-path is absent.
  ASSERT_EQ(tokenize("--model-path " + shell_quote((testing::model_dir() / "config.json").string()) +
                         " --add-special-tokens --input-file " + shell_quote(in.string()) + " --output-json " +
                         shell_quote(out.string()),
                     &log),
            0)
      << log;
  j = nlohmann::json::parse(read_file(out));
  EXPECT_EQ(j["ids"][0], nlohmann::json({0, 19923, 14, 1026, 6397, 344, 33125}));
  EXPECT_EQ(j["ids"][1], nlohmann::json({0}));

  write_file(in, R"([[0, 19923, 14, 1026, 6397, 344, 33125], [], [128803, 1]])");
  ASSERT_EQ(tokenize("--tokenizer-path " + shell_quote(testing::model_dir().string()) + " --decode --input-file " +
                         shell_quote(in.string()) + " --output-json " + shell_quote(out.string()),
                     &log),
            0)
      << log;
  j = nlohmann::json::parse(read_file(out));
  EXPECT_EQ(j["texts"], nlohmann::json({"<｜begin▁of▁sentence｜>Hello, my dog is cute", "", "<｜User｜><｜end▁of▁sentence｜>"}));
}

TEST(TokenizeCommand, ReportsBadInputWithoutCrashing) {
  const auto in = temp_path("cli_bad.json"), out = temp_path("cli_bad_out.json");
  const std::string dir = " --tokenizer-path " + shell_quote(testing::model_dir().string());
  std::string log;
  write_file(in, "[\"ok\", \"bad \xff byte\"]");
  EXPECT_EQ(tokenize(dir + " --input-file " + shell_quote(in.string()) + " --output-json " + shell_quote(out.string()), &log), 1);
  EXPECT_NE(log.find("UTF-8"), std::string::npos) << log;
  EXPECT_EQ(find_invalid_utf8(log), std::string_view::npos) << "the error message repeats the invalid bytes";

  write_file(in, "[[1, 2, 999999]]");
  EXPECT_EQ(tokenize(dir + " --decode --input-file " + shell_quote(in.string()) + " --output-json " +
                         shell_quote(out.string()),
                     &log),
            1);
  EXPECT_NE(log.find("999999"), std::string::npos) << log;

  write_file(in, "[1, 2]");
  EXPECT_EQ(tokenize(dir + " --input-file " + shell_quote(in.string()) + " --output-json " + shell_quote(out.string()), &log), 1);
  EXPECT_NE(log.find("not a string"), std::string::npos) << log;

  EXPECT_EQ(tokenize("--input-file x --output-json y", &log), 2);
  EXPECT_EQ(tokenize(dir + " --input-file x --output-json y --no-such-flag", &log), 2);
  EXPECT_EQ(tokenize("--tokenizer-path /nonexistent --input-file " + shell_quote(in.string()) + " --output-json y", &log), 1);
  EXPECT_NE(log.find("tokenizer.json"), std::string::npos) << log;
}

}  // namespace
}  // namespace pdserve::tokenizer
