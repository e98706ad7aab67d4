// JSON files and typed field access with errors as values.
//
// Field errors read "SOURCE: field 'KEY' must be <type>", where SOURCE names what the object came
// from (a file path, "request", "config.json rope_scaling", ...), so the message alone tells the
// user what to fix.
#pragma once

#include <cstdint>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"

namespace pdserve {

// kNotFound if the file does not exist, kIo if it cannot be read, kCorrupt with the parser's
// message and byte position if it is not valid JSON.
Result<nlohmann::json> read_json_file(const std::filesystem::path& path);
// Parses text; `source` names it in the error message.
Result<nlohmann::json> parse_json(std::string_view text, std::string_view source);
// Writes atomically: a temporary file in the same folder, flushed and renamed over `path`, so a
// reader never sees a half-written file. indent < 0 writes one line.
Status write_json_file(const std::filesystem::path& path, const nlohmann::json& value, int indent = 2);

namespace json_detail {

template <class T>
struct IsVector : std::false_type {};
template <class T>
struct IsVector<std::vector<T>> : std::true_type {};

template <class T>
struct IsStringMap : std::false_type {};
template <class T>
struct IsStringMap<std::map<std::string, T>> : std::true_type {};

// Plural noun for the element types of arrays and objects: "integers", "strings", ...
template <class T>
std::string type_plural() {
  if constexpr (std::is_same_v<T, bool>) {
    return "booleans";
  } else if constexpr (std::is_integral_v<T> && std::is_unsigned_v<T>) {
    return "non-negative integers";
  } else if constexpr (std::is_integral_v<T>) {
    return "integers";
  } else if constexpr (std::is_floating_point_v<T>) {
    return "numbers";
  } else if constexpr (std::is_same_v<T, std::string>) {
    return "strings";
  } else if constexpr (std::is_same_v<T, nlohmann::json>) {
    return "JSON values";
  } else if constexpr (IsVector<T>::value) {
    return "arrays of " + type_plural<typename T::value_type>();
  } else if constexpr (IsStringMap<T>::value) {
    return "objects of " + type_plural<typename T::mapped_type>();
  } else {
    static_assert(sizeof(T) == 0, "get_field: unsupported type");
  }
}

// "an integer", "a string", "an array of numbers", ...
template <class T>
std::string type_description() {
  if constexpr (std::is_same_v<T, bool>) {
    return "a boolean";
  } else if constexpr (std::is_integral_v<T> && std::is_unsigned_v<T>) {
    return "a non-negative integer";
  } else if constexpr (std::is_integral_v<T>) {
    return "an integer";
  } else if constexpr (std::is_floating_point_v<T>) {
    return "a number";
  } else if constexpr (std::is_same_v<T, std::string>) {
    return "a string";
  } else if constexpr (std::is_same_v<T, nlohmann::json>) {
    return "a JSON value";
  } else if constexpr (IsVector<T>::value) {
    return "an array of " + type_plural<typename T::value_type>();
  } else if constexpr (IsStringMap<T>::value) {
    return "an object of " + type_plural<typename T::mapped_type>();
  } else {
    static_assert(sizeof(T) == 0, "get_field: unsupported type");
  }
}

// Converts without exceptions; nullopt when the JSON value does not have type T (or an integer is
// out of T's range, or a float is given for an integer).
template <class T>
std::optional<T> convert(const nlohmann::json& j) {
  if constexpr (std::is_same_v<T, bool>) {
    if (!j.is_boolean()) return std::nullopt;
    return j.get<bool>();
  } else if constexpr (std::is_integral_v<T>) {
    if (j.is_number_unsigned()) {
      auto v = j.get<uint64_t>();
      if (v > static_cast<uint64_t>(std::numeric_limits<T>::max())) return std::nullopt;
      return static_cast<T>(v);
    }
    if (j.is_number_integer()) {
      auto v = j.get<int64_t>();
      if constexpr (std::is_unsigned_v<T>) {
        if (v < 0 || static_cast<uint64_t>(v) > static_cast<uint64_t>(std::numeric_limits<T>::max()))
          return std::nullopt;
      } else {
        if (v < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
            v > static_cast<int64_t>(std::numeric_limits<T>::max()))
          return std::nullopt;
      }
      return static_cast<T>(v);
    }
    return std::nullopt;
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!j.is_number()) return std::nullopt;  // integers are numbers too: "rope_theta": 10000
    return j.get<T>();
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!j.is_string()) return std::nullopt;
    return j.get<std::string>();
  } else if constexpr (std::is_same_v<T, nlohmann::json>) {
    return j;
  } else if constexpr (IsVector<T>::value) {
    if (!j.is_array()) return std::nullopt;
    T out;
    out.reserve(j.size());
    for (const auto& e : j) {
      auto v = convert<typename T::value_type>(e);
      if (!v) return std::nullopt;
      out.push_back(std::move(*v));
    }
    return out;
  } else if constexpr (IsStringMap<T>::value) {
    if (!j.is_object()) return std::nullopt;
    T out;
    for (const auto& [k, e] : j.items()) {
      auto v = convert<typename T::mapped_type>(e);
      if (!v) return std::nullopt;
      out.emplace(k, std::move(*v));
    }
    return out;
  } else {
    static_assert(sizeof(T) == 0, "get_field: unsupported type");
  }
}

// What get_field says T must be, given the value it got: an integer out of T's range gets the
// range spelled out, since "must be an integer" would confuse someone who wrote one.
template <class T>
std::string expected_description(const nlohmann::json& got) {
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    if (got.is_number_integer())
      return fmt::format("an integer in [{}, {}]", std::numeric_limits<T>::min(), std::numeric_limits<T>::max());
  }
  return type_description<T>();
}

Error not_an_object(std::string_view source, ErrorCode code);
Error missing_field(std::string_view key, std::string_view source, ErrorCode code);
Error wrong_type(std::string_view key, std::string_view source, const std::string& type, ErrorCode code);

}  // namespace json_detail

// The field `key` of `obj` as T: bool, integers (range-checked), float/double, std::string,
// nlohmann::json, std::vector<...> and std::map<std::string, ...> of those. A missing or null
// field is an error. `code` lets a caller say whose fault a bad field is (kCorrupt for a file the
// user did not write by hand, kInvalidArgument for a request).
template <class T>
Result<T> get_field(const nlohmann::json& obj, std::string_view key, std::string_view source,
                    ErrorCode code = ErrorCode::kInvalidArgument) {
  if (!obj.is_object()) return json_detail::not_an_object(source, code);
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return json_detail::missing_field(key, source, code);
  auto v = json_detail::convert<T>(*it);
  if (!v) return json_detail::wrong_type(key, source, json_detail::expected_description<T>(*it), code);
  return std::move(*v);
}

// Like get_field, but a missing or null field gives std::nullopt (HF configs write null for
// "not set"). A present field of the wrong type is still an error.
template <class T>
Result<std::optional<T>> get_optional_field(const nlohmann::json& obj, std::string_view key,
                                            std::string_view source,
                                            ErrorCode code = ErrorCode::kInvalidArgument) {
  if (!obj.is_object()) return json_detail::not_an_object(source, code);
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::optional<T>();
  auto v = json_detail::convert<T>(*it);
  if (!v) return json_detail::wrong_type(key, source, json_detail::expected_description<T>(*it), code);
  return std::optional<T>(std::move(*v));
}

// get_optional_field with a default for the missing case.
template <class T>
Result<T> get_field_or(const nlohmann::json& obj, std::string_view key, std::string_view source, T fallback,
                       ErrorCode code = ErrorCode::kInvalidArgument) {
  PDSERVE_ASSIGN_OR_RETURN(std::optional<T> v, get_optional_field<T>(obj, key, source, code));
  if (!v) return fallback;
  return std::move(*v);
}

}  // namespace pdserve
