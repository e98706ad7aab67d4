#include "moe/expert_location_torch.h"

#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <unordered_map>

namespace pdserve::moe {

namespace {

// ---------------------------------------------------------------- ZIP (stored entries only)

uint64_t le(std::string_view b, size_t at, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(b[at + i]);
  return v;
}

class ZipReader {
 public:
  static Result<ZipReader> open(std::string_view bytes, std::string_view source) {
    ZipReader z;
    z.bytes_ = bytes;
    const size_t n = bytes.size();
    if (n < 22) return make_error(ErrorCode::kCorrupt, "{}: not a torch.save file (too short for a ZIP archive)", source);
    size_t eocd = std::string_view::npos;
    for (size_t i = n - 22 + 1; i-- > 0 && n - i <= 22 + 65535;)
      if (le(bytes, i, 4) == 0x06054b50) {
        eocd = i;
        break;
      }
    if (eocd == std::string_view::npos)
      return make_error(ErrorCode::kCorrupt, "{}: not a torch.save file (no ZIP end-of-directory record)", source);
    uint64_t count = le(bytes, eocd + 10, 2), at = le(bytes, eocd + 16, 4);
    for (uint64_t e = 0; e < count; ++e) {
      if (at + 46 > n || le(bytes, at, 4) != 0x02014b50)
        return make_error(ErrorCode::kCorrupt, "{}: ZIP central directory entry {} is damaged", source, e);
      uint64_t method = le(bytes, at + 10, 2), csize = le(bytes, at + 20, 4), usize = le(bytes, at + 24, 4);
      uint64_t name_len = le(bytes, at + 28, 2), extra_len = le(bytes, at + 30, 2), comment_len = le(bytes, at + 32, 2);
      uint64_t local = le(bytes, at + 42, 4);
      if (at + 46 + name_len + extra_len > n)
        return make_error(ErrorCode::kCorrupt, "{}: ZIP central directory entry {} is damaged", source, e);
      std::string name(bytes.substr(at + 46, name_len));
      // ZIP64: fields set to 0xFFFFFFFF are in the 0x0001 extra block, in this order.
      for (size_t x = at + 46 + name_len; x + 4 <= at + 46 + name_len + extra_len;) {
        uint64_t id = le(bytes, x, 2), len = le(bytes, x + 2, 2);
        size_t f = x + 4;
        if (id == 1) {
          if (usize == 0xFFFFFFFF && f + 8 <= x + 4 + len) usize = le(bytes, f, 8), f += 8;
          if (csize == 0xFFFFFFFF && f + 8 <= x + 4 + len) csize = le(bytes, f, 8), f += 8;
          if (local == 0xFFFFFFFF && f + 8 <= x + 4 + len) local = le(bytes, f, 8);
        }
        x += 4 + len;
      }
      if (local + 30 > n || le(bytes, local, 4) != 0x04034b50)
        return make_error(ErrorCode::kCorrupt, "{}: ZIP entry '{}' has no local header", source, name);
      uint64_t data = local + 30 + le(bytes, local + 26, 2) + le(bytes, local + 28, 2);
      if (method != 0 || csize != usize)
        return make_error(ErrorCode::kUnsupported,
                          "{}: ZIP entry '{}' is compressed (method {}); torch.save stores entries uncompressed",
                          source, name, method);
      if (data + usize > n)
        return make_error(ErrorCode::kCorrupt, "{}: ZIP entry '{}' runs past the end of the file", source, name);
      z.entries_[name] = bytes.substr(data, usize);
      at += 46 + name_len + extra_len + comment_len;
    }
    return z;
  }
  const std::map<std::string, std::string_view>& entries() const { return entries_; }

 private:
  std::string_view bytes_;
  std::map<std::string, std::string_view> entries_;
};

// ---------------------------------------------------------------- pickle

struct PyObj;
using PyRef = std::shared_ptr<PyObj>;
struct PyObj {
  enum class Kind { kNone, kBool, kInt, kFloat, kString, kList, kTuple, kDict, kGlobal, kStorage, kJson };
  Kind kind = Kind::kNone;
  int64_t i = 0;
  double f = 0;
  std::string s;  // string; "module.name" of a global; storage dtype
  std::string key;  // storage key (data/<key>)
  std::vector<PyRef> items;
  std::vector<std::pair<PyRef, PyRef>> dict;
  nlohmann::json json;  // a rebuilt tensor
};

PyRef make(PyObj::Kind k) {
  auto p = std::make_shared<PyObj>();
  p->kind = k;
  return p;
}

struct StorageType {
  const char* name;
  int size;
};
// torch.<X>Storage -> element size; values are decoded in element_to_json.
const std::map<std::string, StorageType>& storage_types() {
  static const std::map<std::string, StorageType> t = {
      {"torch.LongStorage", {"int64", 8}},   {"torch.IntStorage", {"int32", 4}},
      {"torch.ShortStorage", {"int16", 2}},  {"torch.CharStorage", {"int8", 1}},
      {"torch.ByteStorage", {"uint8", 1}},   {"torch.BoolStorage", {"bool", 1}},
      {"torch.FloatStorage", {"float32", 4}}, {"torch.DoubleStorage", {"float64", 8}},
  };
  return t;
}

nlohmann::json element_to_json(const std::string& dtype, const char* p) {
  if (dtype == "int64") {
    int64_t v;
    std::memcpy(&v, p, 8);
    return v;
  }
  if (dtype == "int32") {
    int32_t v;
    std::memcpy(&v, p, 4);
    return v;
  }
  if (dtype == "int16") {
    int16_t v;
    std::memcpy(&v, p, 2);
    return v;
  }
  if (dtype == "int8") return static_cast<int8_t>(*p);
  if (dtype == "uint8") return static_cast<uint8_t>(*p);
  if (dtype == "bool") return *p != 0;
  if (dtype == "float32") {
    float v;
    std::memcpy(&v, p, 4);
    return v;
  }
  double v;
  std::memcpy(&v, p, 8);
  return v;
}

class Unpickler {
 public:
  Unpickler(std::string_view pkl, const ZipReader& zip, std::string prefix, std::string source)
      : b_(pkl), zip_(zip), prefix_(std::move(prefix)), source_(std::move(source)) {}

  Result<PyRef> run() {
    while (pos_ < b_.size()) {
      uint8_t op = static_cast<uint8_t>(b_[pos_++]);
      if (op == '.') {
        if (stack_.size() != 1) return corrupt("STOP with {} values on the stack", stack_.size());
        return stack_.back();
      }
      PDSERVE_RETURN_IF_ERROR(step(op));
    }
    return corrupt("pickle ends without STOP");
  }

 private:
  template <class... A>
  Error corrupt(fmt::format_string<A...> f, A&&... args) {
    return Error(ErrorCode::kCorrupt,
                 fmt::format("{}: data.pkl at byte {}: ", source_, pos_) + fmt::format(f, std::forward<A>(args)...));
  }
  Result<uint64_t> take(int n) {
    if (pos_ + n > b_.size()) return corrupt("truncated");
    uint64_t v = le(b_, pos_, n);
    pos_ += n;
    return v;
  }
  Result<std::string> take_bytes(uint64_t n) {
    if (pos_ + n > b_.size()) return corrupt("truncated string");
    std::string s(b_.substr(pos_, n));
    pos_ += n;
    return s;
  }
  Result<std::string> take_line() {
    size_t e = b_.find('\n', pos_);
    if (e == std::string_view::npos) return corrupt("unterminated GLOBAL");
    std::string s(b_.substr(pos_, e - pos_));
    pos_ = e + 1;
    return s;
  }
  Result<PyRef> pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) return corrupt("stack underflow");
    PyRef v = stack_.back();
    stack_.pop_back();
    return v;
  }
  Result<std::vector<PyRef>> pop_to_mark() {
    if (marks_.empty()) return corrupt("no MARK");
    std::vector<PyRef> v(stack_.begin() + static_cast<std::ptrdiff_t>(marks_.back()), stack_.end());
    stack_.resize(marks_.back());
    marks_.pop_back();
    return v;
  }
  Status push_int(int64_t v) {
    auto o = make(PyObj::Kind::kInt);
    o->i = v;
    stack_.push_back(o);
    return ok_status();
  }
  Status push_str(std::string s) {
    auto o = make(PyObj::Kind::kString);
    o->s = std::move(s);
    stack_.push_back(o);
    return ok_status();
  }
  Status push_counted_str(int len_bytes) {
    PDSERVE_ASSIGN_OR_RETURN(uint64_t n, take(len_bytes));
    PDSERVE_ASSIGN_OR_RETURN(std::string s, take_bytes(n));
    return push_str(std::move(s));
  }
  Status push_tuple(std::vector<PyRef> items) {
    auto o = make(PyObj::Kind::kTuple);
    o->items = std::move(items);
    stack_.push_back(o);
    return ok_status();
  }
  Status memoize(uint64_t idx) {
    if (stack_.empty()) return corrupt("PUT on an empty stack");
    memo_[idx] = stack_.back();
    return ok_status();
  }

  Status step(uint8_t op) {
    switch (op) {
      case 0x80: { PDSERVE_RETURN_IF_ERROR(take(1)); return ok_status(); }  // PROTO
      case 0x95: { PDSERVE_RETURN_IF_ERROR(take(8)); return ok_status(); }  // FRAME
      case '}': stack_.push_back(make(PyObj::Kind::kDict)); return ok_status();
      case ']': stack_.push_back(make(PyObj::Kind::kList)); return ok_status();
      case ')': return push_tuple({});
      case '(': marks_.push_back(stack_.size()); return ok_status();
      case 'N': stack_.push_back(make(PyObj::Kind::kNone)); return ok_status();
      case 0x88: case 0x89: {  // NEWTRUE, NEWFALSE
        auto o = make(PyObj::Kind::kBool);
        o->i = op == 0x88;
        stack_.push_back(o);
        return ok_status();
      }
      case 'K': { PDSERVE_ASSIGN_OR_RETURN(uint64_t v, take(1)); return push_int(static_cast<int64_t>(v)); }
      case 'M': { PDSERVE_ASSIGN_OR_RETURN(uint64_t v, take(2)); return push_int(static_cast<int64_t>(v)); }
      case 'J': { PDSERVE_ASSIGN_OR_RETURN(uint64_t v, take(4)); return push_int(static_cast<int32_t>(v)); }
      case 0x8a: {  // LONG1: little-endian two's complement of n bytes
        PDSERVE_ASSIGN_OR_RETURN(uint64_t n, take(1));
        if (n > 8) return corrupt("integer of {} bytes is too large", n);
        if (n == 0) return push_int(0);
        PDSERVE_ASSIGN_OR_RETURN(uint64_t v, take(static_cast<int>(n)));
        if (n < 8 && (v >> (8 * n - 1)) & 1) v |= ~uint64_t{0} << (8 * n);
        return push_int(static_cast<int64_t>(v));
      }
      case 'G': {  // BINFLOAT, big-endian
        if (pos_ + 8 > b_.size()) return corrupt("truncated BINFLOAT");
        uint64_t bits = 0;
        for (int k = 0; k < 8; ++k) bits = (bits << 8) | static_cast<uint8_t>(b_[pos_ + k]);
        pos_ += 8;
        auto o = make(PyObj::Kind::kFloat);
        std::memcpy(&o->f, &bits, 8);
        stack_.push_back(o);
        return ok_status();
      }
      case 'X': return push_counted_str(4);     // BINUNICODE
      case 0x8c: return push_counted_str(1);    // SHORT_BINUNICODE
      case 0x8d: return push_counted_str(8);    // BINUNICODE8
      case 'q': { PDSERVE_ASSIGN_OR_RETURN(uint64_t i, take(1)); return memoize(i); }
      case 'r': { PDSERVE_ASSIGN_OR_RETURN(uint64_t i, take(4)); return memoize(i); }
      case 0x94: return memoize(memo_.size());  // MEMOIZE
      case 'h': case 'j': {
        PDSERVE_ASSIGN_OR_RETURN(uint64_t i, take(op == 'h' ? 1 : 4));
        auto it = memo_.find(i);
        if (it == memo_.end()) return corrupt("GET of unknown memo {}", i);
        stack_.push_back(it->second);
        return ok_status();
      }
      case 't': { PDSERVE_ASSIGN_OR_RETURN(auto items, pop_to_mark()); return push_tuple(std::move(items)); }
      case 0x85: case 0x86: case 0x87: {
        std::vector<PyRef> items(op - 0x84);
        for (size_t k = items.size(); k-- > 0;) { PDSERVE_ASSIGN_OR_RETURN(items[k], pop()); }
        return push_tuple(std::move(items));
      }
      case 'c': {
        PDSERVE_ASSIGN_OR_RETURN(auto mod, take_line());
        PDSERVE_ASSIGN_OR_RETURN(auto name, take_line());
        auto o = make(PyObj::Kind::kGlobal);
        o->s = mod + "." + name;
        stack_.push_back(o);
        return ok_status();
      }
      case 0x93: {  // STACK_GLOBAL
        PDSERVE_ASSIGN_OR_RETURN(auto name, pop());
        PDSERVE_ASSIGN_OR_RETURN(auto mod, pop());
        auto o = make(PyObj::Kind::kGlobal);
        o->s = mod->s + "." + name->s;
        stack_.push_back(o);
        return ok_status();
      }
      case 'Q': return persistent_load();
      case 'R': case 0x81: return reduce();  // REDUCE, NEWOBJ
      case 'b': { PDSERVE_RETURN_IF_ERROR(pop()); return ok_status(); }  // BUILD: state of an OrderedDict etc.
      case 's': {
        PDSERVE_ASSIGN_OR_RETURN(auto v, pop());
        PDSERVE_ASSIGN_OR_RETURN(auto k, pop());
        return set_items({k, v});
      }
      case 'u': { PDSERVE_ASSIGN_OR_RETURN(auto kv, pop_to_mark()); return set_items(std::move(kv)); }
      case 'a': {
        PDSERVE_ASSIGN_OR_RETURN(auto v, pop());
        if (stack_.empty() || stack_.back()->kind != PyObj::Kind::kList) return corrupt("APPEND to a non-list");
        stack_.back()->items.push_back(v);
        return ok_status();
      }
      case 'e': {
        PDSERVE_ASSIGN_OR_RETURN(auto vs, pop_to_mark());
        if (stack_.empty() || stack_.back()->kind != PyObj::Kind::kList) return corrupt("APPENDS to a non-list");
        for (auto& v : vs) stack_.back()->items.push_back(v);
        return ok_status();
      }
      default:
        return Error(ErrorCode::kUnsupported,
                     fmt::format("{}: data.pkl at byte {}: pickle opcode 0x{:02x} is not one torch.save uses for "
                                 "tensors, numbers and strings",
                                 source_, pos_ - 1, op));
    }
  }

  Status set_items(std::vector<PyRef> kv) {
    if (kv.size() % 2) return corrupt("SETITEMS with an odd count");
    if (stack_.empty() || stack_.back()->kind != PyObj::Kind::kDict) return corrupt("SETITEM on a non-dict");
    for (size_t k = 0; k < kv.size(); k += 2) stack_.back()->dict.emplace_back(kv[k], kv[k + 1]);
    return ok_status();
  }

  // ('storage', torch.XStorage, key, location, numel): the location (cpu, cuda:0) does not matter
  // here, the bytes are in data/<key> either way.
  Status persistent_load() {
    PDSERVE_ASSIGN_OR_RETURN(auto pid, pop());
    if (pid->kind != PyObj::Kind::kTuple || pid->items.size() < 3 || pid->items[0]->s != "storage" ||
        pid->items[1]->kind != PyObj::Kind::kGlobal)
      return corrupt("persistent id is not a torch storage");
    auto it = storage_types().find(pid->items[1]->s);
    if (it == storage_types().end())
      return Error(ErrorCode::kUnsupported, fmt::format("{}: storage type {} is not supported", source_, pid->items[1]->s));
    auto o = make(PyObj::Kind::kStorage);
    o->s = it->first;
    o->key = pid->items[2]->s;
    stack_.push_back(o);
    return ok_status();
  }

  Status reduce() {
    PDSERVE_ASSIGN_OR_RETURN(auto args, pop());
    PDSERVE_ASSIGN_OR_RETURN(auto fn, pop());
    if (fn->kind != PyObj::Kind::kGlobal || args->kind != PyObj::Kind::kTuple) return corrupt("REDUCE of a non-callable");
    if (fn->s == "collections.OrderedDict") {
      stack_.push_back(make(PyObj::Kind::kDict));
      return ok_status();
    }
    if (fn->s == "torch._utils._rebuild_tensor_v2" || fn->s == "torch._utils._rebuild_tensor") return rebuild_tensor(*args);
    return Error(ErrorCode::kUnsupported,
                 fmt::format("{}: cannot rebuild a {} (only tensors, dicts, lists and numbers)", source_, fn->s));
  }

  Status rebuild_tensor(const PyObj& args) {
    if (args.items.size() < 4 || args.items[0]->kind != PyObj::Kind::kStorage)
      return corrupt("_rebuild_tensor arguments are not (storage, offset, size, stride, ...)");
    const PyObj& st = *args.items[0];
    const StorageType& type = storage_types().at(st.s);
    auto entry = zip_.entries().find(prefix_ + "data/" + st.key);
    if (entry == zip_.entries().end()) return corrupt("tensor storage data/{} is missing from the archive", st.key);
    std::string_view data = entry->second;
    const int64_t numel_storage = static_cast<int64_t>(data.size()) / type.size;
    int64_t offset = args.items[1]->i;
    std::vector<int64_t> size, stride;
    for (auto& v : args.items[2]->items) size.push_back(v->i);
    for (auto& v : args.items[3]->items) stride.push_back(v->i);
    if (size.size() != stride.size() || size.size() > 16) return corrupt("tensor size and stride do not match");
    // Stride-0 (expanded) views are legal, so the storage size does not bound the element count.
    int64_t elements = 1;
    for (int64_t d : size)
      if (d < 0 || (d > 0 && elements > (int64_t{1} << 28) / d))
        return corrupt("tensor has more than 2^28 elements (dimension {})", d);
      else
        elements *= d;
    int64_t last = offset;
    for (size_t d = 0; d < size.size(); ++d) {
      if (size[d] < 0 || stride[d] < 0) return corrupt("negative tensor size or stride");
      if (size[d] == 0) last = -1;
      if (last >= 0) last += (size[d] - 1) * stride[d];
    }
    if (offset < 0 || last >= numel_storage) return corrupt("tensor reaches past its storage data/{}", st.key);
    auto o = make(PyObj::Kind::kJson);
    o->json = build(type, data, size, stride, 0, offset);
    stack_.push_back(o);
    return ok_status();
  }

  nlohmann::json build(const StorageType& type, std::string_view data, const std::vector<int64_t>& size,
                       const std::vector<int64_t>& stride, size_t dim, int64_t at) {
    if (dim == size.size()) return element_to_json(type.name, data.data() + at * type.size);
    nlohmann::json arr = nlohmann::json::array();
    for (int64_t k = 0; k < size[dim]; ++k) arr.push_back(build(type, data, size, stride, dim + 1, at + k * stride[dim]));
    return arr;
  }

  std::string_view b_;
  size_t pos_ = 0;
  const ZipReader& zip_;
  std::string prefix_, source_;
  std::vector<PyRef> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, PyRef> memo_;
};

Result<nlohmann::json> to_json(const PyObj& o, const std::string& source) {
  switch (o.kind) {
    case PyObj::Kind::kNone: return nlohmann::json(nullptr);
    case PyObj::Kind::kBool: return nlohmann::json(o.i != 0);
    case PyObj::Kind::kInt: return nlohmann::json(o.i);
    case PyObj::Kind::kFloat: return nlohmann::json(o.f);
    case PyObj::Kind::kString: return nlohmann::json(o.s);
    case PyObj::Kind::kJson: return o.json;
    case PyObj::Kind::kList:
    case PyObj::Kind::kTuple: {
      nlohmann::json a = nlohmann::json::array();
      for (auto& v : o.items) {
        PDSERVE_ASSIGN_OR_RETURN(auto j, to_json(*v, source));
        a.push_back(std::move(j));
      }
      return a;
    }
    case PyObj::Kind::kDict: {
      nlohmann::json d = nlohmann::json::object();
      for (auto& [k, v] : o.dict) {
        if (k->kind != PyObj::Kind::kString)
          return make_error(ErrorCode::kUnsupported, "{}: a dict key is not a string", source);
        PDSERVE_ASSIGN_OR_RETURN(auto j, to_json(*v, source));
        d[k->s] = std::move(j);
      }
      return d;
    }
    default: return make_error(ErrorCode::kUnsupported, "{}: the saved object holds a bare class or storage", source);
  }
}

}  // namespace

Result<nlohmann::json> parse_torch_bytes_as_json(std::string_view bytes, std::string_view source) {
  PDSERVE_ASSIGN_OR_RETURN(ZipReader zip, ZipReader::open(bytes, source));
  // Entries live under one top folder named after the file ("archive/" or the stem).
  std::string prefix;
  const std::string_view* pkl = nullptr;
  for (const auto& [name, data] : zip.entries())
    if (name == "data.pkl" || (name.size() > 9 && name.ends_with("/data.pkl"))) {
      prefix = name.substr(0, name.size() - 8);
      pkl = &data;
    }
  if (!pkl) return make_error(ErrorCode::kCorrupt, "{}: ZIP archive has no data.pkl: not a torch.save file", source);
  auto order = zip.entries().find(prefix + "byteorder");
  if (order != zip.entries().end() && order->second != "little")
    return make_error(ErrorCode::kUnsupported, "{}: tensors saved with byte order '{}'", source, order->second);
  Unpickler u(*pkl, zip, prefix, std::string(source));
  PDSERVE_ASSIGN_OR_RETURN(PyRef root, u.run());
  return to_json(*root, std::string(source));
}

Result<nlohmann::json> read_torch_file_as_json(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return make_error(ErrorCode::kNotFound, "{}: no such file", path.string());
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(ErrorCode::kIo, "{}: cannot open", path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string bytes = ss.str();
  return parse_torch_bytes_as_json(bytes, path.string());
}

}  // namespace pdserve::moe
