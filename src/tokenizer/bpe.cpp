#include "tokenizer/bpe.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <functional>
#include <queue>

#include <nlohmann/json.hpp>

#include "tokenizer/utf8.h"

namespace pdserve::tokenizer {

ByteLevelAlphabet::ByteLevelAlphabet() {
  cp_to_byte.fill(-1);
  uint32_t extra = 0;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    const uint32_t cp = printable ? b : 256 + extra++;
    byte_to_cp[b] = cp;
    cp_to_byte[cp] = static_cast<int16_t>(b);
  }
}

bool ByteLevelAlphabet::to_bytes(std::string_view spelled, std::string& bytes) const {
  bytes.clear();
  if (find_invalid_utf8(spelled) != std::string_view::npos) return false;
  for (size_t i = 0; i < spelled.size();) {
    const uint32_t cp = next_code_point(spelled, i);
    if (cp >= cp_to_byte.size() || cp_to_byte[cp] < 0) return false;
    bytes.push_back(static_cast<char>(cp_to_byte[cp]));
  }
  return true;
}

std::string ByteLevelAlphabet::to_spelled(std::string_view bytes) const {
  std::string out;
  for (unsigned char b : bytes) append_code_point(byte_to_cp[b], out);
  return out;
}

void MergeTable::reserve(size_t n) {
  size_t cap = 16;
  int bits = 4;
  while (cap < n * 2) {
    cap <<= 1;
    ++bits;
  }
  slots_.assign(cap, Entry{});
  mask_ = cap - 1;
  shift_ = 64 - bits;
}

bool MergeTable::insert(int32_t left, int32_t right, int32_t rank, int32_t merged) {
  const uint64_t key = make_key(left, right);
  size_t i = hash(key);
  while (slots_[i].key != kEmpty) {
    if (slots_[i].key == key) return false;
    i = (i + 1) & mask_;
  }
  slots_[i] = Entry{key, rank, merged};
  return true;
}

uint64_t WordCache::hash_word(std::string_view w) {
  // A multiply-xorshift hash over 8-byte chunks: words are short, and quality only needs to be
  // good enough for linear probing at load <= 1/2.
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (w.size() * 0xFF51AFD7ED558CCDull);
  size_t i = 0;
  for (; i + 8 <= w.size(); i += 8) {
    uint64_t c;
    std::memcpy(&c, w.data() + i, 8);
    h = (h ^ c) * 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 29;
  }
  if (i < w.size()) {
    uint64_t c = 0;
    std::memcpy(&c, w.data() + i, w.size() - i);
    h = (h ^ c) * 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 29;
  }
  h *= 0xFF51AFD7ED558CCDull;
  return h ^ (h >> 32);
}

std::pair<const int32_t*, size_t> WordCache::find(std::string_view word, uint64_t hash) const {
  if (slots_.empty()) return {nullptr, 0};
  for (size_t i = hash & (kSlots - 1);; i = (i + 1) & (kSlots - 1)) {
    const Slot& s = slots_[i];
    if (s.key_length == 0) return {nullptr, 0};
    if (s.hash == hash && s.key_length == word.size() && std::memcmp(keys_.data() + s.key_offset, word.data(), word.size()) == 0)
      return {ids_.data() + s.ids_offset, s.ids_count};
  }
}

void WordCache::insert(std::string_view word, uint64_t hash, const int32_t* ids, size_t n) {
  if (slots_.empty()) slots_.resize(kSlots);
  if (used_ >= kSlots / 2) clear();
  size_t i = hash & (kSlots - 1);
  while (slots_[i].key_length != 0) i = (i + 1) & (kSlots - 1);
  slots_[i] = Slot{hash, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(ids_.size()),
                   static_cast<uint16_t>(word.size()), static_cast<uint16_t>(n)};
  keys_.append(word);
  ids_.insert(ids_.end(), ids, ids + n);
  ++used_;
}

void WordCache::clear() {
  if (used_ == 0) return;
  std::fill(slots_.begin(), slots_.end(), Slot{});
  used_ = 0;
  keys_.clear();
  ids_.clear();
}

void WordCache::bind(const std::shared_ptr<int>& owner) {
  // owner_before on both sides compares control blocks: equal means the same tokenizer. A weak_ptr
  // keeps its control block alive, so a new tokenizer can never be mistaken for a dead one.
  if (owner_.owner_before(owner) || owner.owner_before(owner_) || owner_.expired()) {
    clear();
    owner_ = owner;
  }
}

Result<std::unique_ptr<BpeModel>> BpeModel::from_json(const nlohmann::json& model, std::vector<std::string>& id_bytes) {
  auto m = std::unique_ptr<BpeModel>(new BpeModel());
  if (!model.is_object() || model.value("type", std::string()) != "BPE")
    return make_error(ErrorCode::kUnsupported, "model.type must be \"BPE\"");
  if (model.contains("byte_fallback") && model["byte_fallback"].is_boolean() && model["byte_fallback"].get<bool>())
    return make_error(ErrorCode::kUnsupported, "model.byte_fallback = true is not supported");
  if (model.contains("dropout") && !model["dropout"].is_null())
    return make_error(ErrorCode::kUnsupported, "model.dropout is not supported");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && !model[key].is_null() && model[key] != "")
      return make_error(ErrorCode::kUnsupported, "model.{} is not supported", key);
  }
  if (!model.contains("vocab") || !model["vocab"].is_object())
    return make_error(ErrorCode::kCorrupt, "model.vocab must be an object");
  if (!model.contains("merges") || !model["merges"].is_array())
    return make_error(ErrorCode::kCorrupt, "model.merges must be an array");

  const auto& vocab = model["vocab"];
  m->bytes_to_id_.reserve(vocab.size() * 2);
  std::string bytes;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 || it.value().get<int64_t>() >= kMaxTokenIds)
      return make_error(ErrorCode::kCorrupt, "model.vocab[\"{}\"] must be an integer in [0, {})", it.key(), kMaxTokenIds);
    const auto id = it.value().get<int32_t>();
    if (static_cast<size_t>(id) >= id_bytes.size()) id_bytes.resize(static_cast<size_t>(id) + 1);
    if (!m->alphabet_.to_bytes(it.key(), bytes)) {
      // A token outside the byte-level alphabet (DeepSeek's "<｜begin▁of▁sentence｜>"): BPE can never
      // produce it, and the ByteLevel decoder passes its text through unchanged.
      id_bytes[static_cast<size_t>(id)] = it.key();
      m->raw_tokens_.emplace(it.key(), id);
      continue;
    }
    id_bytes[static_cast<size_t>(id)] = bytes;
    if (!m->bytes_to_id_.emplace(bytes, id).second)
      return make_error(ErrorCode::kCorrupt, "model.vocab has two tokens for the bytes of \"{}\"", it.key());
  }
  for (int b = 0; b < 256; ++b) {
    auto id = m->id_of_bytes(std::string(1, static_cast<char>(b)));
    if (!id) return make_error(ErrorCode::kCorrupt, "model.vocab has no token for byte {}", b);
    m->byte_id_[static_cast<size_t>(b)] = *id;
  }

  const auto& merges = model["merges"];
  m->merges_.reserve(merges.size());
  std::string left, right;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& e = merges[rank];
    std::string_view l, r;
    std::string joined;
    if (e.is_string()) {  // "left right"
      const auto& s = e.get_ref<const std::string&>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        return make_error(ErrorCode::kCorrupt, "model.merges[{}] \"{}\" is not two tokens", rank, s);
      l = std::string_view(s).substr(0, sp);
      r = std::string_view(s).substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {  // ["left", "right"]
      l = e[0].get_ref<const std::string&>();
      r = e[1].get_ref<const std::string&>();
    } else {
      return make_error(ErrorCode::kCorrupt, "model.merges[{}] must be \"a b\" or [\"a\", \"b\"]", rank);
    }
    if (!m->alphabet_.to_bytes(l, left) || !m->alphabet_.to_bytes(r, right))
      return make_error(ErrorCode::kCorrupt, "model.merges[{}] uses characters outside the byte-level alphabet", rank);
    auto lid = m->id_of_bytes(left), rid = m->id_of_bytes(right), mid = m->id_of_bytes(left + right);
    if (!lid || !rid || !mid)
      return make_error(ErrorCode::kCorrupt, "model.merges[{}] (\"{}\" + \"{}\") names a token not in the vocab", rank, l, r);
    m->merges_.insert(*lid, *rid, static_cast<int32_t>(rank), *mid);
  }
  return m;
}

std::optional<int32_t> BpeModel::id_of_spelling(std::string_view spelled) const {
  if (auto it = raw_tokens_.find(spelled); it != raw_tokens_.end()) return it->second;
  std::string bytes;
  if (!alphabet_.to_bytes(spelled, bytes)) return std::nullopt;
  return id_of_bytes(bytes);
}

std::optional<int32_t> BpeModel::id_of_bytes(std::string_view bytes) const {
  auto it = bytes_to_id_.find(bytes);
  if (it == bytes_to_id_.end()) return std::nullopt;
  return it->second;
}

namespace {
constexpr size_t kSmallWord = 48;
}

void BpeModel::merge_small(const int32_t* in, size_t n, std::vector<int32_t>& out) const {
  // ranks[i] is the rank of the pair (ids[i], ids[i+1]); only the two pairs next to a merge change.
  int32_t ids[kSmallWord], ranks[kSmallWord], merged[kSmallWord];
  std::memcpy(ids, in, n * sizeof(int32_t));
  auto set_pair = [&](size_t i) {
    const MergeTable::Entry* e = merges_.find(ids[i], ids[i + 1]);
    ranks[i] = e ? e->rank : INT32_MAX;
    merged[i] = e ? e->merged : -1;
  };
  for (size_t i = 0; i + 1 < n; ++i) set_pair(i);
  size_t len = n;
  while (len > 1) {
    size_t best = 0;
    int32_t best_rank = ranks[0];
    for (size_t i = 1; i + 1 < len; ++i) {
      if (ranks[i] < best_rank) {
        best_rank = ranks[i];
        best = i;
      }
    }
    if (best_rank == INT32_MAX) break;
    ids[best] = merged[best];
    const size_t tail = len - best - 2;  // pairs/ids after the removed one
    std::memmove(ids + best + 1, ids + best + 2, tail * sizeof(int32_t));
    std::memmove(ranks + best + 1, ranks + best + 2, (tail > 0 ? tail - 1 : 0) * sizeof(int32_t));
    std::memmove(merged + best + 1, merged + best + 2, (tail > 0 ? tail - 1 : 0) * sizeof(int32_t));
    --len;
    if (best > 0) set_pair(best - 1);
    if (best + 1 < len) set_pair(best);
  }
  out.insert(out.end(), ids, ids + len);
}

void BpeModel::merge_large(const int32_t* in, size_t n, std::vector<int32_t>& out) const {
  struct Sym {
    int32_t id, prev, next;
  };
  struct Cand {
    int32_t rank, pos, left, right;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::vector<Sym> syms(n);
  for (size_t i = 0; i < n; ++i)
    syms[i] = Sym{in[i], static_cast<int32_t>(i) - 1, i + 1 < n ? static_cast<int32_t>(i + 1) : -1};
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto push = [&](int32_t pos) {
    if (pos < 0 || syms[pos].next < 0) return;
    const auto& l = syms[pos];
    const int32_t rid = syms[l.next].id;
    if (const MergeTable::Entry* e = merges_.find(l.id, rid)) heap.push(Cand{e->rank, pos, l.id, rid});
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int32_t>(i));
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    Sym& l = syms[c.pos];
    if (l.id != c.left || l.next < 0 || syms[l.next].id != c.right) continue;  // stale
    Sym& r = syms[l.next];
    l.id = merges_.find(c.left, c.right)->merged;
    r.id = -1;
    l.next = r.next;
    if (r.next >= 0) syms[r.next].prev = c.pos;
    push(l.prev);
    push(c.pos);
  }
  for (int32_t i = 0; i >= 0; i = syms[i].next) out.push_back(syms[i].id);
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& out, WordCache& cache) const {
  const size_t n = word.size();
  if (n == 1) {
    out.push_back(byte_id_[static_cast<uint8_t>(word[0])]);
    return;
  }
  const bool cacheable = n <= WordCache::kMaxWordBytes;
  const uint64_t hash = cacheable ? WordCache::hash_word(word) : 0;
  if (cacheable) {
    auto [ids, count] = cache.find(word, hash);
    if (ids) {
      out.insert(out.end(), ids, ids + count);
      return;
    }
  }
  const size_t start = out.size();
  if (n <= kSmallWord) {
    int32_t syms[kSmallWord];
    for (size_t i = 0; i < n; ++i) syms[i] = byte_id_[static_cast<uint8_t>(word[i])];
    merge_small(syms, n, out);
  } else {
    std::vector<int32_t> syms(n);
    for (size_t i = 0; i < n; ++i) syms[i] = byte_id_[static_cast<uint8_t>(word[i])];
    merge_large(syms.data(), n, out);
  }
  if (cacheable) cache.insert(word, hash, out.data() + start, out.size() - start);
}

}  // namespace pdserve::tokenizer
