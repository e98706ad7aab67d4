// Errors as values at module boundaries.
//
// Why our own Result<T> and not tl::expected: tl-expected is not packaged in Debian 12 (the only
// package source CI has), and std::expected needs C++23. This is the small subset we use, with the
// same spelling (has_value, value, error, operator*, operator->), so switching later is mechanical.
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

#include <fmt/format.h>

namespace pdserve {

enum class ErrorCode {
  kInvalidArgument,  // bad user input: flags, request fields, ids out of range
  kNotFound,         // a file or tensor that should exist does not
  kCorrupt,          // a file exists but its content is malformed
  kUnsupported,      // valid but not implemented by this build
  kIo,               // the OS refused a read, write or mmap
  kInternal,         // a bug: an invariant did not hold
};

const char* error_code_name(ErrorCode code);

// A failure: a code and a one-line human message. Messages name the file/field and the problem.
class Error {
 public:
  Error(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) {}
  ErrorCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // Adds context in front: "loading /x/model.safetensors: " + message.
  Error with_context(const std::string& context) const { return Error(code_, context + ": " + message_); }

 private:
  ErrorCode code_;
  std::string message_;
};

template <typename... Args>
Error make_error(ErrorCode code, fmt::format_string<Args...> f, Args&&... args) {
  return Error(code, fmt::format(f, std::forward<Args>(args)...));
}

struct Unexpected {
  Error error;
};
inline Unexpected unexpected(Error e) { return Unexpected{std::move(e)}; }

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT(implicit)
  Result(Unexpected u) : v_(std::in_place_index<1>, std::move(u.error)) {}  // NOLINT(implicit)
  Result(Error e) : v_(std::in_place_index<1>, std::move(e)) {}  // NOLINT(implicit)

  bool has_value() const { return v_.index() == 0; }
  explicit operator bool() const { return has_value(); }
  T& value() & { assert(has_value()); return std::get<0>(v_); }
  const T& value() const& { assert(has_value()); return std::get<0>(v_); }
  T&& value() && { assert(has_value()); return std::get<0>(std::move(v_)); }
  const Error& error() const { assert(!has_value()); return std::get<1>(v_); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Error> v_;
};

// Status is Result without a value.
struct Ok {};
using Status = Result<Ok>;
inline Status ok_status() { return Status(Ok{}); }

}  // namespace pdserve

// Propagates an error from an expression returning Result/Status.
#define PDSERVE_CONCAT_INNER(a, b) a##b
#define PDSERVE_CONCAT(a, b) PDSERVE_CONCAT_INNER(a, b)
#define PDSERVE_RETURN_IF_ERROR(expr)                                        \
  do {                                                                       \
    auto _pdserve_status = (expr);                                           \
    if (!_pdserve_status.has_value()) return ::pdserve::unexpected(_pdserve_status.error()); \
  } while (0)
// PDSERVE_ASSIGN_OR_RETURN(auto x, expr): binds the value or returns the error.
#define PDSERVE_ASSIGN_OR_RETURN(lhs, expr) \
  PDSERVE_ASSIGN_OR_RETURN_IMPL(PDSERVE_CONCAT(_pdserve_result_, __LINE__), lhs, expr)
#define PDSERVE_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr)                          \
  auto tmp = (expr);                                                           \
  if (!tmp.has_value()) return ::pdserve::unexpected(tmp.error());             \
  lhs = std::move(tmp).value()
