#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "http/sse.h"

namespace pdserve::http {
namespace {

std::vector<SseEvent> parse_all(std::string_view stream) {
  SseParser p;
  return p.feed(stream);
}

// Feeds `stream` cut at the given positions.
std::vector<SseEvent> parse_split(std::string_view stream, const std::vector<std::size_t>& cuts) {
  SseParser p;
  std::vector<SseEvent> out;
  std::size_t prev = 0;
  for (std::size_t c : cuts) {
    auto got = p.feed(stream.substr(prev, c - prev));
    out.insert(out.end(), got.begin(), got.end());
    prev = c;
  }
  auto got = p.feed(stream.substr(prev));
  out.insert(out.end(), got.begin(), got.end());
  return out;
}

bool same(const std::vector<SseEvent>& a, const std::vector<SseEvent>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i].data != b[i].data || a[i].event != b[i].event || a[i].id != b[i].id ||
        a[i].retry != b[i].retry) {
      return false;
    }
  }
  return true;
}

TEST(SseParser, SglangStyleStream) {
  auto ev = parse_all("data: {\"text\":\"a\"}\n\ndata: {\"text\":\"ab\"}\n\ndata: [DONE]\n\n");
  ASSERT_EQ(ev.size(), 3u);
  EXPECT_EQ(ev[0].data, "{\"text\":\"a\"}");
  EXPECT_EQ(ev[1].data, "{\"text\":\"ab\"}");
  EXPECT_EQ(ev[2].data, "[DONE]");  // just data
  EXPECT_EQ(ev[2].event, "");
}

TEST(SseParser, MultiLineDataCommentsAndFields) {
  auto ev = parse_all(
      ": keep-alive\n"
      "event: update\n"
      "id: 7\n"
      "retry: 1500\n"
      "data: line one\n"
      "data:line two\n"   // no space after the colon
      "data:  indented\n"  // only one space is dropped
      "unknown: ignored\n"
      "\n");
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].event, "update");
  EXPECT_EQ(ev[0].id, "7");
  EXPECT_EQ(ev[0].retry, 1500);
  EXPECT_EQ(ev[0].data, "line one\nline two\n indented");
}

TEST(SseParser, LineEndingsCrLfAndCr) {
  auto lf = parse_all("data: a\ndata: b\n\n");
  auto crlf = parse_all("data: a\r\ndata: b\r\n\r\n");
  auto cr = parse_all("data: a\rdata: b\r\r");
  ASSERT_EQ(lf.size(), 1u);
  EXPECT_EQ(lf[0].data, "a\nb");
  EXPECT_TRUE(same(lf, crlf));
  EXPECT_TRUE(same(lf, cr));
}

TEST(SseParser, NoDispatchWithoutBlankLineOrData) {
  SseParser p;
  EXPECT_TRUE(p.feed("data: partial\n").empty());
  EXPECT_TRUE(p.has_partial());
  // An event of only comments / event type is not dispatched, and its type does not leak into
  // the next event.
  auto ev = parse_all("event: x\n\n: c\n\ndata: y\n\n");
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].event, "");
  EXPECT_EQ(ev[0].data, "y");
}

TEST(SseParser, EmptyDataLineIsAnEventWithEmptyData) {
  auto ev = parse_all("data\n\ndata:\ndata:\n\n");
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[0].data, "");
  EXPECT_EQ(ev[1].data, "\n");
}

TEST(SseParser, IdPersistsAndBomIsStripped) {
  auto ev = parse_all("\xEF\xBB\xBF" "id: 1\ndata: a\n\ndata: b\n\nid\ndata: c\n\n");
  ASSERT_EQ(ev.size(), 3u);
  EXPECT_EQ(ev[0].id, "1");
  EXPECT_EQ(ev[1].id, "1");
  EXPECT_EQ(ev[2].id, "");
  EXPECT_EQ(ev[0].data, "a");
}

TEST(SseParser, BadRetryIgnored) {
  auto ev = parse_all("retry: 12x\ndata: a\n\nretry: -1\ndata: b\n\n");
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_FALSE(ev[0].retry.has_value());
  EXPECT_FALSE(ev[1].retry.has_value());
}

// Every single cut point and every pair of cut points of a stream that mixes all line endings,
// comments and multi-line data must give the same events as one feed.
TEST(SseParser, EverySplitGivesTheSameEvents) {
  const std::string stream =
      "\xEF\xBB\xBF: hello\r\n"
      "event: e1\r\nid: 42\r\ndata: {\"a\":1}\r\n\r\n"
      "data: x\rdata: y\r\r"
      "data: [DONE]\n\n"
      "data:z\r\n\n";
  auto whole = parse_all(stream);
  ASSERT_EQ(whole.size(), 4u);
  EXPECT_EQ(whole[0].event, "e1");
  EXPECT_EQ(whole[0].id, "42");
  EXPECT_EQ(whole[0].data, "{\"a\":1}");
  EXPECT_EQ(whole[1].data, "x\ny");
  EXPECT_EQ(whole[3].data, "z");
  for (std::size_t i = 0; i <= stream.size(); ++i) {
    ASSERT_TRUE(same(whole, parse_split(stream, {i}))) << "cut at " << i;
    for (std::size_t j = i; j <= stream.size(); ++j) {
      ASSERT_TRUE(same(whole, parse_split(stream, {i, j}))) << "cuts at " << i << "," << j;
    }
  }
  // Byte by byte.
  std::vector<std::size_t> all;
  for (std::size_t i = 1; i < stream.size(); ++i) all.push_back(i);
  EXPECT_TRUE(same(whole, parse_split(stream, all)));
}

TEST(SseParser, RandomSplitsOfManyEvents) {
  std::string stream;
  for (int i = 0; i < 200; ++i) stream += sse_event("{\"i\":" + std::to_string(i) + "}");
  std::mt19937 rng(123);
  for (int round = 0; round < 50; ++round) {
    std::vector<std::size_t> cuts;
    std::size_t pos = 0;
    while (true) {
      pos += 1 + rng() % 37;
      if (pos >= stream.size()) break;
      cuts.push_back(pos);
    }
    auto ev = parse_split(stream, cuts);
    ASSERT_EQ(ev.size(), 200u);
    for (int i = 0; i < 200; ++i) ASSERT_EQ(ev[i].data, "{\"i\":" + std::to_string(i) + "}");
  }
}

TEST(SseParser, SizeLimitFails) {
  SseParser p(64);
  std::string big(100, 'x');
  EXPECT_FALSE(p.feed("data: " + big, [](const SseEvent&) {}));
  EXPECT_TRUE(p.failed());
  EXPECT_TRUE(p.feed("\n\n").empty());  // ignored after failure
}

TEST(SseFormat, RoundTripsMultiLinePayloads) {
  EXPECT_EQ(sse_event("{\"a\":1}"), "data: {\"a\":1}\n\n");
  std::string payload = "line1\nline2\r\nline3\rline4";
  auto ev = parse_all(sse_event(payload, "upd", "9") + sse_comment("ping\nx"));
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].data, "line1\nline2\nline3\nline4");
  EXPECT_EQ(ev[0].event, "upd");
  EXPECT_EQ(ev[0].id, "9");
}

}  // namespace
}  // namespace pdserve::http
