#include "router/pd_request.h"

#include <gtest/gtest.h>

#include "router/worker.h"

namespace pdserve::router {
namespace {

using json = nlohmann::json;

TEST(PdRequest, BatchDetectionFollowsMiniLb) {
  EXPECT_EQ(batch_size(json{{"text", "hi"}}, RouteKind::kGenerate), 0u);
  EXPECT_EQ(batch_size(json{{"text", {"a", "b", "c"}}}, RouteKind::kGenerate), 3u);
  EXPECT_EQ(batch_size(json{{"input_ids", {1, 2, 3}}}, RouteKind::kGenerate), 0u);
  EXPECT_EQ(batch_size(json{{"input_ids", {{1, 2}, {3}}}}, RouteKind::kGenerate), 2u);
  EXPECT_EQ(batch_size(json{{"prompt", {"a", "b"}}}, RouteKind::kCompletions), 0u);
}

TEST(PdRequest, BootstrapScalarAndPerItem) {
  json single{{"text", "hi"}};
  auto rooms = make_rooms(0);
  ASSERT_EQ(rooms.size(), 1u);
  inject_bootstrap(single, "10.0.0.1", 8998, rooms, 0);
  EXPECT_EQ(single["bootstrap_host"], "10.0.0.1");
  EXPECT_EQ(single["bootstrap_port"], 8998);
  EXPECT_EQ(single["bootstrap_room"], rooms[0]);

  json batch{{"text", {"a", "b", "c"}}};
  auto r3 = make_rooms(3);
  inject_bootstrap(batch, "[::1]", std::nullopt, r3, 3);
  ASSERT_EQ(batch["bootstrap_room"].size(), 3u);
  EXPECT_EQ(batch["bootstrap_host"], json({"[::1]", "[::1]", "[::1]"}));
  EXPECT_EQ(batch["bootstrap_port"], json({nullptr, nullptr, nullptr}));
  EXPECT_NE(batch["bootstrap_room"][0], batch["bootstrap_room"][1]);
}

TEST(PdRequest, RoomsAre63Bit) {
  for (int i = 0; i < 1000; ++i) {
    auto r = make_rooms(1)[0];
    EXPECT_LT(r, uint64_t{1} << 63);
  }
}

TEST(PdRequest, BootstrapHostBracketsIpv6) {
  Worker v6("http://[::1]:30000", WorkerType::kPrefill, 8998, {});
  EXPECT_EQ(v6.bootstrap_host(), "[::1]");
  Worker v4("http://127.0.0.1:30000", WorkerType::kPrefill, std::nullopt, {});
  EXPECT_EQ(v4.bootstrap_host(), "127.0.0.1");
  Worker name("http://prefill-0:30000", WorkerType::kPrefill, std::nullopt, {});
  EXPECT_EQ(name.bootstrap_host(), "prefill-0");
}

TEST(PdRequest, RidKeptOrAddedPerItem) {
  json mine{{"text", "x"}, {"rid", "client-1"}};
  EXPECT_EQ(ensure_rid(mine, 0, make_rooms(0)), std::vector<std::string>{"client-1"});
  EXPECT_EQ(mine["rid"], "client-1");
  json none{{"text", {"a", "b"}}};
  auto rids = ensure_rid(none, 2, make_rooms(2));
  ASSERT_EQ(rids.size(), 2u);
  EXPECT_EQ(none["rid"], json(rids));
  EXPECT_NE(rids[0], rids[1]);
}

TEST(PdRequest, RequestText) {
  EXPECT_EQ(request_text(json{{"text", "hello"}}, RouteKind::kGenerate), "hello");
  EXPECT_EQ(request_text(json{{"text", {"a", "b"}}}, RouteKind::kGenerate), "a");
  EXPECT_EQ(request_text(json{{"prompt", "p"}}, RouteKind::kCompletions), "p");
  EXPECT_EQ(request_text(json{{"messages", {{{"role", "user"}, {"content", "hi"}}}}}, RouteKind::kChat), "hi\n");
  EXPECT_EQ(request_text(json{{"input_ids", {1, 2}}}, RouteKind::kGenerate), "[1,2]");
}

TEST(PdRequest, LogprobMergeNonStream) {
  EXPECT_TRUE(wants_logprob(json{{"return_logprob", true}}));
  EXPECT_FALSE(wants_logprob(json{{"return_logprob", false}}));
  EXPECT_FALSE(wants_logprob(json{{"text", "x"}}));
  std::string prefill = R"({"text":"","meta_info":{"input_token_logprobs":[[null,1,null],[-0.5,2,null]]}})";
  std::string decode = R"({"text":"ok","meta_info":{"input_token_logprobs":[[-0.1,3,null]],"id":"r"}})";
  auto merged = merge_logprobs(prefill, decode);
  ASSERT_TRUE(merged);
  json m = json::parse(*merged);
  EXPECT_EQ(m["text"], "ok");
  EXPECT_EQ(m["meta_info"]["input_token_logprobs"], json::parse(R"([[null,1,null],[-0.5,2,null],[-0.1,3,null]])"));
  EXPECT_EQ(m["meta_info"]["id"], "r");
  // Batch: per item.
  auto mb = merge_logprobs(R"([{"meta_info":{"input_token_logprobs":[[1,1,null]]}},{"meta_info":{"input_token_logprobs":[[2,2,null]]}}])",
                           R"([{"meta_info":{}},{"meta_info":{"input_token_logprobs":[[3,3,null]]}}])");
  ASSERT_TRUE(mb);
  json b = json::parse(*mb);
  EXPECT_EQ(b[0]["meta_info"]["input_token_logprobs"], json::parse("[[1,1,null]]"));
  EXPECT_EQ(b[1]["meta_info"]["input_token_logprobs"], json::parse("[[2,2,null],[3,3,null]]"));
  EXPECT_FALSE(merge_logprobs("not json", decode));
}

TEST(PdRequest, LogprobMergeStream) {
  PrefillLogprobs p;
  p.add_event(R"({"meta_info":{"input_token_logprobs":[[null,7,null]]}})");
  p.add_event(R"({"meta_info":{"input_token_logprobs":[[null,8,null]]}})");  // only the first counts
  p.add_event("[DONE]");
  json e = json::parse(p.apply(R"({"text":"a","meta_info":{"input_token_logprobs":[]}})"));
  EXPECT_EQ(e["meta_info"]["input_token_logprobs"], json::parse("[[null,7,null]]"));
  EXPECT_EQ(p.apply("[DONE]"), "[DONE]");
}

}  // namespace
}  // namespace pdserve::router
