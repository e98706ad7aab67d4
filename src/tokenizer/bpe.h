// Byte-level BPE: the model part of the tokenizer (vocab, merge ranks, merging one word).
//
// Everything works on bytes. tokenizer.json spells tokens in GPT-2's byte->unicode alphabet
// ("Ġthe"); load() translates every token back to its bytes once, so encoding never maps
// characters and decoding is a concatenation of byte strings.
//
// Merging a word picks, as Hugging Face does, the adjacent pair with the lowest merge rank, the
// leftmost one among equal ranks, until no pair has a rank. Pairs are looked up in a flat
// open-addressing table keyed by (left id, right id). Short words are merged in a small array
// (quadratic but allocation free and fastest for the usual 1..16 bytes); long words (runs of
// spaces, Thai sentences, long CJK runs) use a heap, O(n log n).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "base/status.h"

namespace pdserve::tokenizer {

// GPT-2's reversible byte <-> printable-character table.
struct ByteLevelAlphabet {
  ByteLevelAlphabet();
  std::array<uint32_t, 256> byte_to_cp;
  // Code point -> byte, or -1; only code points below 324 are used by the table.
  std::array<int16_t, 324> cp_to_byte;
  // Translates a token spelled in the alphabet to bytes; false if a character is not in it.
  bool to_bytes(std::string_view spelled, std::string& bytes) const;
  std::string to_spelled(std::string_view bytes) const;
};

// (left id, right id) -> (rank, merged id), open addressing with linear probing.
class MergeTable {
 public:
  struct Entry {
    uint64_t key = kEmpty;
    int32_t rank = 0, merged = 0;
  };
  static constexpr uint64_t kEmpty = ~0ull;

  void reserve(size_t n);
  // False if the pair is already present (the first rank wins, as in Hugging Face).
  bool insert(int32_t left, int32_t right, int32_t rank, int32_t merged);
  const Entry* find(int32_t left, int32_t right) const {
    const uint64_t key = make_key(left, right);
    size_t i = hash(key);
    for (;;) {
      const Entry& e = slots_[i];
      if (e.key == key) return &e;
      if (e.key == kEmpty) return nullptr;
      i = (i + 1) & mask_;
    }
  }

 private:
  static uint64_t make_key(int32_t l, int32_t r) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(l)) << 32) | static_cast<uint32_t>(r);
  }
  size_t hash(uint64_t key) const { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> shift_); }
  std::vector<Entry> slots_;
  size_t mask_ = 0;
  int shift_ = 64;
};

// Recently merged words -> ids, one per thread (see Tokenizer::encode). An open-addressing table
// whose keys and ids live in two arenas, so a lookup is one hash, one probe and one memcmp, and
// an insert allocates nothing once the arenas have grown. Bounded: cleared when half full.
class WordCache {
 public:
  static constexpr size_t kSlots = 1 << 17;
  static constexpr size_t kMaxWordBytes = 64;
  // Ids of `word` if cached: (pointer, count), else {nullptr, 0}. `hash` is hash_word(word).
  std::pair<const int32_t*, size_t> find(std::string_view word, uint64_t hash) const;
  void insert(std::string_view word, uint64_t hash, const int32_t* ids, size_t n);
  void clear();
  // Ties the cache to one tokenizer instance; a cache found tied to another is cleared first.
  void bind(const std::shared_ptr<int>& owner);
  static uint64_t hash_word(std::string_view word);

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t key_offset = 0, ids_offset = 0;
    uint16_t key_length = 0, ids_count = 0;  // key_length 0: empty slot (words are never empty)
  };
  std::vector<Slot> slots_;
  size_t used_ = 0;
  std::string keys_;
  std::vector<int32_t> ids_;
  std::weak_ptr<int> owner_;
};

// Token ids index tables (id -> bytes), so a file may not name ids without bound: one id of 2^31
// would make load() allocate 64 GB. 4M is 30x DeepSeek-V3's 128,815 and above every published
// vocabulary; the tables then stay under ~140 MB however the file was written.
inline constexpr int64_t kMaxTokenIds = int64_t{1} << 22;

class BpeModel {
 public:
  // Reads tokenizer.json's "model" object. id_bytes is resized to cover the vocab and filled with
  // each model token's bytes.
  static Result<std::unique_ptr<BpeModel>> from_json(const nlohmann::json& model,
                                                     std::vector<std::string>& id_bytes);

  // Appends the ids of one pre-tokenized piece (non-empty bytes).
  void encode_word(std::string_view word, std::vector<int32_t>& out, WordCache& cache) const;

  // The id of the model token with exactly these bytes.
  std::optional<int32_t> id_of_bytes(std::string_view bytes) const;
  // The id of a model token spelled as in tokenizer.json ("Ġthe").
  std::optional<int32_t> id_of_spelling(std::string_view spelled) const;
  int64_t vocab_entries() const { return static_cast<int64_t>(bytes_to_id_.size()); }
  const ByteLevelAlphabet& alphabet() const { return alphabet_; }

 private:
  void merge_small(const int32_t* in, size_t n, std::vector<int32_t>& out) const;
  void merge_large(const int32_t* in, size_t n, std::vector<int32_t>& out) const;

  ByteLevelAlphabet alphabet_;
  std::array<int32_t, 256> byte_id_{};
  MergeTable merges_;
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
  };
  using StringMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;
  StringMap bytes_to_id_;
  StringMap raw_tokens_;  // spelled outside the alphabet
};

}  // namespace pdserve::tokenizer
