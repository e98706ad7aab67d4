// The host-side flattening of a GPU forward's batch (model/gpu_host_inputs.h).
#include <gtest/gtest.h>

#include "model/gpu_host_inputs.h"

namespace pdserve::model {
namespace {

TEST(GpuHostInputs, FlattensAPrefillAndPadsACapturedBatch) {
  // Page size 4: sequence 0 is 3 new tokens after a 2-token prefix on pages {7, 2}; sequence 1
  // one new token after 5 cached on pages {1, 9}.
  std::vector<SequenceInput> batch(2);
  batch[0].tokens = {11, 12, 13};
  batch[0].prefix_len = 2;
  batch[0].page_table = {7, 2};
  batch[1].tokens = {21};
  batch[1].prefix_len = 5;
  batch[1].page_table = {1, 9};
  const HostInputs h = flatten(batch, 4, /*pad_to=*/3, /*table_width=*/0);
  EXPECT_FALSE(h.decode);  // sequence 0 extends by 3 tokens
  EXPECT_EQ(h.tokens, 4);
  EXPECT_EQ(h.seqs, 2);
  EXPECT_EQ(h.ids, (std::vector<int32_t>{11, 12, 13, 21, 0}));
  EXPECT_EQ(h.positions, (std::vector<int32_t>{2, 3, 4, 5, 0}));
  // pos 2, 3 on page 7 (slots 30, 31), pos 4 on page 2 (slot 8); pos 5 on page 9 (37); padding -1.
  EXPECT_EQ(h.slots, (std::vector<int32_t>{30, 31, 8, 37, -1}));
  EXPECT_EQ(h.seq_lens, (std::vector<int32_t>{5, 6, 0}));
  EXPECT_EQ(h.last_rows, (std::vector<int32_t>{2, 3, 2}));
  EXPECT_EQ(h.page_table, (std::vector<int32_t>{7, 2, 1, 9, 0, 0}));
  EXPECT_EQ(h.cu_q, (std::vector<int32_t>{0, 3, 4}));
  EXPECT_EQ(h.cu_kv, (std::vector<int32_t>{0, 5, 11}));
  EXPECT_EQ(h.kv_tokens, 11);
  EXPECT_EQ(h.max_q, 3);
  EXPECT_EQ(h.max_seq_len, 6);
}

TEST(GpuHostInputs, DecodeBatchKeepsNoKvIndexAndHonoursTheTableWidth) {
  std::vector<SequenceInput> batch(1);
  batch[0].tokens = {5};
  batch[0].prefix_len = 1;
  batch[0].page_table = {3};
  const HostInputs h = flatten(batch, 16, 0, /*table_width=*/4);
  EXPECT_TRUE(h.decode);
  EXPECT_EQ(h.max_pages, 4);
  EXPECT_EQ(h.page_table, (std::vector<int32_t>{3, 0, 0, 0}));
  EXPECT_TRUE(h.kv_batch.empty());
  EXPECT_EQ(h.slots, (std::vector<int32_t>{3 * 16 + 1}));
}

}  // namespace
}  // namespace pdserve::model
