#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <tuple>

#include <nlohmann/json.hpp>

namespace pdserve::model {

namespace {

using json = nlohmann::json;

static_assert(std::endian::native == std::endian::little, "safetensors is little-endian; so must the host be");

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference library's limit

// Thrown while validating a header and turned into an Error at the function boundary.
struct HeaderError {
  Error error;
};

template <typename... Args>
[[noreturn]] void corrupt(const std::string& file, fmt::format_string<Args...> f, Args&&... args) {
  throw HeaderError{Error(ErrorCode::kCorrupt, file + ": " + fmt::format(f, std::forward<Args>(args)...))};
}

// nlohmann's what() on one line, without its "[json.exception.parse_error.101] " tag.
std::string one_line(std::string s) {
  if (s.rfind("[json.exception.", 0) == 0 && s.find("] ") != std::string::npos) s = s.substr(s.find("] ") + 2);
  for (char& ch : s)
    if (ch == '\n' || ch == '\r') ch = ' ';
  return s;
}

std::string show(const json& v) {
  std::string s = v.dump();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

// Element size of every dtype the safetensors format defines (0: not a safetensors dtype, or a
// sub-byte one we do not handle).
size_t safetensors_dtype_size(const std::string& s) {
  static const std::map<std::string, size_t> kSizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"F8_E8M0", 1},
      {"U16", 2},  {"I16", 2}, {"F16", 2}, {"BF16", 2},    {"U32", 4},     {"I32", 4},
      {"F32", 4},  {"U64", 8}, {"I64", 8}, {"F64", 8},     {"C64", 8},
  };
  auto it = kSizes.find(s);
  return it == kSizes.end() ? 0 : it->second;
}

bool get_u64(const json& v, uint64_t& out) {
  if (v.is_number_unsigned()) {
    out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer() && v.get<int64_t>() >= 0) {
    out = static_cast<uint64_t>(v.get<int64_t>());
    return true;
  }
  return false;
}

TensorInfo parse_entry(const std::string& file, const std::string& name, const json& v, size_t data_size) {
  if (!v.is_object()) corrupt(file, "tensor '{}' entry is not an object (got {})", name, show(v));
  TensorInfo t;
  t.name = name;
  auto dt = v.find("dtype");
  if (dt == v.end() || !dt->is_string()) corrupt(file, "tensor '{}' has no string 'dtype'", name);
  t.dtype_name = dt->get<std::string>();
  size_t elem = safetensors_dtype_size(t.dtype_name);
  if (elem == 0) corrupt(file, "tensor '{}' has unknown dtype '{}'", name, t.dtype_name);
  if (auto d = dtype_from_safetensors(t.dtype_name)) t.dtype = *d;

  auto sh = v.find("shape");
  if (sh == v.end() || !sh->is_array()) corrupt(file, "tensor '{}' has no 'shape' array", name);
  uint64_t nbytes = elem;
  bool overflow = false;
  for (const json& d : *sh) {
    uint64_t n = 0;
    if (!get_u64(d, n) || n > static_cast<uint64_t>(INT64_MAX))
      corrupt(file, "tensor '{}' has an invalid shape {} (dimensions must be non-negative integers)", name, show(*sh));
    t.shape.push_back(static_cast<int64_t>(n));
    overflow = overflow || __builtin_mul_overflow(nbytes, n, &nbytes);
  }
  if (overflow) corrupt(file, "tensor '{}' shape {} is too large", name, shape_to_string(t.shape));

  auto off = v.find("data_offsets");
  uint64_t begin = 0, end = 0;
  if (off == v.end() || !off->is_array() || off->size() != 2 || !get_u64((*off)[0], begin) ||
      !get_u64((*off)[1], end) || begin > end)
    corrupt(file, "tensor '{}' has invalid data_offsets {} (need [begin, end] with 0 <= begin <= end)", name,
            off == v.end() ? std::string("(missing)") : show(*off));
  if (end - begin != nbytes)
    corrupt(file, "tensor '{}' of dtype {} and shape {} needs {} bytes but data_offsets [{}, {}) span {}", name,
            t.dtype_name, shape_to_string(t.shape), nbytes, begin, end, end - begin);
  if (end > data_size)
    corrupt(file, "tensor '{}' data_offsets [{}, {}) exceed the data buffer of {} bytes", name, begin, end, data_size);
  t.data_begin = begin;
  t.data_end = end;
  return t;
}

// The byte ranges must tile the data buffer exactly: sorted by offset, each starts where the
// previous ended, and the last ends at the buffer's end.
void check_layout(const std::string& file, const std::map<std::string, TensorInfo>& tensors, size_t data_size) {
  std::vector<const TensorInfo*> order;
  for (const auto& [name, t] : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return std::tie(a->data_begin, a->data_end) < std::tie(b->data_begin, b->data_end);
  });
  size_t cursor = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo* t : order) {
    if (t->data_begin < cursor)
      corrupt(file, "tensors '{}' [{}, {}) and '{}' [{}, {}) overlap", prev->name, prev->data_begin, prev->data_end,
              t->name, t->data_begin, t->data_end);
    if (t->data_begin > cursor)
      corrupt(file, "bytes [{}, {}) of the data buffer belong to no tensor (hole before '{}')", cursor, t->data_begin,
              t->name);
    cursor = t->data_end;
    prev = t;
  }
  if (cursor != data_size)
    corrupt(file, "bytes [{}, {}) at the end of the data buffer belong to no tensor", cursor, data_size);
}

Result<std::string> read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(ErrorCode::kIo, "{}: cannot open for reading", path.string());
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return make_error(ErrorCode::kIo, "{}: read failed", path.string());
  return text.str();
}

}  // namespace

SafetensorsFile::~SafetensorsFile() = default;

Result<std::shared_ptr<SafetensorsFile>> SafetensorsFile::open(const std::filesystem::path& path) {
  const std::string p = path.string();
  int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    return make_error(e == ENOENT ? ErrorCode::kNotFound : ErrorCode::kIo, "{}: cannot open: {}", p, std::strerror(e));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    return make_error(ErrorCode::kIo, "{}: cannot stat: {}", p, std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return make_error(ErrorCode::kInvalidArgument, "{}: not a regular file", p);
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return make_error(ErrorCode::kCorrupt, "{}: file is {} bytes, shorter than the 8-byte header length", p, size);
  }
  void* addr = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  ::close(fd);  // the mapping stays valid without the descriptor
  if (addr == MAP_FAILED) return make_error(ErrorCode::kIo, "{}: mmap failed: {}", p, std::strerror(map_errno));

  auto file = std::shared_ptr<SafetensorsFile>(new SafetensorsFile());
  file->path_ = path;
  file->mapping_ = std::shared_ptr<void>(addr, [size](void* a) { ::munmap(a, size); });
  const char* base = static_cast<const char*>(addr);

  uint64_t n = 0;
  std::memcpy(&n, base, 8);
  if (n < 2) return make_error(ErrorCode::kCorrupt, "{}: header length {} is below the minimum of 2", p, n);
  if (n > kMaxHeaderBytes)
    return make_error(ErrorCode::kCorrupt, "{}: header length {} exceeds the limit of {} bytes", p, n, kMaxHeaderBytes);
  if (8 + n > size)
    return make_error(ErrorCode::kCorrupt, "{}: header length {} exceeds the file size of {} bytes (8 + {} > {})", p, n,
                      size, n, size);
  file->data_ = base + 8 + n;
  file->data_size_ = size - 8 - n;

  try {
    json header;
    try {
      header = json::parse(base + 8, base + 8 + n);  // also rejects ill-formed UTF-8
    } catch (const json::exception& e) {  // parse_error, or out_of_range for a number beyond double
      corrupt(p, "header is not valid JSON: {}", one_line(e.what()));
    }
    if (!header.is_object()) corrupt(p, "header is not a JSON object (got {})", show(header));
    for (const auto& [name, v] : header.items()) {
      if (name == "__metadata__") {
        if (v.is_null()) continue;
        if (!v.is_object()) corrupt(p, "'__metadata__' is not an object of strings (got {})", show(v));
        for (const auto& [k, mv] : v.items()) {
          if (!mv.is_string()) corrupt(p, "'__metadata__' value for '{}' is not a string (got {})", k, show(mv));
          file->metadata_[k] = mv.get<std::string>();
        }
        continue;
      }
      TensorInfo t = parse_entry(p, name, v, file->data_size_);
      t.file = path;
      file->tensors_.emplace(name, std::move(t));
    }
    check_layout(p, file->tensors_, file->data_size_);
  } catch (const HeaderError& e) {
    return e.error;
  }
  return file;
}

Result<Tensor> SafetensorsFile::tensor(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) return make_error(ErrorCode::kNotFound, "{}: no tensor '{}'", path_.string(), name);
  const TensorInfo& t = it->second;
  if (!t.loadable())
    return make_error(ErrorCode::kUnsupported, "{}: tensor '{}' has dtype {}, which pdserve cannot load",
                      path_.string(), name, t.dtype_name);
  // MAP_PRIVATE + PROT_READ: writing through the view faults instead of touching the file.
  const char* bytes = data_ + t.data_begin;
  auto storage = Storage::borrow(const_cast<char*>(bytes), t.data_end - t.data_begin, mapping_);
  Tensor view = Tensor::from_storage(std::move(storage), 0, t.shape, t.dtype);
  // The format packs tensors without padding, so one after an odd-sized tensor (e.g. 15 fp8 bytes)
  // can start at any address; reading it as float/int through data<T>() would be undefined
  // (UBSan: misaligned load). Such a tensor is copied into aligned memory; aligned ones (Hugging
  // Face's writer orders tensors by element size, so all of theirs) stay zero-copy.
  if (reinterpret_cast<uintptr_t>(bytes) % dtype_size(t.dtype) != 0) return view.clone();
  return view;
}

Result<Checkpoint> Checkpoint::open(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  Checkpoint ck;
  ck.dir_ = dir;
  if (fs::is_regular_file(dir, ec)) {
    PDSERVE_ASSIGN_OR_RETURN(auto file, SafetensorsFile::open(dir));
    for (const auto& [name, t] : file->tensors()) ck.where_[name] = file;
    return ck;
  }
  if (!fs::is_directory(dir, ec)) return make_error(ErrorCode::kNotFound, "{}: no such directory", dir.string());

  const fs::path index_path = dir / "model.safetensors.index.json";
  if (fs::exists(index_path, ec)) {
    const std::string ip = index_path.string();
    PDSERVE_ASSIGN_OR_RETURN(std::string text, read_text(index_path));
    json index;
    try {
      index = json::parse(text);
    } catch (const json::exception& e) {  // parse_error, or out_of_range for a number beyond double
      return make_error(ErrorCode::kCorrupt, "{}: invalid JSON: {}", ip, one_line(e.what()));
    }
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
      return make_error(ErrorCode::kCorrupt, "{}: missing 'weight_map' object", ip);
    std::map<std::string, std::shared_ptr<SafetensorsFile>> shards;
    for (const auto& [name, shard_json] : index["weight_map"].items()) {
      if (!shard_json.is_string() || shard_json.get<std::string>().empty())
        return make_error(ErrorCode::kCorrupt, "{}: weight_map entry for '{}' is not a file name (got {})", ip, name,
                          show(shard_json));
      const std::string shard = shard_json.get<std::string>();
      if (fs::path(shard).is_absolute())
        return make_error(ErrorCode::kCorrupt, "{}: shard '{}' for tensor '{}' is an absolute path", ip, shard, name);
      auto it = shards.find(shard);
      if (it == shards.end()) {
        const fs::path shard_path = dir / shard;
        if (!fs::exists(shard_path, ec))
          return make_error(ErrorCode::kNotFound, "{}: shard '{}' (listed for tensor '{}') does not exist: {}", ip,
                            shard, name, shard_path.string());
        PDSERVE_ASSIGN_OR_RETURN(auto file, SafetensorsFile::open(shard_path));
        it = shards.emplace(shard, std::move(file)).first;
      }
      if (it->second->tensors().count(name) == 0)
        return make_error(ErrorCode::kCorrupt, "{}: tensor '{}' is assigned to shard '{}', which does not contain it",
                          ip, name, shard);
      ck.where_[name] = it->second;
    }
    return ck;
  }

  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (entry.path().extension() == ".safetensors" && entry.is_regular_file(ec)) files.push_back(entry.path());
  if (ec) return make_error(ErrorCode::kIo, "{}: cannot list: {}", dir.string(), ec.message());
  if (files.empty()) return make_error(ErrorCode::kNotFound, "no *.safetensors files in {}", dir.string());
  std::sort(files.begin(), files.end());
  for (const fs::path& f : files) {
    PDSERVE_ASSIGN_OR_RETURN(auto file, SafetensorsFile::open(f));
    for (const auto& [name, t] : file->tensors()) {
      auto [it, inserted] = ck.where_.emplace(name, file);
      if (!inserted)
        return make_error(ErrorCode::kCorrupt, "{}: tensor '{}' is in both {} and {} (and there is no index)",
                          dir.string(), name, it->second->path().filename().string(), f.filename().string());
    }
  }
  return ck;
}

Result<Tensor> Checkpoint::tensor(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end())
    return make_error(ErrorCode::kNotFound, "{}: checkpoint has no tensor '{}'", dir_.string(), name);
  return it->second->tensor(name);
}

const TensorInfo* Checkpoint::info(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) return nullptr;
  auto t = it->second->tensors().find(name);
  return t == it->second->tensors().end() ? nullptr : &t->second;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [name, file] : where_) out.push_back(name);
  return out;
}

Status write_safetensors(const std::filesystem::path& path, const std::map<std::string, Tensor>& tensors) {
  const std::string p = path.string();
  json header = json::object();
  header["__metadata__"] = {{"format", "pt"}};
  std::vector<Tensor> data;  // contiguous host tensors, in name order (std::map order)
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__") return make_error(ErrorCode::kInvalidArgument, "{}: '__metadata__' is not a tensor name", p);
    if (!t.defined()) return make_error(ErrorCode::kInvalidArgument, "{}: tensor '{}' is undefined", p, name);
    if (t.device() != Device::kCpu)
      return make_error(ErrorCode::kInvalidArgument, "{}: tensor '{}' is not in host memory", p, name);
    Tensor c = t.is_contiguous() ? t : t.clone();
    header[name] = {{"dtype", dtype_safetensors_name(c.dtype())},
                    {"shape", c.shape()},
                    {"data_offsets", {offset, offset + c.nbytes()}}};
    offset += c.nbytes();
    data.push_back(std::move(c));
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the data buffer starts 8-byte aligned

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return make_error(ErrorCode::kIo, "{}: cannot open for writing: {}", p, std::strerror(errno));
  const uint64_t n = text.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const Tensor& t : data)
    if (t.nbytes() > 0) out.write(static_cast<const char*>(t.raw_data()), static_cast<std::streamsize>(t.nbytes()));
  out.close();
  if (!out) return make_error(ErrorCode::kIo, "{}: write failed", p);
  return ok_status();
}

}  // namespace pdserve::model
