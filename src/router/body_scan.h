// What the plain-mode proxy needs from a generation request's body, read in one validating pass
// over its text instead of a JSON DOM. The DOM (nlohmann::json::parse) cost ~10 k instructions of
// a ~110 k proxied request, to read three members and throw the tree away.
//
// The scan checks the whole text against RFC 8259 as nlohmann::json::parse does (UTF-8, escapes
// and surrogate pairs, number grammar and overflow, nothing after the value) and reads only the
// top-level members it needs; as in the DOM, a repeated member's last value counts. It may refuse
// a text that the DOM parser takes (e.g. a NUL byte after the object, which nlohmann reads as the
// end): callers fall back to the DOM when it says no, so a request is never refused by the scan
// alone.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "router/pd_request.h"

namespace pdserve::router {

struct BodyScan {
  bool stream = false;    // "stream": true
  std::size_t batch = 0;  // as batch_size()
  enum class Rid { kAbsent, kNull, kPresent };
  Rid rid = Rid::kAbsent;
  // With kPresent: the client's rids, as ensure_rid() reads them (a string, or the strings of a
  // list; none for another type).
  std::vector<std::string> client_rids;
};

// nullopt when `text` is not a single valid JSON object (or the scan is unsure; see above).
std::optional<BodyScan> scan_body(std::string_view text, RouteKind route);

// The same facts read from a parsed body (an object): for requests the scan refused but the DOM
// parser took.
BodyScan scan_dom(const nlohmann::json& body, RouteKind route);

// ensure_rid() on the request's raw text instead of re-serializing its DOM. `scan` describes
// `raw` (an object). Without a `rid` member, `"rid":...` is inserted right after the opening brace
// and every other byte stays as the client sent it; with the client's own rid the text is left
// alone. Returns the rids, or nullopt when only a DOM rewrite can do it (`"rid": null`, which
// must be replaced, not duplicated).
std::optional<std::vector<std::string>> ensure_rid_text(std::string& raw, const BodyScan& scan, std::size_t batch,
                                                       const std::vector<uint64_t>& rooms);

}  // namespace pdserve::router
