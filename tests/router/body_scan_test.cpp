// The body scan (plain mode's replacement for a JSON DOM) against nlohmann::json: it must accept
// exactly the objects the DOM parser accepts (bar the NUL byte nlohmann reads as the end) and read
// the same stream/batch/rid facts; and the textual rid insertion it feeds.
#include "router/body_scan.h"

#include <random>

#include <gtest/gtest.h>

namespace pdserve::router {
namespace {

using json = nlohmann::json;

std::string printable(const std::string& s) { return json(s).dump(-1, ' ', true, json::error_handler_t::replace); }

// The scan's verdict and facts equal the DOM's; a refusal is only allowed where nlohmann stops
// at a NUL byte.
void expect_same_as_dom(const std::string& text, RouteKind route = RouteKind::kGenerate) {
  const json dom = json::parse(text, nullptr, false);
  const bool dom_object = !dom.is_discarded() && dom.is_object();
  const auto scan = scan_body(text, route);
  if (!dom_object) {
    EXPECT_FALSE(scan.has_value()) << "scan accepted what the DOM parser refuses: " << printable(text);
    return;
  }
  if (!scan) {
    EXPECT_NE(text.find('\0'), std::string::npos) << "scan refused a valid object: " << printable(text);
    return;
  }
  const BodyScan want = scan_dom(dom, route);
  EXPECT_EQ(scan->stream, want.stream) << printable(text);
  EXPECT_EQ(scan->batch, want.batch) << printable(text);
  EXPECT_EQ(scan->rid, want.rid) << printable(text);
  EXPECT_EQ(scan->client_rids, want.client_rids) << printable(text);
}

TEST(BodyScan, AgreesWithTheDomParser) {
  const std::vector<std::string> cases{
      R"({"input_ids":[1,2,3,4],"sampling_params":{"max_new_tokens":8}})",
      R"({"text":"a","stream":true})",
      R"({"text":"a","stream":false})",
      R"({"stream":"true"})",
      R"({"stream":true,"stream":false})",  // the last of a repeated member counts
      R"({"text":["a","b","c"]})",
      R"({"text":[]})",
      R"({"text":"x","text":["a","b"]})",
      R"({"input_ids":[[1,2],[3]]})",
      R"({"input_ids":[1,[2]]})",
      R"({"input_ids":[]})",
      R"({"text":{"nested":[1,2]},"input_ids":[[1]]})",
      R"({"rid":"c-1"})",
      R"({"rid":["a",1,"b"]})",
      R"({"rid":5})",
      R"({"rid":null})",
      R"({"rid":"x","rid":null})",
      R"({"r\u0069d":"escaped-name","str\u0065am":true})",
      R"({"rid":"\u00e9\ud83d\ude00\n"})",
      R"({"a":{"rid":"nested"},"b":[{"stream":true}]})",
      "{\"u\":\"\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\"}",
      R"({"n":[0,-0,1.5,-2e10,3E+2,4e-2,1e308,1e-400,123456789012345678901234567890]})",
      R"({"t":true,"f":false,"z":null,"e":{},"l":[]})",
      "\xEF\xBB\xBF{}",
      " {} ",
      // Refused by both.
      "", " ", "[]", "[1]", "1", "\"s\"", "null", "{", "}", "{}}", "{} x", "{,}", R"({"a"})", R"({"a":})",
      R"({"a":1,})", R"({"a":[1,]})", R"({"a":[1 2]})", R"({a:1})", R"({'a':1})", R"({"a":01})", R"({"a":1.})",
      R"({"a":.5})", R"({"a":-})", R"({"a":1e})", R"({"a":+1})", R"({"a":1e999})", R"({"a":-1e400})",
      R"({"a":tru})", R"({"a":truex})", R"({"a":nul})", R"({"a":"\x"})", R"({"a":"\u12"})", R"({"a":"\ud800"})",
      R"({"a":"\udc00"})", R"({"a":"\ud800\u0041"})", "{\"a\":\"\x01\"}", "{\"a\":\"\xC0\xAF\"}",
      "{\"a\":\"\xED\xA0\x80\"}", "{\"a\":\"\xF4\x90\x80\x80\"}", "{\"a\":\"\xE2\x82\"}", "{\"a\":\"\x80\"}",
      "{\"a\":\"\xFF\"}", R"({"a":"unterminated})", "\xEF\xBB{}", R"({"a":[[[[[]]]]]]})",
  };
  for (const auto& c : cases) expect_same_as_dom(c);
  expect_same_as_dom(std::string("{}\0x", 4));                           // nlohmann stops at the NUL
  expect_same_as_dom(R"({"text":["a","b"]})", RouteKind::kChat);          // batches are /generate's only
  expect_same_as_dom(std::string(10000, '[') + std::string(10000, ']'));  // deep: no stack overflow
  expect_same_as_dom("{\"a\":" + std::string(5000, '[') + std::string(5000, ']') + "}");
}

// Random byte edits of valid bodies: the scan never accepts what the DOM parser refuses, and
// reads the same facts from what both accept.
TEST(BodyScan, MutatedBodiesAgreeWithTheDomParser) {
  const std::vector<std::string> seeds{
      R"({"input_ids":[[1,2],[3]],"stream":true,"rid":["a","b"],"sampling_params":{"max_new_tokens":8,"temperature":0.5}})",
      R"({"text":["x\u00e9\ud83d\ude00","y"],"rid":null,"n":-1.25e-3,"ok":[true,false,null]})",
      "{\"text\":\"\xE2\x82\xAC\",\"stream\":false}",
  };
  const char kAlphabet[] = "{}[]\",:0123456789-+.eEtrufalsn \\u\x80\xC3\xA9\xED\xA0\x00";
  const std::string alphabet(kAlphabet, sizeof kAlphabet - 1);
  std::mt19937 gen(7);
  for (int i = 0; i < 20000; ++i) {
    std::string t = seeds[i % seeds.size()];
    const int edits = 1 + static_cast<int>(gen() % 3);
    for (int e = 0; e < edits && !t.empty(); ++e) {
      const std::size_t at = gen() % t.size();
      const char c = alphabet[gen() % alphabet.size()];
      switch (gen() % 3) {
        case 0: t[at] = c; break;
        case 1: t.insert(t.begin() + static_cast<std::ptrdiff_t>(at), c); break;
        default: t.erase(at, 1); break;
      }
    }
    expect_same_as_dom(t);
    if (HasFailure()) return;
  }
}

// The textual rid insertion must give the same JSON as the DOM rewrite, keep every other byte
// of the client's body, and refuse the one case it cannot do (a null rid to replace).
TEST(BodyScan, RidInsertedIntoTextMatchesDomRewrite) {
  const std::vector<std::string> bodies{
      R"({"text":"a","sampling_params":{"max_new_tokens":8}})",
      "  \n\t{ \"input_ids\" : [1, 2],\n \"stream\": true }  ",
      "{}",
      "{ \r\n }",
      "\xEF\xBB\xBF{\"text\":\"bom\"}",  // a UTF-8 byte order mark, which the parser skips
      R"({"text":["a","b"],"nested":{"rid":"not-top-level"}})",
      R"({"text":"{\"rid\":1}"})",
  };
  for (const auto& original : bodies) {
    const json parsed = json::parse(original);
    const auto scan = scan_body(original, RouteKind::kGenerate);
    ASSERT_TRUE(scan.has_value()) << original;
    const std::size_t batch = scan->batch;
    ASSERT_EQ(batch, batch_size(parsed, RouteKind::kGenerate)) << original;
    const auto rooms = make_rooms(batch);
    std::string text = original;
    auto rids = ensure_rid_text(text, *scan, batch, rooms);
    ASSERT_TRUE(rids.has_value()) << original;
    json dom = parsed;
    EXPECT_EQ(*rids, ensure_rid(dom, batch, rooms)) << original;
    EXPECT_EQ(json::parse(text), dom) << text;
    // Only the rid member was added: removing it gives back the client's bytes.
    std::string member = "\"rid\":" + dom["rid"].dump();
    const std::size_t at = text.find(member);
    ASSERT_NE(at, std::string::npos) << text;
    std::string back = text;
    back.erase(at, member.size() + (parsed.size() > 0 ? 1 : 0));
    EXPECT_EQ(back, original);
  }
  // The client's own rid: text untouched, its rids returned.
  std::string mine = R"({"rid":["c-1","c-2"],"text":["a","b"]})";
  const std::string before = mine;
  auto rids = ensure_rid_text(mine, *scan_body(mine, RouteKind::kGenerate), 2, make_rooms(2));
  ASSERT_TRUE(rids.has_value());
  EXPECT_EQ(*rids, (std::vector<std::string>{"c-1", "c-2"}));
  EXPECT_EQ(mine, before);
  // "rid": null must be replaced, which only the DOM path does.
  std::string null_rid = R"({"rid":null,"text":"a"})";
  EXPECT_FALSE(ensure_rid_text(null_rid, *scan_body(null_rid, RouteKind::kGenerate), 0, make_rooms(0)).has_value());
  EXPECT_EQ(null_rid, R"({"rid":null,"text":"a"})");
}

}  // namespace
}  // namespace pdserve::router
