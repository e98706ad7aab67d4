#include <charconv>

#include "http/client.h"

namespace pdserve::http {

Result<Url> Url::parse(std::string_view url) {
  constexpr std::string_view kHttp = "http://", kHttps = "https://";
  if (url.size() >= kHttps.size() && iequals(url.substr(0, kHttps.size()), kHttps)) {
    return make_error(ErrorCode::kUnsupported, "https is not supported: '{}'", url);
  }
  if (url.size() < kHttp.size() || !iequals(url.substr(0, kHttp.size()), kHttp)) {
    return make_error(ErrorCode::kInvalidArgument, "URL must start with http://: '{}'", url);
  }
  std::string_view rest = url.substr(kHttp.size());
  std::size_t end = rest.find_first_of("/?#");
  std::string_view authority = rest.substr(0, end);
  std::string_view target = end == std::string_view::npos ? std::string_view() : rest.substr(end);
  if (auto hash = target.find('#'); hash != std::string_view::npos) target = target.substr(0, hash);

  Url out;
  if (target.empty()) {
    out.target = "/";
  } else if (target.front() == '?') {
    out.target = "/" + std::string(target);
  } else {
    out.target = std::string(target);
  }
  if (out.target.find_first_of(" \r\n\t") != std::string::npos) {
    return make_error(ErrorCode::kInvalidArgument, "URL path contains whitespace: '{}'", url);
  }
  if (authority.empty()) return make_error(ErrorCode::kInvalidArgument, "URL has no host: '{}'", url);
  if (authority.find('@') != std::string_view::npos) {
    return make_error(ErrorCode::kUnsupported, "URL user info is not supported: '{}'", url);
  }

  std::string_view host, port;
  if (authority.front() == '[') {
    std::size_t close = authority.find(']');
    if (close == std::string_view::npos) {
      return make_error(ErrorCode::kInvalidArgument, "URL has an unclosed '[': '{}'", url);
    }
    host = authority.substr(1, close - 1);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return make_error(ErrorCode::kInvalidArgument, "bad URL authority: '{}'", url);
      port = after.substr(1);
    }
  } else {
    std::size_t colon = authority.rfind(':');
    host = authority.substr(0, colon);
    if (colon != std::string_view::npos) port = authority.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      return make_error(ErrorCode::kInvalidArgument, "IPv6 hosts need brackets: '{}'", url);
    }
  }
  if (host.empty()) return make_error(ErrorCode::kInvalidArgument, "URL has no host: '{}'", url);
  out.host = std::string(host);
  if (!port.empty()) {
    unsigned value = 0;
    auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (ec != std::errc() || p != port.data() + port.size() || value == 0 || value > 65535) {
      return make_error(ErrorCode::kInvalidArgument, "bad port in URL: '{}'", url);
    }
    out.port = static_cast<std::uint16_t>(value);
  }
  return out;
}

std::string Url::authority() const {
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

}  // namespace pdserve::http
