#include "model/gpu_host_inputs.h"

#include <algorithm>

namespace pdserve::model {

HostInputs flatten(const std::vector<SequenceInput>& batch, int64_t page_size, int64_t pad_to, int64_t table_width) {
  HostInputs in;
  in.seqs = static_cast<int64_t>(batch.size());
  in.decode = true;
  for (const auto& s : batch) {
    in.decode = in.decode && s.tokens.size() == 1 && s.prefix_len > 0;
    in.max_pages = std::max<int64_t>(in.max_pages, static_cast<int64_t>(s.page_table.size()));
  }
  if (table_width > 0) in.max_pages = table_width;
  const int64_t rows = std::max(pad_to, in.seqs);
  in.page_table.assign(static_cast<size_t>(rows * in.max_pages), 0);
  in.cu_q.push_back(0);
  in.cu_kv.push_back(0);
  for (int64_t b = 0; b < in.seqs; ++b) {
    const auto& s = batch[static_cast<size_t>(b)];
    const int64_t n = static_cast<int64_t>(s.tokens.size()), total = s.prefix_len + n;
    std::copy(s.page_table.begin(), s.page_table.end(), in.page_table.begin() + b * in.max_pages);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t pos = s.prefix_len + i;
      in.ids.push_back(s.tokens[static_cast<size_t>(i)]);
      in.positions.push_back(static_cast<int32_t>(pos));
      in.slots.push_back(static_cast<int32_t>(s.page_table[static_cast<size_t>(pos / page_size)] * page_size + pos % page_size));
    }
    in.tokens += n;
    in.last_rows.push_back(static_cast<int32_t>(in.tokens - 1));
    in.seq_lens.push_back(static_cast<int32_t>(total));
    in.max_q = std::max(in.max_q, n);
    in.max_seq_len = std::max(in.max_seq_len, total);
    if (!in.decode) {
      for (int64_t p = 0; p < total; ++p) {
        in.kv_batch.push_back(static_cast<int32_t>(b));
        in.kv_pos.push_back(static_cast<int32_t>(p));
      }
      in.kv_tokens += total;
      in.cu_q.push_back(static_cast<int32_t>(in.tokens));
      in.cu_kv.push_back(static_cast<int32_t>(in.kv_tokens));
    }
  }
  // Padding rows of a captured batch: id 0 at position 0, no cache write, empty context.
  for (int64_t b = in.seqs; b < rows; ++b) {
    in.ids.push_back(0);
    in.positions.push_back(0);
    in.slots.push_back(-1);
    in.seq_lens.push_back(0);
    in.last_rows.push_back(static_cast<int32_t>(b));
  }
  return in;
}

}  // namespace pdserve::model
