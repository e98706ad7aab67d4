// The wire format of the PD control channel (ZeroMQ multipart messages, one kind per first frame,
// integers as ASCII like SGLang's mooncake messages) and the pure functions of a transfer: the
// layout check done at registration and the page-run merging + bounded chunking of a send.
//
//   decode -> prefill rank (its PULL socket)
//     REG   session, layout-json, backend-descriptor      once per (decode rank, prefill rank)
//     XFER  room, session, dst-pages (int32 array),       per request, after pre-allocation, to
//           required, dummy                               every prefill attention-TP rank it pairs
//                                                         with (see attn_tp_targets)
//     ABORT room, session, message                        decode gave the request up
//     ACK   room, session                                 KV + metadata arrived (prefill frees)
//   prefill rank -> decode rank (its PULL socket)
//     REGR  prefill-endpoint, "OK" | error message        registration answer
//     DATA  room, blocks (Block array), payload           tcp backend: bytes of one chunk
//     DONE  room, metadata-json                           after the last chunk (the metadata slot)
//     FAIL  room, message                                 the prefill gave the request up
// ZeroMQ keeps the order of messages between two sockets, so DATA always precedes its DONE.
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "scheduler/disagg_hooks.h"
#include "scheduler/model_runner.h"

namespace pdserve::disagg {

// What both sides must agree on for a page of one to mean the same tokens on the other.
struct KvLayout {
  int64_t num_layers = 0;
  int64_t bytes_per_token = 0;  // per layer
  int64_t page_size = 0;
  std::string dtype;
  // The rank's attention-TP group size, and whether its KV is MLA's latent cache, which every
  // attention-TP rank holds whole (not split by heads): only then can sides of different
  // attention-TP sizes pair, one prefill rank's cache standing for its whole group's.
  int64_t attn_tp_size = 1;
  bool mla = true;

  static KvLayout of(const scheduler::KvBufferView& v);
  int64_t bytes_per_page() const { return bytes_per_token * page_size; }
  nlohmann::json to_json() const;
  static Result<KvLayout> from_json(const nlohmann::json& j);
  std::string to_string() const;  // "layers=4 bytes_per_token=320 page_size=1 dtype=f32"
};
// A rank's place in its server's attention-TP group and the kind of its KV cache (KvLayout's
// attn_tp_size and mla). Servers of this build run attention TP 1 with DeepSeek's MLA cache.
struct AttnTp {
  int size = 1;
  int rank = 0;
  bool mla = true;
};

// Error naming both sides' values when they differ. Different attention-TP sizes are accepted for
// MLA caches when one size divides the other, refused otherwise with the reason.
Status check_layout(const KvLayout& prefill, const KvLayout& decode);

// The prefill attention-TP ranks a decode attention-TP rank pairs with (SGLang's rules for MLA):
//   decode size D >= prefill size P: one prefill rank, d / (D / P); it hears from D / P decode ranks
//     and sends the KV to each of them (dests_per_real_rank = D / P);
//   D < P: the P / D ranks from d * (P / D); the first sends the KV, the others get a dummy request
//     (no pages) so that their senders, which run the same prompt in lockstep, can finish.
// ranks[0] is the one that sends the KV. Error when neither size divides the other.
struct AttnTpTargets {
  std::vector<int> ranks;
  int dests_per_real_rank = 1;
};
Result<AttnTpTargets> attn_tp_targets(int decode_tp_size, int decode_tp_rank, int prefill_tp_size);

// A run of pages contiguous on both sides: src_page.., dst_page.., count pages.
struct PageRun {
  int32_t src = 0, dst = 0, count = 0;
};
// Pairs src[i] with dst[i] and merges neighbours contiguous on both sides (SGLang's
// group_concurrent_contiguous). Sizes must match.
std::vector<PageRun> merge_runs(std::span<const int32_t> src, std::span<const int32_t> dst);

// One copy: `len` bytes at byte offsets of layer `layer`'s buffer on each side.
struct Block {
  int32_t layer = 0;
  int32_t reserved = 0;
  int64_t src_offset = 0, dst_offset = 0, len = 0;
};
// The blocks of `runs` over every layer, grouped into chunks of at most max_chunk_bytes (a run is
// split at page boundaries; a single page larger than the bound is its own chunk).
std::vector<std::vector<Block>> plan_chunks(const std::vector<PageRun>& runs, const KvLayout& layout,
                                            int64_t max_chunk_bytes);

// Shared by both managers' state machines.
inline bool terminal(scheduler::KvPoll p) { return p == scheduler::KvPoll::kSuccess || p == scheduler::KvPoll::kFailed; }
inline double seconds(std::chrono::steady_clock::duration d) { return std::chrono::duration<double>(d).count(); }

std::string metadata_to_json(const scheduler::TransferMetadata& m);
Result<scheduler::TransferMetadata> metadata_from_json(std::string_view text);

// Integer arrays as frame bytes (native endian: both ends run on the same architecture, as SGLang
// assumes for its packed pointers).
std::string pack_pages(std::span<const int32_t> pages);
Result<std::vector<int32_t>> unpack_pages(std::string_view bytes);
std::string pack_blocks(std::span<const Block> blocks);
Result<std::vector<Block>> unpack_blocks(std::string_view bytes);
Result<uint64_t> parse_u64(std::string_view s, std::string_view what);

}  // namespace pdserve::disagg
