// ServerArgs::resolve_parallel: what SGLang changes in the user's flags under DP attention.
#include "server/server_args.h"

#include <gtest/gtest.h>

#include "server/parsed_server_args.h"

namespace pdserve::server {
namespace {

TEST(ServerArgs, DpAttentionSharesTheChunkAndSchedulesLessConservatively) {
  ServerArgs a = parsed({"--tp-size", "4", "--dp-size", "4", "--enable-dp-attention", "--chunked-prefill-size", "16384",
                         "--schedule-conservativeness", "2"});
  ASSERT_TRUE(a.resolve_parallel().has_value());
  EXPECT_EQ(a.chunked_prefill_size, 4096);
  EXPECT_DOUBLE_EQ(a.schedule_conservativeness, 0.6);
  ASSERT_EQ(a.adjustments.size(), 1u);
  EXPECT_EQ(a.adjustments[0], "DP attention is enabled. The chunked prefill size is adjusted to 4096 to avoid MoE kernel "
                              "issues. ");
}

TEST(ServerArgs, OneDpRankChangesNothing) {
  ServerArgs a = parsed({"--dp-size", "1", "--enable-dp-attention", "--chunked-prefill-size", "16384"});
  ASSERT_TRUE(a.resolve_parallel().has_value());
  EXPECT_EQ(a.chunked_prefill_size, 16384);
  EXPECT_DOUBLE_EQ(a.schedule_conservativeness, 1.0);
  EXPECT_TRUE(a.adjustments.empty());
  ServerArgs b = parsed({"--dp-size", "2", "--chunked-prefill-size", "16384"});  // no DP attention: data parallel servers
  ASSERT_TRUE(b.resolve_parallel().has_value());
  EXPECT_EQ(b.chunked_prefill_size, 16384);
  EXPECT_TRUE(b.adjustments.empty());
}

}  // namespace
}  // namespace pdserve::server
