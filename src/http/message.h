// Pieces shared by the HTTP server and client: header lists, responses, status phrases.
//
// These types carry no Boost so that modules above http/ (server/, router/, bench/) can use them
// without paying Beast's compile time.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pdserve::http {

// ASCII case-insensitive equality, as HTTP field names compare.
bool iequals(std::string_view a, std::string_view b);

// An ordered list of header fields. Names compare case-insensitively; order and repeats are kept
// because some fields (Set-Cookie, Via) may legally repeat.
class Headers {
 public:
  using Field = std::pair<std::string, std::string>;

  Headers() = default;
  Headers(std::initializer_list<Field> fields) : fields_(fields) {}

  // Appends a field (keeps existing ones with the same name).
  void add(std::string name, std::string value);
  // Replaces every field named `name` with one field.
  void set(std::string name, std::string value);
  void remove(std::string_view name);
  void reserve(std::size_t fields) { fields_.reserve(fields); }
  // The first value of `name`, if any.
  std::optional<std::string_view> get(std::string_view name) const;
  // The first value of `name`, or `fallback`.
  std::string_view get_or(std::string_view name, std::string_view fallback) const;
  bool contains(std::string_view name) const { return get(name).has_value(); }

  std::size_t size() const { return fields_.size(); }
  bool empty() const { return fields_.empty(); }
  auto begin() const { return fields_.begin(); }
  auto end() const { return fields_.end(); }

 private:
  std::vector<Field> fields_;
};

// A response as the client received it. For streamed requests `body` holds the body only when the
// status was not 2xx (the error text); a 2xx body went to the callbacks instead.
struct Response {
  int status = 0;
  Headers headers;
  std::string body;
};

// "OK", "Not Found", ...; "Unknown" for codes HTTP does not name.
std::string_view reason_phrase(int status);

}  // namespace pdserve::http
