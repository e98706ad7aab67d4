// The official OpenAI npm client against a real pdserve server: completions and chat, streamed and
// not, usage in streams, and a 400 surfaced as the client's error type.
#include "server/server_process.h"

namespace pdserve::test {
namespace {

using nlohmann::json;

TEST(OpenAIClientE2E, OfficialNpmClientWorks) {
  const std::string node_dir = std::string(PDSERVE_SOURCE_DIR) + "/tests/server/node";
  ASSERT_TRUE(std::filesystem::exists(node_dir + "/node_modules/openai")) << "run scripts/setup.sh (npm ci) first";
  ServerProcess s({"--api-key", "sk-node", "--served-model-name", "pdserve-tiny"}, "openai");
  ASSERT_TRUE(s.wait_ready()) << s.log();
  const auto out_file = std::filesystem::temp_directory_path() / ("pdserve_openai_" + std::to_string(::getpid()) + ".json");
  const std::string cmd = "node " + node_dir + "/openai_client.mjs " + s.url("/v1") + " sk-node > " + out_file.string() + " 2>&1";
  const int rc = std::system(cmd.c_str());
  const std::string text = read_file(out_file);
  std::filesystem::remove(out_file);
  ASSERT_EQ(rc, 0) << text;
  const json j = json::parse(text);
  EXPECT_EQ(j["model"], "pdserve-tiny");
  EXPECT_EQ(j["completion"]["finish_reason"], "length");
  EXPECT_EQ(j["completion"]["usage"]["completion_tokens"], 8);
  // Greedy: the stream carries exactly the non-streamed text.
  EXPECT_EQ(j["completion_stream"]["text"], j["completion"]["text"]);
  EXPECT_GE(j["completion_stream"]["chunks"].get<int>(), 2);
  EXPECT_EQ(j["chat"]["role"], "assistant");
  EXPECT_EQ(j["chat_stream"]["content"], j["chat"]["content"]);
  ASSERT_TRUE(j["chat_stream"]["usage"].is_object()) << text;
  EXPECT_EQ(j["chat_stream"]["usage"]["completion_tokens"], j["chat"]["usage"]["completion_tokens"]);
  EXPECT_EQ(j["chat_stream"]["usage"]["prompt_tokens"], j["chat"]["usage"]["prompt_tokens"]);
  EXPECT_EQ(j["bad_request"]["status"], 400);
  EXPECT_EQ(s.terminate(), 0);
}

}  // namespace
}  // namespace pdserve::test
