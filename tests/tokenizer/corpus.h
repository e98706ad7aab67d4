// Deterministic text corpora for the tokenizer tests and benchmark (nothing is downloaded).
//
// parity_corpus(): >= 200 strings covering what the issue lists (many scripts, code, numbers,
// whitespace runs with \r\n and \r, emoji with skin tones and ZWJ, combining marks, special
// tokens written in text, empty and one-character strings, 100 KB documents) plus random strings
// drawn from well-established Unicode blocks. multilingual_documents(): a large corpus of natural
// sentences mixed with synthetic words (so that a word cache cannot see only a few hundred words).
//
// Characters on which the npm peer (JavaScript regex) and Hugging Face (Oniguruma) are known to
// differ are left out: U+0085 (NEL, white space for Oniguruma only) and U+FEFF (white space for
// JavaScript only); so are code points assigned after Unicode 11 (engines' tables differ).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/utf8.h"

namespace pdserve::tokenizer::testing {

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : s_(seed) {}
  uint64_t next() {
    uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint64_t below(uint64_t n) { return n ? next() % n : 0; }
  template <class V>
  const auto& pick(const V& v) {
    return v[below(v.size())];
  }

 private:
  uint64_t s_;
};

inline const std::vector<std::string>& seed_texts() {
  static const std::vector<std::string> texts = {
      // English
      "The quick brown fox jumps over the lazy dog. It's 5 o'clock somewhere, isn't it? \"Yes,\" she said.",
      "Tokenizers split text into pieces; each piece maps to an id. Don't forget: we'll test e-mail@example.com & URLs "
      "like https://example.org/path?q=1#frag.",
      // Chinese
      "机器学习是人工智能的一个分支，它使计算机能够从数据中学习。今天天气很好，我们去公园散步吧！",
      "深度求索发布了新的语言模型，参数量达到六千七百一十亿，其中每个词元激活三百七十亿参数。",
      // Japanese
      "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。カタカナとひらがなを混ぜて書きます。",
      "東京都の人口は約1400万人です。ラーメンを食べに行きませんか？",
      // Korean
      "안녕하세요, 만나서 반갑습니다. 오늘 회의는 오후 세 시에 시작합니다. 한국어 형태소 분석은 어렵습니다.",
      // Arabic
      "مرحبا بكم في عالم معالجة اللغات الطبيعية. اللغة العربية تكتب من اليمين إلى اليسار، وفيها ٢٨ حرفاً.",
      // Hindi
      "नमस्ते, आप कैसे हैं? भारत एक विशाल देश है जहाँ अनेक भाषाएँ बोली जाती हैं। मैं हिंदी सीख रहा हूँ।",
      // Thai
      "ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ ทำให้การตัดคำเป็นเรื่องยาก สวัสดีครับ ยินดีต้อนรับ",
      // Cyrillic
      "Съешь же ещё этих мягких французских булок, да выпей чаю. Москва — столица России. Привет, мир!",
      "Українська мова має літери ї, є, ґ. Добрий день! Бългаският език използва кирилица.",
      // Greek, Hebrew, Vietnamese, German, French, Spanish, Turkish, Polish
      "Η γρήγορη καφέ αλεπού πηδά πάνω από τον τεμπέλη σκύλο. שלום עולם, מה שלומך היום?",
      "Tiếng Việt có nhiều dấu thanh: à, á, ả, ã, ạ. Grüße aus München! Ça va très bien, merci. ¿Dónde está el baño? "
      "İstanbul'da güzel bir gün. Zażółć gęślą jaźń.",
      // Code
      "#include <vector>\nint main(int argc, char** argv) {\n  std::vector<int> v{1, 2, 3};\n  for (auto& x : v) x *= 2;\n"
      "  return v.size() > 2 ? 0 : 1;\n}\n",
      "def fib(n: int) -> int:\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n    for _ in range(n):\n"
      "        a, b = b, a + b\n    return a\n\nprint(f\"{fib(30):,}\")\n",
      "const sum = (xs) => xs.reduce((a, b) => a + b, 0);\nexport async function load(url) {\n\tconst r = await fetch(url);\n"
      "\treturn r.ok ? r.json() : null;\n}\n",
      "fn main() {\n    let v: Vec<u64> = (1..=10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n",
      "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tch := make(chan int, 3)\n\tgo func() { ch <- 42 }()\n"
      "\tfmt.Println(<-ch)\n}\n",
      "SELECT u.id, COUNT(*) AS n FROM users u JOIN orders o ON o.user_id = u.id WHERE o.total >= 100.50 GROUP BY u.id "
      "HAVING n > 3 ORDER BY n DESC;",
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Test</title></head>\r\n<body><div "
      "class=\"a-b\">&nbsp;&amp;</div></body></html>",
      "{\"name\": \"pdserve\", \"version\": \"0.1.0\", \"tags\": [\"llm\", \"moe\"], \"ratio\": 0.125, \"ok\": true}",
      // Mixed
      "Mixed: English 中文 日本語 한국어 العربية हिन्दी ไทย русский 😀 123,456.78 — done…",
  };
  return texts;
}

// Code point ranges (inclusive) of blocks assigned in Unicode 11 or earlier.
inline const std::vector<std::pair<uint32_t, uint32_t>>& fuzz_blocks() {
  static const std::vector<std::pair<uint32_t, uint32_t>> blocks = {
      {0x20, 0x7E},       {0x20, 0x7E},       {0x61, 0x7A},     {0xA1, 0xFF},     {0x391, 0x3A1},   {0x3B1, 0x3C9},
      {0x410, 0x44F},     {0x621, 0x64A},     {0x660, 0x669},   {0x905, 0x939},   {0x93E, 0x94C},   {0xE01, 0xE3A},
      {0xAC00, 0xD7A3},   {0x4E00, 0x9FA5},   {0x9FA6, 0x9FEA}, {0x3041, 0x3096}, {0x30A1, 0x30FA}, {0x300, 0x36F},
      {0x2010, 0x2027},   {0x3001, 0x3003},   {0xFF01, 0xFF5E}, {0x1F600, 0x1F64F}, {0x1F300, 0x1F5FF},
      {0x2200, 0x22FF},   {0x2190, 0x21FF},   {0x2500, 0x257F}, {0x30, 0x39},     {0x30, 0x39},     {0xFF10, 0xFF19},
  };
  return blocks;
}

inline const std::vector<std::string>& fuzz_spaces() {
  static const std::vector<std::string> s = {" ", " ", " ", "  ", "\t", "\n", "\r\n", "\r", "\n\n", "\u00A0", "\u3000",
                                             "\u2003", " \n ", "\t\t"};
  return s;
}

inline std::string random_unicode(SplitMix64& rng, size_t chars) {
  std::string s;
  for (size_t i = 0; i < chars; ++i) {
    if (rng.below(6) == 0) {
      s += rng.pick(fuzz_spaces());
      continue;
    }
    const auto& [lo, hi] = rng.pick(fuzz_blocks());
    append_code_point(static_cast<uint32_t>(lo + rng.below(hi - lo + 1)), s);
  }
  return s;
}

// A synthetic "word" in one of several scripts (gives a large, realistic variety of words).
inline std::string random_word(SplitMix64& rng) {
  std::string w;
  const uint64_t script = rng.below(8);
  const size_t len = 2 + rng.below(9);
  auto from = [&](uint32_t lo, uint32_t hi, size_t n) {
    for (size_t i = 0; i < n; ++i) append_code_point(static_cast<uint32_t>(lo + rng.below(hi - lo + 1)), w);
  };
  static const std::string consonants = "bcdfghjklmnprstvwz", vowels = "aeiou";
  switch (script) {
    case 0:
    case 1:
    case 2:  // pronounceable Latin
      for (size_t i = 0; i < len; ++i) w += (i % 2) ? vowels[rng.below(5)] : consonants[rng.below(consonants.size())];
      if (rng.below(5) == 0) w[0] = static_cast<char>(w[0] - 32);
      break;
    case 3: from(0x430, 0x44F, len); break;             // Cyrillic
    case 4: from(0x4E00, 0x4FFF, 1 + len / 3); break;  // common CJK
    case 5: from(0xAC00, 0xB7FF, 1 + len / 3); break;  // Hangul
    case 6: w = std::to_string(rng.below(1000000000)); break;
    default: from(0x3041, 0x3093, 1 + len / 2); break;  // hiragana
  }
  return w;
}

inline std::string long_document(SplitMix64& rng, size_t bytes) {
  std::string d;
  while (d.size() < bytes) {
    switch (rng.below(4)) {
      case 0: d += random_unicode(rng, 20 + rng.below(200)); break;
      case 1: d += random_word(rng); break;
      default: d += rng.pick(seed_texts()); break;
    }
    d += rng.pick(fuzz_spaces());
  }
  // Cut at a character boundary.
  while (d.size() > bytes && (static_cast<unsigned char>(d[bytes]) & 0xC0) == 0x80) --bytes;
  d.resize(bytes);
  return d;
}

inline std::vector<std::string> parity_corpus() {
  std::vector<std::string> c = seed_texts();
  SplitMix64 rng(20261128);
  // Numbers of many lengths and forms.
  std::string digits;
  for (int n = 1; n <= 40; ++n) {
    digits += static_cast<char>('0' + (n * 7) % 10);
    c.push_back(digits);
  }
  for (std::string s : {"3.14159", "-42", "1,000,000", "+1 (555) 123-4567", "2026-11-28T04:05:06Z", "0x7fffffff",
                        "1e-9", "٣٤٥٦٧", "１２３４５", "v1.2.3-rc.4", "10%", "$19.99"})
    c.push_back(s);
  // Whitespace runs.
  for (std::string s : {" ", "  ", "\t", "\n", "\r\n", "\r", "\r\r\n\n", "a\r\nb", "a\rb", "a  \n  b", "a\t\tb",
                        "   leading", "trailing   ", "x \r\n\r\n y", "\n\n\n\nz", " \t \t ", "word\u00A0word",
                        "中\u3000文", "end\n", "a \u2003 b"})
    c.push_back(s);
  for (int i = 0; i < 10; ++i) {
    std::string s;
    for (int k = 0; k < 8; ++k) s += rng.pick(fuzz_spaces()) + (rng.below(2) ? "w" : "");
    c.push_back(s);
  }
  // Emoji: skin tones, ZWJ sequences, flags, keycaps, variation selectors.
  for (std::string s : {"😀", "👍🏽", "👩‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵🇺🇸", "1️⃣", "❤️", "👩🏿‍🔬 and 🧑🏻‍🤝‍🧑🏾",
                        "emoji😀in😀text", "🙂🙃🙂🙃", "✌🏼", "☕ coffee"})
    c.push_back(s);
  // Combining characters and scripts with marks.
  for (std::string s : {"e\u0301", "cafe\u0301", "Z\u0351\u0352\u0353a\u0354\u0355l\u0356g\u0357o", "n\u0303o",
                        "\u1100\u1161\u11A8", "क्षत्रिय", "ब्राह्मण", "ภาษา", "a\u0308\u0304", "\u0301start"})
    c.push_back(s);
  // Special tokens written in text.
  for (std::string s :
       {"<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>Hello<｜Assistant｜>Hi<｜end▁of▁sentence｜>",
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get\n```json\n{}\n```<｜tool▁call▁end｜>",
        "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>42<｜tool▁output▁end｜><｜tool▁outputs▁end｜>",
        "<|EOT|>", "<｜fim▁begin｜>def f():<｜fim▁hole｜>\n<｜fim▁end｜>", "<｜User", "｜>", "<｜User｜<｜User｜>",
        "a<｜▁pad▁｜>b", "x<｜place▁holder▁no▁7｜>y", "<think>\nreasoning\n</think>", "<｜User｜><｜User｜>",
        " <｜Assistant｜> ", "<<｜User｜>>"})
    c.push_back(s);
  // Empty and one-character strings.
  for (std::string s : {"", " ", "a", "Z", "\n", "中", "😀", "1", "<", "é", "\t", "ー"}) c.push_back(s);
  // Random mixes of natural sentences with varied separators.
  for (int i = 0; i < 40; ++i) {
    std::string s;
    const size_t parts = 1 + rng.below(4);
    for (size_t p = 0; p < parts; ++p) s += rng.pick(seed_texts()) + rng.pick(fuzz_spaces());
    c.push_back(s);
  }
  // Random code points from many blocks.
  for (int i = 0; i < 50; ++i) c.push_back(random_unicode(rng, 1 + rng.below(120)));
  // Long documents (100 KB).
  for (int i = 0; i < 3; ++i) c.push_back(long_document(rng, 100 * 1024));
  return c;
}

// About `bytes` of text as documents of 2..16 KB: natural sentences (60%) and synthetic words.
inline std::vector<std::string> multilingual_documents(size_t bytes, uint64_t seed) {
  SplitMix64 rng(seed);
  std::vector<std::string> docs;
  size_t total = 0;
  while (total < bytes) {
    const size_t target = 2048 + rng.below(14 * 1024);
    std::string d;
    while (d.size() < target) {
      if (rng.below(10) < 6) {
        d += rng.pick(seed_texts());
      } else {
        const size_t words = 3 + rng.below(20);
        for (size_t w = 0; w < words; ++w) d += random_word(rng) + (rng.below(8) ? " " : ", ");
      }
      d += rng.below(4) ? " " : "\n";
    }
    total += d.size();
    docs.push_back(std::move(d));
  }
  return docs;
}

}  // namespace pdserve::tokenizer::testing
