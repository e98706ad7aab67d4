#include "disagg/protocol.h"

#include <charconv>
#include <cstring>

#include <fmt/format.h>

namespace pdserve::disagg {

KvLayout KvLayout::of(const scheduler::KvBufferView& v) {
  return KvLayout{static_cast<int64_t>(v.layer_ptrs.size()), v.bytes_per_token, v.page_size, v.dtype};
}

nlohmann::json KvLayout::to_json() const {
  return {{"num_layers", num_layers}, {"bytes_per_token", bytes_per_token}, {"page_size", page_size}, {"dtype", dtype},
          {"attn_tp_size", attn_tp_size}, {"mla", mla}};
}

Result<KvLayout> KvLayout::from_json(const nlohmann::json& j) {
  try {
    KvLayout l{j.at("num_layers").get<int64_t>(), j.at("bytes_per_token").get<int64_t>(), j.at("page_size").get<int64_t>(),
               j.at("dtype").get<std::string>()};
    l.attn_tp_size = j.at("attn_tp_size").get<int64_t>();
    l.mla = j.at("mla").get<bool>();
    if (l.attn_tp_size < 1) return make_error(ErrorCode::kInvalidArgument, "bad KV layout in registration: attn_tp_size {}", l.attn_tp_size);
    return l;
  } catch (const std::exception& e) {
    return make_error(ErrorCode::kInvalidArgument, "bad KV layout in registration: {}", e.what());
  }
}

std::string KvLayout::to_string() const {
  return fmt::format("layers={} bytes_per_token={} page_size={} dtype={} attn_tp_size={} kv={}", num_layers, bytes_per_token,
                     page_size, dtype, attn_tp_size, mla ? "mla" : "split-by-heads");
}

Status check_layout(const KvLayout& p, const KvLayout& d) {
  if (p.num_layers != d.num_layers || p.bytes_per_token != d.bytes_per_token || p.page_size != d.page_size ||
      p.dtype != d.dtype || p.mla != d.mla)
    return make_error(ErrorCode::kInvalidArgument, "KV layout mismatch: prefill has {}, decode has {}", p.to_string(),
                      d.to_string());
  if (p.attn_tp_size == d.attn_tp_size) return ok_status();
  if (!p.mla)
    return make_error(ErrorCode::kInvalidArgument,
                      "KV layout mismatch: prefill attention TP size {} and decode attention TP size {} differ, and the KV "
                      "cache is split by heads; only an MLA latent cache (whole on every attention-TP rank) can pair "
                      "different attention-TP sizes (prefill has {}, decode has {})",
                      p.attn_tp_size, d.attn_tp_size, p.to_string(), d.to_string());
  if (p.attn_tp_size % d.attn_tp_size != 0 && d.attn_tp_size % p.attn_tp_size != 0)
    return make_error(ErrorCode::kInvalidArgument,
                      "KV layout mismatch: prefill attention TP size {} and decode attention TP size {}: one must divide "
                      "the other",
                      p.attn_tp_size, d.attn_tp_size);
  return ok_status();
}

Result<AttnTpTargets> attn_tp_targets(int decode_tp_size, int decode_tp_rank, int prefill_tp_size) {
  if (decode_tp_size < 1 || prefill_tp_size < 1 || decode_tp_rank < 0 || decode_tp_rank >= decode_tp_size)
    return make_error(ErrorCode::kInvalidArgument, "bad attention TP: decode rank {} of {}, prefill size {}", decode_tp_rank,
                      decode_tp_size, prefill_tp_size);
  if (decode_tp_size % prefill_tp_size != 0 && prefill_tp_size % decode_tp_size != 0)
    return make_error(ErrorCode::kInvalidArgument,
                      "prefill attention TP size {} and decode attention TP size {}: one must divide the other",
                      prefill_tp_size, decode_tp_size);
  AttnTpTargets t;
  if (decode_tp_size >= prefill_tp_size) {
    const int ratio = decode_tp_size / prefill_tp_size;
    t.ranks = {decode_tp_rank / ratio};
    t.dests_per_real_rank = ratio;
  } else {
    const int ratio = prefill_tp_size / decode_tp_size;
    for (int i = 0; i < ratio; ++i) t.ranks.push_back(decode_tp_rank * ratio + i);
  }
  return t;
}

std::vector<PageRun> merge_runs(std::span<const int32_t> src, std::span<const int32_t> dst) {
  std::vector<PageRun> runs;
  for (size_t i = 0; i < src.size() && i < dst.size(); ++i) {
    if (!runs.empty()) {
      PageRun& b = runs.back();
      if (b.src + b.count == src[i] && b.dst + b.count == dst[i]) {
        ++b.count;
        continue;
      }
    }
    runs.push_back({src[i], dst[i], 1});
  }
  return runs;
}

std::vector<std::vector<Block>> plan_chunks(const std::vector<PageRun>& runs, const KvLayout& layout,
                                            int64_t max_chunk_bytes) {
  const int64_t page_bytes = layout.bytes_per_page();
  const int64_t layers = std::max<int64_t>(layout.num_layers, 1);
  // Pages of one run taken at a time (all layers), so that a chunk stays within the bound.
  const int64_t seg_pages = std::max<int64_t>(1, max_chunk_bytes / std::max<int64_t>(page_bytes * layers, 1));
  std::vector<std::vector<Block>> chunks;
  int64_t chunk_bytes = 0;
  for (const auto& r : runs) {
    for (int64_t done = 0; done < r.count;) {
      const int64_t n = std::min<int64_t>(seg_pages, r.count - done);
      const int64_t bytes = n * page_bytes * layers;
      if (chunks.empty() || (chunk_bytes > 0 && chunk_bytes + bytes > max_chunk_bytes)) {
        chunks.emplace_back();
        chunk_bytes = 0;
      }
      for (int64_t l = 0; l < layout.num_layers; ++l)
        chunks.back().push_back(Block{static_cast<int32_t>(l), 0, (r.src + done) * page_bytes, (r.dst + done) * page_bytes,
                                      n * page_bytes});
      chunk_bytes += bytes;
      done += n;
    }
  }
  return chunks;
}

std::string metadata_to_json(const scheduler::TransferMetadata& m) {
  nlohmann::json j = {{"output_id", m.first_token}, {"cached_tokens", m.cached_tokens}};
  if (m.has_logprob) {
    j["logprob"] = m.logprob;
    nlohmann::json top = nlohmann::json::array();
    for (const auto& [lp, id] : m.top_logprobs) top.push_back({lp, id});
    j["top_logprobs"] = top;
  }
  return j.dump();
}

Result<scheduler::TransferMetadata> metadata_from_json(std::string_view text) {
  try {
    const auto j = nlohmann::json::parse(text);
    scheduler::TransferMetadata m;
    m.first_token = j.at("output_id").get<int32_t>();
    m.cached_tokens = j.at("cached_tokens").get<int64_t>();
    if (j.contains("logprob")) {
      m.has_logprob = true;
      m.logprob = j["logprob"].get<float>();
      for (const auto& e : j.at("top_logprobs")) m.top_logprobs.emplace_back(e.at(0).get<float>(), e.at(1).get<int32_t>());
    }
    return m;
  } catch (const std::exception& e) {
    return make_error(ErrorCode::kInvalidArgument, "bad transfer metadata: {}", e.what());
  }
}

namespace {

template <typename T>
std::string pack(std::span<const T> v) {
  std::string s(v.size() * sizeof(T), '\0');
  if (!v.empty()) std::memcpy(s.data(), v.data(), s.size());
  return s;
}

template <typename T>
Result<std::vector<T>> unpack(std::string_view bytes, const char* what) {
  if (bytes.size() % sizeof(T) != 0)
    return make_error(ErrorCode::kInvalidArgument, "{} frame of {} bytes is not a whole number of entries", what, bytes.size());
  std::vector<T> v(bytes.size() / sizeof(T));
  if (!v.empty()) std::memcpy(v.data(), bytes.data(), bytes.size());
  return v;
}

}  // namespace

std::string pack_pages(std::span<const int32_t> pages) { return pack(pages); }
Result<std::vector<int32_t>> unpack_pages(std::string_view bytes) { return unpack<int32_t>(bytes, "page"); }
std::string pack_blocks(std::span<const Block> blocks) { return pack(blocks); }
Result<std::vector<Block>> unpack_blocks(std::string_view bytes) { return unpack<Block>(bytes, "block"); }

Result<uint64_t> parse_u64(std::string_view s, std::string_view what) {
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size())
    return make_error(ErrorCode::kInvalidArgument, "bad {} '{}'", what, std::string(s));
  return v;
}

}  // namespace pdserve::disagg
