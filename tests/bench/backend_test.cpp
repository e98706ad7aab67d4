// Request bodies per backend and the reading of streamed answers into TTFT / ITL / token counts.
#include <gtest/gtest.h>

#include "bench/backend.h"

namespace pdserve::bench {
namespace {

TEST(Backend, Names) {
  EXPECT_EQ(*parse_backend("sglang"), Backend::kSglang);
  EXPECT_EQ(*parse_backend("sglang-native"), Backend::kSglang);
  EXPECT_EQ(*parse_backend("sglang-oai"), Backend::kOai);
  EXPECT_EQ(*parse_backend("sglang-oai-chat"), Backend::kOaiChat);
  auto bad = parse_backend("vllm");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("unknown --backend 'vllm'"), std::string::npos);
}

TEST(Backend, RequestBodies) {
  DatasetRequest r{"hello", {}, 1, 9};
  RequestOptions o;
  o.extra_body = {{"top_k", 5}};
  auto j = request_body(r, 9, o);
  EXPECT_EQ(j["text"], "hello");
  EXPECT_EQ(j["sampling_params"]["max_new_tokens"], 9);
  EXPECT_EQ(j["sampling_params"]["ignore_eos"], true);
  EXPECT_EQ(j["stream"], true);
  EXPECT_EQ(j["top_k"], 5);
  DatasetRequest ids{"", {1, 2, 3}, 3, 4};
  EXPECT_EQ(request_body(ids, 4, o)["input_ids"], nlohmann::json({1, 2, 3}));
  o.backend = Backend::kOaiChat;
  o.model = "m";
  o.ignore_eos = false;
  j = request_body(r, 9, o);
  EXPECT_EQ(j["messages"][0]["content"], "hello");
  EXPECT_EQ(j["max_tokens"], 9);
  EXPECT_EQ(j["model"], "m");
  EXPECT_EQ(j["ignore_eos"], false);
  EXPECT_EQ(j["stream_options"]["include_usage"], true);
  EXPECT_STREQ(backend_path(Backend::kOai), "/v1/completions");
}

TEST(Backend, NativeStreamTimings) {
  ResponseReader rd(Backend::kSglang, 5.0);
  EXPECT_TRUE(rd.on_data(R"({"text":"a","meta_info":{"completion_tokens":1}})", 0.10));
  EXPECT_TRUE(rd.on_data(R"({"text":"abc","meta_info":{"completion_tokens":3}})", 0.30));  // 2 tokens in 0.2 s
  EXPECT_TRUE(rd.on_data(R"({"text":"abc","meta_info":{"completion_tokens":3}})", 0.35));  // nothing new
  EXPECT_TRUE(rd.on_data(R"({"text":"abcd","meta_info":{"completion_tokens":4,"finish_reason":{"type":"length","length":4}}})", 0.40));
  EXPECT_TRUE(rd.on_data("[DONE]", 0.41));
  auto r = rd.finish(0.42, 200, "");
  ASSERT_TRUE(r.success) << r.error;
  EXPECT_DOUBLE_EQ(r.ttft, 0.10);
  EXPECT_EQ(r.output_len, 4);
  EXPECT_EQ(r.generated_text, "abcd");
  ASSERT_EQ(r.itl.size(), 3u);
  EXPECT_NEAR(r.itl[0], 0.1, 1e-12);
  EXPECT_NEAR(r.itl[1], 0.1, 1e-12);
  EXPECT_NEAR(r.itl[2], 0.1, 1e-12);
  ASSERT_EQ(r.token_times.size(), 3u);
  EXPECT_DOUBLE_EQ(r.token_times[0].first, 5.10);
}

TEST(Backend, OpenAiStreamsCountUsage) {
  ResponseReader rd(Backend::kOai, 0);
  rd.on_data(R"({"choices":[{"index":0,"text":"He"}]})", 0.2);
  rd.on_data(R"({"choices":[{"index":0,"text":"llo"}]})", 0.3);
  rd.on_data(R"({"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}})", 0.31);
  auto r = rd.finish(0.32, 200, "");
  ASSERT_TRUE(r.success);
  EXPECT_EQ(r.generated_text, "Hello");
  EXPECT_EQ(r.output_len, 2);
  EXPECT_DOUBLE_EQ(r.ttft, 0.2);
  ResponseReader chat(Backend::kOaiChat, 0);
  chat.on_data(R"({"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]})", 0.1);
  chat.on_data(R"({"choices":[{"index":0,"delta":{"content":"Hi"}}]})", 0.2);
  auto c = chat.finish(0.3, 200, "");
  EXPECT_TRUE(c.success);
  EXPECT_DOUBLE_EQ(c.ttft, 0.2);  // the empty role chunk is not the first token
  EXPECT_EQ(c.output_len, 1);
}

TEST(Backend, ErrorsFailTheRequest) {
  ResponseReader a(Backend::kSglang, 0);
  EXPECT_FALSE(a.on_data(R"({"error":{"message":"bad"}})", 0.1));
  EXPECT_FALSE(a.finish(0.1, 200, "").success);
  ResponseReader b(Backend::kSglang, 0);
  auto r = b.finish(0.1, 400, R"({"message":"field 'text' must be a string"})");
  EXPECT_FALSE(r.success);
  EXPECT_NE(r.error.find("HTTP 400"), std::string::npos);
  ResponseReader c(Backend::kSglang, 0);
  EXPECT_FALSE(c.on_data(R"({"text":"","meta_info":{"completion_tokens":0,"finish_reason":{"type":"abort","message":"x"}}})", 0.1));
  EXPECT_FALSE(c.finish(0.1, 200, "").success);
  ResponseReader d(Backend::kSglang, 0);
  EXPECT_FALSE(d.finish(0.1, 200, "").success);  // an empty stream is not a success
}

}  // namespace
}  // namespace pdserve::bench
