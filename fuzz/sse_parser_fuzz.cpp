// SSE parsing (http::SseParser), as the router and bench clients use it on a peer's stream.
// Beyond "no crash", two properties that a client relies on:
//   - splitting: the events do not depend on how the bytes are cut into feeds (TCP decides that);
//   - round trip: parse(sse_event(d)) gives d back with its line ends normalised to '\n'.
#include <cstdlib>
#include <string>
#include <vector>

#include "fuzz/fuzz_util.h"
#include "http/sse.h"

namespace {

using pdserve::http::SseEvent;
using pdserve::http::SseParser;

bool same(const std::vector<SseEvent>& a, const std::vector<SseEvent>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].event != b[i].event || a[i].data != b[i].data || a[i].id != b[i].id || a[i].retry != b[i].retry)
      return false;
  }
  return true;
}

std::string normalise_line_ends(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\r') {
      out.push_back('\n');
      if (i + 1 < s.size() && s[i + 1] == '\n') ++i;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  // Two bytes pick the cut points of a three-way split; a small event limit exercises failure.
  const size_t cut1 = data[0] % (size - 1);
  const size_t cut2 = cut1 + data[1] % (size - 1 - cut1 + 1);
  const size_t limit = (data[0] & 0x80) ? 64 : (1u << 20);
  std::string_view in = pdserve::fuzz::as_view(data + 2, size - 2);
  const size_t c1 = std::min(cut1, in.size()), c2 = std::min(std::max(cut2, c1), in.size());

  SseParser whole(limit);
  std::vector<SseEvent> a = whole.feed(in);
  SseParser split(limit);
  std::vector<SseEvent> b = split.feed(in.substr(0, c1));
  for (auto& e : split.feed(in.substr(c1, c2 - c1))) b.push_back(std::move(e));
  for (auto& e : split.feed(in.substr(c2))) b.push_back(std::move(e));
  // Failure is a size limit, so a split stream may fail later than the whole one; compare only
  // streams that stayed within it.
  if (!whole.failed() && !split.failed()) {
    if (!same(a, b) || whole.has_partial() != split.has_partial() || whole.last_event_id() != split.last_event_id())
      std::abort();
  }

  // Round trip through the formatter (the server side), with the input as the payload.
  std::string wire = pdserve::http::sse_event(in);
  SseParser rt;
  std::vector<SseEvent> back = rt.feed(wire);
  if (back.size() != 1 || back[0].data != normalise_line_ends(in) || rt.has_partial()) std::abort();
  return 0;
}
