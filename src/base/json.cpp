#include "base/json.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <system_error>

namespace pdserve {

Result<nlohmann::json> parse_json(std::string_view text, std::string_view source) {
  try {
    return nlohmann::json::parse(text.begin(), text.end());
  } catch (const nlohmann::json::parse_error& e) {
    // e.what() is "[json.exception.parse_error.101] parse error at line 1, column 5: ..."; the
    // bracketed id means nothing to a user.
    std::string_view what = e.what();
    if (auto close = what.find("] "); what.starts_with("[json.exception") && close != std::string_view::npos)
      what.remove_prefix(close + 2);
    return make_error(ErrorCode::kCorrupt, "{}: invalid JSON at byte {}: {}", source, e.byte, what);
  } catch (const nlohmann::json::out_of_range&) {
    // The parser throws this type (not parse_error) for a number beyond double, such as 1e999.
    return make_error(ErrorCode::kCorrupt, "{}: invalid JSON: a number is out of range", source);
  }
}

Result<nlohmann::json> read_json_file(const std::filesystem::path& path) {
  std::error_code ec;
  auto st = std::filesystem::status(path, ec);
  if (st.type() == std::filesystem::file_type::not_found)
    return make_error(ErrorCode::kNotFound, "{}: no such file", path.string());
  if (ec) return make_error(ErrorCode::kIo, "{}: {}", path.string(), ec.message());
  if (std::filesystem::is_directory(st)) return make_error(ErrorCode::kIo, "{}: is a directory", path.string());
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(ErrorCode::kIo, "{}: cannot open: {}", path.string(), std::strerror(errno));
  std::ostringstream buf;
  buf << in.rdbuf();
  if (in.bad()) return make_error(ErrorCode::kIo, "{}: read failed", path.string());
  return parse_json(buf.str(), path.string());
}

namespace {

Status write_all(int fd, const std::string& data, const std::string& what) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return make_error(ErrorCode::kIo, "{}: write failed: {}", what, std::strerror(errno));
    }
    off += static_cast<size_t>(n);
  }
  return ok_status();
}

}  // namespace

Status write_json_file(const std::filesystem::path& path, const nlohmann::json& value, int indent) {
  std::string text;
  try {
    text = value.dump(indent < 0 ? -1 : indent) + "\n";
  } catch (const nlohmann::json::type_error& e) {  // invalid UTF-8 in a string
    return make_error(ErrorCode::kInvalidArgument, "{}: cannot serialize JSON: {}", path.string(), e.what());
  }
  // Unique per process and call, so concurrent writers of the same file never share a temp file.
  static std::atomic<uint64_t> counter{0};
  std::filesystem::path tmp = path;
  tmp += fmt::format(".tmp-{}-{}", ::getpid(), counter.fetch_add(1));
  const std::string tmp_name = tmp.string();

  int fd = ::open(tmp_name.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return make_error(ErrorCode::kIo, "{}: cannot create: {}", tmp_name, std::strerror(errno));
  Status s = write_all(fd, text, tmp_name);
  if (s && ::fsync(fd) != 0) s = make_error(ErrorCode::kIo, "{}: fsync failed: {}", tmp_name, std::strerror(errno));
  if (::close(fd) != 0 && s) s = make_error(ErrorCode::kIo, "{}: close failed: {}", tmp_name, std::strerror(errno));
  if (s && std::rename(tmp_name.c_str(), path.c_str()) != 0)
    s = make_error(ErrorCode::kIo, "{}: cannot rename into place: {}", path.string(), std::strerror(errno));
  if (!s) ::unlink(tmp_name.c_str());
  return s;
}

namespace json_detail {

Error not_an_object(std::string_view source, ErrorCode code) {
  return make_error(code, "{}: expected a JSON object", source);
}

Error missing_field(std::string_view key, std::string_view source, ErrorCode code) {
  return make_error(code, "{}: missing field '{}'", source, key);
}

Error wrong_type(std::string_view key, std::string_view source, const std::string& type, ErrorCode code) {
  return make_error(code, "{}: field '{}' must be {}", source, key, type);
}

}  // namespace json_detail
}  // namespace pdserve
