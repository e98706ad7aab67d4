// The first step of the request-validation targets: the body text -> JSON, as the routes do it.
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "fuzz/fuzz_util.h"
#include "server/request_parsing.h"

namespace pdserve::fuzz {

// server::parse_json_body, or nullopt when it rejects the text.
inline std::optional<nlohmann::json> request_body(const uint8_t* data, size_t size) {
  auto body = server::parse_json_body(std::string(as_view(data, size)));
  if (!body) return std::nullopt;
  return std::move(*body);
}

}  // namespace pdserve::fuzz
