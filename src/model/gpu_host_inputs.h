// The host side of a GPU forward: a batch of sequences flattened into the index arrays the kernels
// read (token ids, positions, cache slots, page tables, prefix sums), built on the host and
// uploaded with one copy. No CUDA here, so it builds and is testable everywhere.
#pragma once

#include <cstdint>
#include <vector>

#include "model/deepseek_v3.h"

namespace pdserve::model {

// One forward's inputs, flattened on the host, uploaded with one copy.
struct HostInputs {
  int64_t tokens = 0, seqs = 0, kv_tokens = 0, max_q = 0, max_pages = 0, max_seq_len = 0;
  bool decode = false;  // every sequence: one new token after a prefix
  std::vector<int32_t> ids, positions, slots, seq_lens, page_table, cu_q, cu_kv, kv_batch, kv_pos, last_rows;
};

// `pad_to`: rows of a captured batch (padding rows: id 0 at position 0, no cache write, empty
// context); `table_width` > 0 fixes the page-table width (a graph's static inputs).
HostInputs flatten(const std::vector<SequenceInput>& batch, int64_t page_size, int64_t pad_to, int64_t table_width);

}  // namespace pdserve::model
