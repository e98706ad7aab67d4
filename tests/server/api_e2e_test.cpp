// `pdserve serve` as SGLang users drive it: native /generate, OpenAI routes, info endpoints,
// metrics, and every kind of bad input. One server process for the suite (tiny model, dummy
// weights, an API key, a short context and a small body limit so the limits can be hit).
#include <random>

#include "server/server_process.h"

namespace pdserve::test {
namespace {

using nlohmann::json;
const std::string kKey = "sk-test";

class ApiE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    server_ = new ServerProcess({"--api-key", kKey, "--context-length", "512", "--max-request-body-bytes", "200000",
                                 "--enable-metrics", "--decode-log-interval", "1", "--page-size", "4"},
                                "api");
    ASSERT_TRUE(server_->wait_ready()) << server_->log();
  }
  static void TearDownTestSuite() {
    EXPECT_EQ(server_->terminate(), 0) << server_->log();
    delete server_;
  }

  http::Response post(const std::string& path, const json& body, const std::string& key = kKey) {
    http::Client c;
    auto r = c.request("POST", server_->url(path), body.dump(), json_headers(key), std::chrono::seconds(120));
    EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message());
    return r ? *r : http::Response{};
  }
  http::Response post_raw(const std::string& path, const std::string& body) {
    http::Client c;
    auto r = c.request("POST", server_->url(path), body, json_headers(kKey), std::chrono::seconds(60));
    EXPECT_TRUE(r.has_value());
    return r ? *r : http::Response{};
  }
  http::Response get(const std::string& path, const std::string& key = kKey) {
    http::Client c;
    auto r = c.request("GET", server_->url(path), "", json_headers(key), std::chrono::seconds(60));
    EXPECT_TRUE(r.has_value());
    return r ? *r : http::Response{};
  }
  // 400 with SGLang's error object whose message contains `needle`.
  void expect_400(const http::Response& r, const std::string& needle) {
    EXPECT_EQ(r.status, 400) << r.body;
    auto j = json::parse(r.body, nullptr, false);
    ASSERT_TRUE(j.is_object()) << r.body;
    EXPECT_EQ(j.value("object", ""), "error");
    EXPECT_NE(j.value("message", "").find(needle), std::string::npos) << "'" << needle << "' not in " << r.body;
  }

  static ServerProcess* server_;
};
ServerProcess* ApiE2E::server_ = nullptr;

TEST_F(ApiE2E, GenerateFromTextAndIds) {
  auto r = post("/generate", {{"text", "The capital of France is"}, {"sampling_params", {{"max_new_tokens", 8}, {"temperature", 0}, {"ignore_eos", true}}}});
  ASSERT_EQ(r.status, 200) << r.body;
  auto j = json::parse(r.body);
  EXPECT_TRUE(j["text"].is_string());
  EXPECT_EQ(j["output_ids"].size(), 8u);
  const auto& m = j["meta_info"];
  EXPECT_EQ(m["finish_reason"]["type"], "length");
  EXPECT_EQ(m["finish_reason"]["length"], 8);
  EXPECT_EQ(m["completion_tokens"], 8);
  EXPECT_GT(m["prompt_tokens"].get<int>(), 3);
  EXPECT_TRUE(m.contains("cached_tokens"));
  EXPECT_GT(m["e2e_latency"].get<double>(), 0.0);
  EXPECT_TRUE(m["id"].is_string());

  auto ids = post("/generate", {{"input_ids", {0, 100, 200, 300}}, {"sampling_params", {{"max_new_tokens", 4}, {"temperature", 0}, {"ignore_eos", true}}}, {"rid", "my-request"}});
  ASSERT_EQ(ids.status, 200) << ids.body;
  EXPECT_EQ(json::parse(ids.body)["meta_info"]["id"], "my-request");
  EXPECT_EQ(json::parse(ids.body)["meta_info"]["prompt_tokens"], 4);
}

TEST_F(ApiE2E, BatchAndParallelSamplingAnswerWithLists) {
  auto r = post("/generate", {{"text", {"one", "two", "three"}}, {"sampling_params", {{"max_new_tokens", 3}, {"ignore_eos", true}}}});
  ASSERT_EQ(r.status, 200) << r.body;
  auto j = json::parse(r.body);
  ASSERT_TRUE(j.is_array());
  EXPECT_EQ(j.size(), 3u);
  auto n = post("/generate", {{"text", "hello"}, {"sampling_params", {{"max_new_tokens", 3}, {"n", 4}, {"temperature", 1.0}, {"ignore_eos", true}}}});
  ASSERT_EQ(n.status, 200) << n.body;
  EXPECT_EQ(json::parse(n.body).size(), 4u);
}

TEST_F(ApiE2E, StreamingDeltasAddUpToTheFullAnswer) {
  const json body = {{"input_ids", {0, 5, 6, 7, 8}}, {"sampling_params", {{"max_new_tokens", 10}, {"temperature", 0}, {"ignore_eos", true}}}};
  auto full = json::parse(post("/generate", body).body);
  json sbody = body;
  sbody["stream"] = true;
  http::Client c;
  http::ClientRequest req{"POST", server_->url("/generate"), sbody.dump(), json_headers(kKey), std::chrono::seconds(60)};
  std::vector<int> ids;
  std::string last_text;
  bool done = false;
  int events = 0;
  http::StreamCallbacks cb;
  cb.on_event = [&](const http::SseEvent& e) {
    if (e.data == "[DONE]") {
      done = true;
      return true;
    }
    auto j = json::parse(e.data);
    for (int id : j["output_ids"]) ids.push_back(id);
    last_text = j["text"];
    ++events;
    return true;
  };
  auto r = c.stream(req, cb);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->status, 200);
  EXPECT_TRUE(done);
  EXPECT_GE(events, 2);
  EXPECT_EQ(json(ids), full["output_ids"]);
  EXPECT_EQ(last_text, full["text"]);
}

TEST_F(ApiE2E, ConcurrentGreedyRequestsMatchOfflineGenerate) {
  // 64 prompts of mixed lengths, all at once; then `pdserve generate` on the same dummy model.
  std::mt19937 rng(11);
  std::vector<std::vector<int>> prompts(64);
  for (auto& p : prompts) {
    p.resize(std::uniform_int_distribution<int>(1, 120)(rng));
    for (auto& t : p) t = std::uniform_int_distribution<int>(3, 128000)(rng);
  }
  std::vector<json> outs(prompts.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < prompts.size(); ++i)
    threads.emplace_back([&, i] {
      http::Client c;
      auto r = c.request("POST", server_->url("/generate"),
                         json{{"input_ids", prompts[i]}, {"sampling_params", {{"max_new_tokens", 6}, {"temperature", 0}, {"ignore_eos", true}}}}.dump(),
                         json_headers(kKey), std::chrono::seconds(300));
      if (r && r->status == 200) outs[i] = json::parse(r->body)["output_ids"];
    });
  for (auto& t : threads) t.join();
  const auto dir = std::filesystem::temp_directory_path() / ("pdserve_ref_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "prompts.json") << json(prompts).dump();
  const std::string cmd = std::string(PDSERVE_BINARY) + " generate --model-path " + PDSERVE_SOURCE_DIR +
                          "/models/tiny-deepseek-v3 --load-format dummy --max-new-tokens 6 --ignore-eos --input-ids-file " +
                          (dir / "prompts.json").string() + " --output-json " + (dir / "out.json").string() + " > /dev/null 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  auto ref = json::parse(read_file(dir / "out.json"))["outputs"];
  for (size_t i = 0; i < prompts.size(); ++i) EXPECT_EQ(outs[i], ref[i]["output_ids"]) << "prompt " << i;
  // And three prompts run alone through generate give the same ids.
  for (size_t i : {0u, 17u, 63u}) {
    std::ofstream(dir / "one.json") << json({prompts[i]}).dump();
    const std::string one = std::string(PDSERVE_BINARY) + " generate --model-path " + PDSERVE_SOURCE_DIR +
                            "/models/tiny-deepseek-v3 --load-format dummy --max-new-tokens 6 --ignore-eos --input-ids-file " +
                            (dir / "one.json").string() + " --output-json " + (dir / "one_out.json").string() + " > /dev/null 2>&1";
    ASSERT_EQ(std::system(one.c_str()), 0);
    EXPECT_EQ(outs[i], json::parse(read_file(dir / "one_out.json"))["outputs"][0]["output_ids"]) << "prompt " << i;
  }
  std::filesystem::remove_all(dir);
}

TEST_F(ApiE2E, RepeatedPrefixIsServedFromTheCache) {
  std::vector<int> prompt(200);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int>(1000 + i * 37 % 5000);
  const json body = {{"input_ids", prompt}, {"sampling_params", {{"max_new_tokens", 5}, {"temperature", 0}, {"ignore_eos", true}}}};
  auto a = json::parse(post("/generate", body).body);
  auto b = json::parse(post("/generate", body).body);
  EXPECT_GT(b["meta_info"]["cached_tokens"].get<int>(), 150) << b.dump();
  EXPECT_EQ(a["output_ids"], b["output_ids"]);
}

TEST_F(ApiE2E, LogprobsAreReturned) {
  auto r = post("/generate", {{"input_ids", {0, 10, 20, 30, 40}}, {"return_logprob", true}, {"logprob_start_len", 0},
                              {"top_logprobs_num", 3}, {"return_text_in_logprobs", true},
                              {"sampling_params", {{"max_new_tokens", 3}, {"temperature", 0}, {"ignore_eos", true}}}});
  ASSERT_EQ(r.status, 200) << r.body;
  auto m = json::parse(r.body)["meta_info"];
  ASSERT_EQ(m["output_token_logprobs"].size(), 3u);
  EXPECT_LE(m["output_token_logprobs"][0][0].get<double>(), 0.0);
  EXPECT_EQ(m["output_top_logprobs"][0].size(), 3u);
  EXPECT_EQ(m["input_token_logprobs"].size(), 4u);  // positions 1..4 of the prompt
  // Greedy: the chosen token is the best of the top list.
  EXPECT_EQ(m["output_token_logprobs"][0][1], m["output_top_logprobs"][0][0][1]);
}

TEST_F(ApiE2E, OpenAIRoutes) {
  auto models = json::parse(get("/v1/models").body);
  ASSERT_EQ(models["data"].size(), 1u);
  const std::string name = models["data"][0]["id"];
  auto comp = post("/v1/completions", {{"model", name}, {"prompt", "Say hi"}, {"max_tokens", 5}, {"temperature", 0}});
  ASSERT_EQ(comp.status, 200) << comp.body;
  auto cj = json::parse(comp.body);
  EXPECT_EQ(cj["object"], "text_completion");
  EXPECT_EQ(cj["usage"]["completion_tokens"].get<int>() + cj["usage"]["prompt_tokens"].get<int>(), cj["usage"]["total_tokens"].get<int>());
  auto chat = post("/v1/chat/completions", {{"model", name}, {"messages", {{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", "Hello!"}}}}, {"max_tokens", 6}});
  ASSERT_EQ(chat.status, 200) << chat.body;
  auto hj = json::parse(chat.body);
  EXPECT_EQ(hj["object"], "chat.completion");
  EXPECT_EQ(hj["choices"][0]["message"]["role"], "assistant");
  EXPECT_TRUE(hj["choices"][0]["message"]["content"].is_string());
}

TEST_F(ApiE2E, InfoEndpoints) {
  EXPECT_EQ(get("/health").status, 200);
  EXPECT_EQ(get("/health_generate").status, 200);
  auto mi = json::parse(get("/model_info").body);
  EXPECT_EQ(mi["is_generation"], true);
  EXPECT_EQ(json::parse(get("/get_model_info").body), mi);
  auto si = json::parse(get("/server_info").body);
  EXPECT_GT(si["max_total_num_tokens"].get<int>(), 0);
  ASSERT_EQ(si["internal_states"].size(), 1u);
  EXPECT_TRUE(si["internal_states"][0]["kv_accounting_consistent"].get<bool>());
  EXPECT_TRUE(si["internal_states"][0].contains("last_gen_throughput"));
  auto load = json::parse(get("/get_load").body);
  ASSERT_EQ(load.size(), 1u);
  EXPECT_EQ(load[0]["dp_rank"], 0);
}

TEST_F(ApiE2E, MetricsPassPromtool) {
  post("/generate", {{"text", "metrics"}, {"sampling_params", {{"max_new_tokens", 2}}}});
  auto r = get("/metrics", "");
  ASSERT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("sglang:num_running_reqs{"), std::string::npos);
  EXPECT_NE(r.body.find("sglang:generation_tokens_total{"), std::string::npos);
  EXPECT_NE(r.body.find("sglang:e2e_request_latency_seconds_bucket{"), std::string::npos);
  std::string skip;
  if (!expect_promtool_clean(r.body, &skip)) GTEST_SKIP() << skip;
}

TEST_F(ApiE2E, BadInputGetsAClearError) {
  expect_400(post_raw("/generate", "{\"text\": \"unterminated"), "not valid JSON");
  expect_400(post_raw("/generate", "{\"text\": \"\xff\xfe bad utf8\"}"), "not valid JSON");
  // Found by fuzz/native_request: nlohmann throws out_of_range (not parse_error) for this.
  expect_400(post_raw("/generate", "{\"text\": \"a\", \"sampling_params\": {\"temperature\": 1e999}}"),
             "outside the range of a double");
  expect_400(post("/generate", {{"text", 42}}), "'text'");
  expect_400(post("/generate", {{"text", "x"}, {"sampling_params", {{"temperature", "hot"}}}}), "sampling_params.temperature");
  expect_400(post("/generate", {{"text", "x"}, {"sampling_params", {{"temprature", 1}}}}), "unknown sampling parameter 'sampling_params.temprature'");
  expect_400(post("/generate", {{"text", ""}}), "empty");
  expect_400(post("/generate", {{"input_ids", json::array()}}), "empty");
  expect_400(post("/generate", {{"input_ids", {1, 2, 999999}}}), "outside the vocabulary");
  expect_400(post("/generate", {{"input_ids", std::vector<int>(600, 7)}}), "context length");
  expect_400(post("/generate", {{"text", "x"}, {"sampling_params", {{"max_new_tokens", -5}}}}), "max_new_tokens");
  expect_400(post("/generate", {{"text", "x"}, {"sampling_params", {{"top_p", 7}}}}), "top_p");
  expect_400(post("/generate", {{"text", "x"}, {"sampling_params", {{"n", 1000}}}}), "n");
  expect_400(post("/generate", {{"text", std::vector<std::string>(2000, "a")}}), "limit");
  expect_400(post("/generate", {{"text", "x"}, {"input_ids", {1}}}), "exactly one");
  expect_400(post("/generate", {{"prompt", "x"}}), "unknown field 'prompt'");
  expect_400(post("/v1/chat/completions", {{"messages", "hi"}}), "messages");
  // Fields of a wrong type in nested objects: 400s naming the field, not a dropped connection (a
  // fuzzer found the type_error json::value throws).
  const json hi = {{"role", "user"}, {"content", "hi"}};
  expect_400(post("/v1/chat/completions", {{"messages", {hi}}, {"response_format", {{"type", 1}}}}), "response_format");
  expect_400(post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", {{{"type", 2}, {"text", "a"}}}}}}}}),
             "messages[0].content[0]");
  expect_400(post("/v1/chat/completions",
                  {{"messages", {hi, {{"role", "assistant"}, {"tool_calls", {{{"id", 5}, {"function", {{"name", "f"}}}}}}}}}}),
             "'messages[1].tool_calls[].id' must be a string");
  expect_400(post("/v1/chat/completions",
                  {{"messages", {hi, {{"role", "assistant"}, {"tool_calls", {{{"function", {{"name", json::array()}}}}}}}}}}),
             "'messages[1].tool_calls[].function.name' must be a string");
  expect_400(post("/v1/completions", {{"prompt", "x"}, {"max_tokens", -1}}), "max_tokens");
  // Found by fuzz/openai_request: a float beyond int64's range must not be converted (UB).
  expect_400(post_raw("/v1/completions", "{\"prompt\": \"x\", \"max_tokens\": 3.3e55}"), "must be an integer");
  EXPECT_EQ(get("/no/such/route").status, 404);
  EXPECT_EQ(get("/generate").status, 405);
  EXPECT_EQ(post_raw("/generate", std::string(300000, ' ')).status, 413);
  EXPECT_EQ(post("/generate", {{"text", "x"}}, "wrong-key").status, 401);
  EXPECT_EQ(post("/generate", {{"text", "x"}}, "").status, 401);
  // The server is still fine.
  EXPECT_EQ(post("/generate", {{"text", "ok"}, {"sampling_params", {{"max_new_tokens", 1}}}}).status, 200);
}

// Every cap of docs/reliability.md ("Access control and limits") answers 400 (413 for the body)
// with a message that names the field and the limit.
TEST_F(ApiE2E, EveryCapAnswersWithItsLimit) {
  const std::vector<int> ten(10, 7);
  // max_new_tokens + prompt must stay below --context-length 512 (SGLang's rule).
  expect_400(post("/generate", {{"input_ids", ten}, {"sampling_params", {{"max_new_tokens", 502}}}}),
             "max_new_tokens = 502 with a prompt of 10 tokens exceeds the model's context length (512 tokens): "
             "max_new_tokens may be at most 501");
  expect_400(post("/generate", {{"input_ids", ten}, {"sampling_params", {{"max_new_tokens", int64_t{1} << 62}}}}),
             "at most 501");
  expect_400(post("/v1/completions", {{"prompt", ten}, {"max_tokens", 600}}), "max_tokens may be at most 501");
  expect_400(post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 5000}}),
             "max_tokens may be at most");
  // Within the limit is served (and null means "until the context is full", not a breach).
  EXPECT_EQ(post("/generate", {{"input_ids", ten}, {"sampling_params", {{"max_new_tokens", 2}}}}).status, 200);
  EXPECT_EQ(post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", nullptr},
                                          {"stop_token_ids", {0}}, {"min_tokens", 0}, {"n", 1}, {"temperature", 0},
                                          {"max_completion_tokens", 2}})
                .status,
            200);
  // n and prompts x n.
  expect_400(post("/generate", {{"text", "x"}, {"sampling_params", {{"n", 65}}}}), "n must be in [1, 64]");
  expect_400(post("/generate", {{"text", std::vector<std::string>(20, "a")}, {"sampling_params", {{"n", 60}}}}),
             "asks for 1200 generations; the limit is 1024");
  expect_400(post("/v1/completions", {{"prompt", std::vector<std::string>(20, "a")}, {"n", 60}}),
             "asks for 1200 generations (prompts x n); the limit is 1024");
  // Stop strings: at most 64, each 1 to 1024 bytes.
  expect_400(post("/generate", {{"text", "x"}, {"sampling_params", {{"stop", std::vector<std::string>(65, "s")}}}}),
             "more than 64 strings");
  expect_400(post("/generate", {{"text", "x"}, {"sampling_params", {{"stop", std::string(1025, 's')}}}}), "1 to 1024 bytes");
  expect_400(post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "hi"}}}},
                                           {"stop", std::vector<std::string>(65, "s")}}),
             "more than 64 strings");
  EXPECT_EQ(post("/generate", {{"text", "x"}, {"sampling_params", {{"stop", std::vector<std::string>(64, std::string(1024, 's'))},
                                                                   {"max_new_tokens", 1}}}})
                .status,
            200);
  // Logprob counts: at most 20 in every API.
  expect_400(post("/generate", {{"text", "x"}, {"return_logprob", true}, {"top_logprobs_num", 21}}), "must be in [0, 20]");
  expect_400(post("/v1/completions", {{"prompt", "x"}, {"logprobs", 21}}), "'logprobs' must be an integer in [0, 20]");
  expect_400(post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"logprobs", true},
                                           {"top_logprobs", 21}}),
             "'top_logprobs' must be an integer in [0, 20]");
  // token_ids_logprob: at most 256 ids per prompt, inside the vocabulary, one list per prompt.
  expect_400(post("/generate", {{"text", "x"}, {"token_ids_logprob", std::vector<int>(257, 1)}}),
             "'token_ids_logprob' has 257 ids; the limit is 256");
  expect_400(post("/generate", {{"text", "x"}, {"token_ids_logprob", {1, 999999}}}), "outside the vocabulary");
  expect_400(post("/generate", {{"text", {"a", "b"}}, {"token_ids_logprob", {{1}, {2}, {3}}}}), "3 lists for 2 prompts");
  expect_400(post("/generate", {{"text", "x"}, {"token_ids_logprob", "1"}}), "must be a list");
  EXPECT_EQ(post("/generate", {{"text", {"a", "b"}}, {"token_ids_logprob", {{1}, {2, 3}}},
                               {"sampling_params", {{"max_new_tokens", 1}}}})
                .status,
            200);
  // Body size: 413 naming --max-request-body-bytes' value.
  auto big = post_raw("/generate", std::string(300000, ' '));
  EXPECT_EQ(big.status, 413);
  EXPECT_NE(big.body.find("200000 bytes"), std::string::npos) << big.body;
}

}  // namespace
}  // namespace pdserve::test
