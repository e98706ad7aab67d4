#include <gtest/gtest.h>

#include "disagg/options.h"
#include "disagg/protocol.h"

namespace pdserve::disagg {
namespace {

TEST(MergeRuns, MergesPagesContiguousOnBothSides) {
  const std::vector<int32_t> src = {4, 5, 6, 10, 11, 12};
  const std::vector<int32_t> dst = {0, 1, 2, 3, 9, 10};
  const auto runs = merge_runs(src, dst);
  ASSERT_EQ(runs.size(), 3u);
  EXPECT_EQ(runs[0].src, 4);
  EXPECT_EQ(runs[0].dst, 0);
  EXPECT_EQ(runs[0].count, 3);
  // 10 -> 3 does not continue 6 -> 2 on the source side; 11 -> 9 breaks the destination side.
  EXPECT_EQ(runs[1].count, 1);
  EXPECT_EQ(runs[2].src, 11);
  EXPECT_EQ(runs[2].count, 2);
}

TEST(PlanChunks, EveryChunkStaysWithinTheBoundAndCoversEveryByte) {
  const KvLayout layout{3, 100, 4, "f32"};  // 400 bytes per page per layer
  const std::vector<PageRun> runs = {{0, 10, 7}, {20, 50, 2}};
  const auto chunks = plan_chunks(runs, layout, 2400);  // 2 pages x 3 layers
  int64_t total = 0;
  for (const auto& c : chunks) {
    int64_t bytes = 0;
    for (const auto& b : c) {
      bytes += b.len;
      EXPECT_EQ(b.src_offset % 400, 0);
      EXPECT_EQ(b.dst_offset % 400, 0);
    }
    EXPECT_LE(bytes, 2400);
    total += bytes;
  }
  EXPECT_EQ(total, 9 * 3 * 400);
  // The destination of run 0's page 0 in layer 2 is page 10.
  EXPECT_EQ(chunks[0][2].layer, 2);
  EXPECT_EQ(chunks[0][2].dst_offset, 10 * 400);
}

TEST(PlanChunks, APageLargerThanTheBoundIsItsOwnChunk) {
  const KvLayout layout{2, 1000, 1, "f32"};
  const auto chunks = plan_chunks({{0, 0, 3}}, layout, 10);
  EXPECT_EQ(chunks.size(), 3u);
  for (const auto& c : chunks) EXPECT_EQ(c.size(), 2u);
}

TEST(Layout, MismatchNamesBothSides) {
  const KvLayout p{61, 1152, 64, "bf16"}, d{61, 2304, 64, "f32"};
  auto st = check_layout(p, d);
  ASSERT_FALSE(st.has_value());
  EXPECT_NE(st.error().message().find("prefill has layers=61 bytes_per_token=1152 page_size=64 dtype=bf16"), std::string::npos);
  EXPECT_NE(st.error().message().find("decode has layers=61 bytes_per_token=2304 page_size=64 dtype=f32"), std::string::npos);
  EXPECT_TRUE(check_layout(p, p).has_value());
  auto back = KvLayout::from_json(p.to_json());
  ASSERT_TRUE(back.has_value());
  EXPECT_TRUE(check_layout(*back, p).has_value());
}

TEST(Frames, PagesBlocksAndMetadataRoundTrip) {
  const std::vector<int32_t> pages = {3, 1, 4, 1, 5};
  EXPECT_EQ(*unpack_pages(pack_pages(pages)), pages);
  EXPECT_FALSE(unpack_pages("abc").has_value());
  const std::vector<Block> blocks = {{1, 0, 10, 20, 30}};
  auto b = unpack_blocks(pack_blocks(blocks));
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ((*b)[0].dst_offset, 20);
  scheduler::TransferMetadata m;
  m.first_token = 42;
  m.cached_tokens = 7;
  m.has_logprob = true;
  m.logprob = -0.5f;
  m.top_logprobs = {{-0.5f, 42}, {-1.5f, 9}};
  auto m2 = metadata_from_json(metadata_to_json(m));
  ASSERT_TRUE(m2.has_value());
  EXPECT_EQ(m2->first_token, 42);
  EXPECT_EQ(m2->cached_tokens, 7);
  EXPECT_FLOAT_EQ(m2->logprob, -0.5f);
  EXPECT_EQ(m2->top_logprobs.size(), 2u);
  EXPECT_FALSE(metadata_from_json("{").has_value());
  EXPECT_FALSE(parse_u64("12x", "room").has_value());
  EXPECT_EQ(*parse_u64("9223372036854775807", "room"), 9223372036854775807ull);
}

TEST(Options, BackendsOfOtherBuildsFailListingWhatThisBuildHas) {
  EXPECT_EQ(*parse_backend("tcp"), Backend::kTcp);
  EXPECT_EQ(*parse_backend("fake"), Backend::kFake);
  for (const char* name : {"mooncake", "nixl", "bogus"}) {
    auto b = parse_backend(name);
    ASSERT_FALSE(b.has_value()) << name;
    EXPECT_NE(b.error().message().find(name), std::string::npos);
    EXPECT_NE(b.error().message().find("this build has: tcp, fake"), std::string::npos) << b.error().message();
  }
  EXPECT_FALSE(parse_mode("both").has_value());
}

TEST(Options, EnvironmentTimeoutsAndTheirMinimums) {
  ::setenv("SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT", "12.5", 1);
  ::setenv("SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL", "0.1", 1);  // SGLang's minimum is 2 s
  ::setenv("PDSERVE_DISAGGREGATION_WAITING_TIMEOUT", "7", 1);
  DisaggOptions o;
  ASSERT_TRUE(load_disagg_env(o).has_value());
  EXPECT_DOUBLE_EQ(o.bootstrap_timeout_s, 12.5);
  EXPECT_DOUBLE_EQ(o.heartbeat_interval_s, 2.0);
  EXPECT_DOUBLE_EQ(o.waiting_timeout_s, 7.0);
  ::setenv("DISAGGREGATION_TEST_FAILURE_PROB", "abc", 1);
  auto st = load_disagg_env(o);
  ASSERT_FALSE(st.has_value());
  EXPECT_NE(st.error().message().find("DISAGGREGATION_TEST_FAILURE_PROB"), std::string::npos);
  for (const char* n : {"SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT", "SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL",
                        "PDSERVE_DISAGGREGATION_WAITING_TIMEOUT", "DISAGGREGATION_TEST_FAILURE_PROB"})
    ::unsetenv(n);
}

}  // namespace
}  // namespace pdserve::disagg
