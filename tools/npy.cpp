// .npy reading (validated, memory-mapped) and header writing; every error names the file.
#include "npy.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <string_view>
#include <utility>

namespace memattn::tool {
namespace {

constexpr std::string_view kMagic{"\x93NUMPY", 6};

[[noreturn]] void fail(const std::string& path, const std::string& what) { throw NpyError(path + ": " + what); }

// The descrs memattn reads and the dtype each becomes; 1-byte types may carry either order mark.
struct KnownDescr {
  std::string_view descr;
  DType dtype;
};
constexpr KnownDescr kDescrs[] = {{"<f4", DType::f32}, {"<f2", DType::f16}, {"<f8", DType::f64},
                                  {"|u1", DType::u8},  {"|b1", DType::u8},  {"<u1", DType::u8},
                                  {"<b1", DType::u8},  {"<i4", DType::i32}, {"<i8", DType::i64}};

std::string descr_of(DType t) {
  if (t == DType::u8) return "'|b1' or '|u1' (bool or uint8)";
  return "'" + std::string(npy_descr(t)) + "' (" + dtype_name(t) + ")";
}

// numpy's name for a simple descr ("<i4" -> "int32, little-endian"), for messages; "" if unknown.
std::string numpy_name(std::string_view d) {
  if (d.size() < 3 || std::string_view("<>|=").find(d[0]) == std::string_view::npos) return "";
  // The item size in bytes, as digits only and small enough that its bit count is meaningful.
  const std::string_view size = d.substr(2);
  if (size.size() > 4 || size.find_first_not_of("0123456789") != std::string_view::npos) return "";
  const std::string bits = std::to_string(std::stoi(std::string(size)) * 8);
  std::string name;
  switch (d[1]) {
    case 'f': name = "float" + bits; break;
    case 'i': name = "int" + bits; break;
    case 'u': name = "uint" + bits; break;
    case 'c': name = "complex" + bits; break;
    case 'b': name = "bool"; break;
    case 'U': name = "unicode string"; break;
    case 'S': name = "byte string"; break;
    case 'O': name = "Python object"; break;
    case 'M': name = "datetime64"; break;
    case 'm': name = "timedelta64"; break;
    default: return "";
  }
  return d[0] == '>' ? name + ", big-endian" : name;
}

// Printable ASCII as is, other bytes as \xNN; long texts cut at 200 characters with "...".
std::string escaped(std::string_view s) {
  std::string out;
  for (unsigned char c : s.substr(0, 200)) {
    if (c >= 0x20 && c < 0x7f && c != '\\') out += char(c);
    else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return s.size() > 200 ? out + "..." : out;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

// The header dict, a Python literal: {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
struct Header {
  std::string descr;
  bool fortran_order = false;
  std::vector<int64_t> shape;
};

class HeaderParser {
 public:
  HeaderParser(const std::string& path, std::string_view text) : path_(path), text_(text) {}

  Header parse() {
    Header h;
    bool seen[3] = {false, false, false};
    expect('{');
    while (skip_space(), peek() != '}') {
      const std::string key = string_literal("a quoted key");
      expect(':');
      skip_space();
      const int which = key == "descr" ? 0 : key == "fortran_order" ? 1 : key == "shape" ? 2 : -1;
      if (which < 0) error("unexpected key '" + key + "' (expected 'descr', 'fortran_order' and 'shape')");
      if (seen[which]) error("key '" + key + "' given twice");
      seen[which] = true;
      if (which == 0) {
        if (peek() == '[') error("a structured dtype (a list of fields) is not supported");
        h.descr = string_literal("a quoted dtype such as '<f4'");
      } else if (which == 1) {
        h.fortran_order = boolean();
      } else {
        h.shape = tuple();
      }
      skip_space();
      if (peek() != '}') expect(',');
    }
    ++pos_;
    skip_space();
    if (pos_ != text_.size()) error("text after the closing '}'");
    for (int i = 0; i < 3; ++i)
      if (!seen[i])
        fail(path_, std::string("malformed .npy header: no '") + (i == 0 ? "descr" : i == 1 ? "fortran_order" : "shape") +
                        "' key (header: " + escaped(text_) + ")");
    return h;
  }

 private:
  [[noreturn]] void error(const std::string& what) {
    const std::string found = pos_ < text_.size() ? "'" + escaped(text_.substr(pos_, 1)) + "'" : "the end";
    fail(path_, "malformed .npy header at character " + std::to_string(pos_) + ": " + what + ", found " +
                    found + " (header: " + escaped(text_) + ")");
  }
  char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n')) ++pos_;
  }
  void expect(char c) {
    skip_space();
    if (peek() != c) error(std::string("expected '") + c + "'");
    ++pos_;
  }
  std::string string_literal(const char* what) {
    skip_space();
    const char quote = peek();
    if (quote != '\'' && quote != '"') error(std::string("expected ") + what);
    const size_t end = text_.find(quote, pos_ + 1);
    if (end == std::string_view::npos) error("unterminated string");
    std::string s(text_.substr(pos_ + 1, end - pos_ - 1));
    pos_ = end + 1;
    return s;
  }
  bool boolean() {
    for (const auto& [word, value] : {std::pair{std::string_view("True"), true}, {"False", false}})
      if (text_.substr(pos_, word.size()) == word) return pos_ += word.size(), value;
    error("expected True or False");
  }
  std::vector<int64_t> tuple() {
    std::vector<int64_t> dims;
    expect('(');
    bool comma_after_last = false;
    while (skip_space(), peek() != ')') {
      const size_t start = pos_;
      int64_t value = 0;
      while (peek() >= '0' && peek() <= '9') {
        if (value > (std::numeric_limits<int64_t>::max() - 9) / 10) error("a dimension too large for int64");
        value = value * 10 + (text_[pos_++] - '0');
      }
      if (pos_ == start) error("expected a non-negative integer dimension");
      dims.push_back(value);
      skip_space();
      comma_after_last = peek() == ',';
      if (peek() != ')') expect(',');
    }
    if (dims.size() == 1 && !comma_after_last) error("a one-element shape needs a trailing comma, as in (3,)");
    ++pos_;
    return dims;
  }

  const std::string& path_;
  std::string_view text_;
  size_t pos_ = 0;
};

std::string system_error(const std::string& what) { return what + ": " + std::strerror(errno); }

bool read_exact(int fd, void* buf, size_t bytes, off_t offset) {
  auto* p = static_cast<char*>(buf);
  while (bytes) {
    const ssize_t got = ::pread(fd, p, bytes, offset);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    p += got, bytes -= size_t(got), offset += got;
  }
  return true;
}

// Closes the descriptor on every path out of read_npy.
struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

NpyArray::NpyArray(NpyArray&& o) noexcept { *this = std::move(o); }

NpyArray& NpyArray::operator=(NpyArray&& o) noexcept {
  std::swap(path_, o.path_), std::swap(descr_, o.descr_), std::swap(dtype_, o.dtype_);
  std::swap(shape_, o.shape_), std::swap(fortran_order_, o.fortran_order_), std::swap(data_, o.data_);
  std::swap(mapping_, o.mapping_), std::swap(mapping_bytes_, o.mapping_bytes_), std::swap(copy_, o.copy_);
  return *this;
}

NpyArray::~NpyArray() {
  if (mapping_) ::munmap(mapping_, mapping_bytes_);
}

Tensor NpyArray::tensor() const {
  if (shape_.size() > 4) throw NpyError(path_ + ": a " + std::to_string(shape_.size()) + "-D array is not a memattn tensor");
  Tensor t;
  t.data = const_cast<void*>(data_);
  t.dtype = dtype_;
  t.ndim = int(shape_.size());
  int64_t step = 1;
  for (int i = 0; i < t.ndim; ++i) {
    const int d = fortran_order_ ? i : t.ndim - 1 - i;  // the fastest dimension first
    t.shape[size_t(d)] = shape_[size_t(d)];
    t.strides[size_t(d)] = step;
    step *= shape_[size_t(d)];
  }
  return t;
}

NpyArray read_npy(const std::string& path, const NpyExpect& expect) {
  const Fd file{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (file.fd < 0) fail(path, system_error("cannot open"));
  struct stat st {};
  if (::fstat(file.fd, &st) != 0) fail(path, system_error("cannot stat"));
  if (!S_ISREG(st.st_mode)) fail(path, "not a regular file");
  const uint64_t file_bytes = uint64_t(st.st_size);

  char pre[12] = {};
  const size_t pre_bytes = file_bytes < sizeof pre ? size_t(file_bytes) : sizeof pre;
  if (!read_exact(file.fd, pre, pre_bytes, 0)) fail(path, system_error("cannot read"));
  if (std::string_view(pre, std::min<size_t>(pre_bytes, 6)) != kMagic)
    fail(path, "not a .npy file: expected the magic string \\x93NUMPY, found '" +
                   escaped(std::string_view(pre, std::min<size_t>(pre_bytes, 6))) + "' (" +
                   std::to_string(file_bytes) + "-byte file)");
  if (pre_bytes < 8) fail(path, "truncated .npy preamble: " + std::to_string(file_bytes) + " bytes");
  const int major = uint8_t(pre[6]), minor = uint8_t(pre[7]);
  if (major < 1 || major > 3 || minor != 0)
    fail(path, "unsupported .npy format version " + std::to_string(major) + "." + std::to_string(minor) +
                   " (expected 1.0, 2.0 or 3.0)");
  const auto byte = [&](int i) { return uint64_t(uint8_t(pre[i])); };
  const uint64_t preamble = major == 1 ? 10 : 12;
  if (file_bytes < preamble) fail(path, "truncated .npy preamble: " + std::to_string(file_bytes) + " bytes");
  const uint64_t header_bytes =
      major == 1 ? byte(8) | byte(9) << 8 : byte(8) | byte(9) << 8 | byte(10) << 16 | byte(11) << 24;
  if (preamble + header_bytes > file_bytes)
    fail(path, "truncated .npy header: the header length says " + std::to_string(header_bytes) +
                   " bytes, the file has " + std::to_string(file_bytes - preamble) + " after the preamble");
  std::string text(size_t(header_bytes), '\0');
  if (!read_exact(file.fd, text.data(), text.size(), off_t(preamble))) fail(path, system_error("cannot read"));
  text.erase(text.find_last_not_of(" \n") + 1);  // the padding, for shorter messages
  const Header h = HeaderParser(path, text).parse();

  NpyArray a;
  a.path_ = path, a.descr_ = h.descr, a.fortran_order_ = h.fortran_order, a.shape_ = h.shape;
  std::optional<DType> dtype;
  for (const KnownDescr& k : kDescrs)
    for (DType accepted : expect.dtypes)
      if (h.descr == k.descr && k.dtype == accepted) dtype = k.dtype;
  if (!dtype) {
    std::string accepted;
    for (size_t i = 0; i < expect.dtypes.size(); ++i)
      accepted += (i == 0 ? "" : i + 1 == expect.dtypes.size() ? " or " : ", ") + descr_of(expect.dtypes.begin()[i]);
    const std::string name = numpy_name(h.descr);
    fail(path, "dtype '" + escaped(h.descr) + "'" + (name.empty() ? "" : " (" + name + ")") +
                   " is not supported here; expected " + accepted);
  }
  a.dtype_ = *dtype;
  if (expect.rank >= 0 && int(h.shape.size()) != expect.rank)
    fail(path, "expected a " + std::to_string(expect.rank) + "-D array " + expect.dims + ", found shape " +
                   shape_text(h.shape) + " (" + std::to_string(h.shape.size()) + "-D)");

  const uint64_t item = dtype_size(a.dtype_);
  uint64_t data_bytes = item;
  for (int64_t d : h.shape)
    if (d != 0 && data_bytes > std::numeric_limits<uint64_t>::max() / uint64_t(d))
      fail(path, "shape " + shape_text(h.shape) + " is too large (its size overflows 64 bits)");
    else
      data_bytes *= uint64_t(d);
  const uint64_t offset = preamble + header_bytes, found = file_bytes - offset;
  if (found != data_bytes)
    fail(path, std::string(found < data_bytes ? "truncated" : "trailing bytes") + ": shape " + shape_text(h.shape) +
                   " of '" + h.descr + "' needs " + std::to_string(data_bytes) + " bytes of data after the " +
                   std::to_string(offset) + "-byte header, found " + std::to_string(found));
  if (data_bytes == 0) return a;

  void* map = ::mmap(nullptr, size_t(file_bytes), PROT_READ, MAP_PRIVATE, file.fd, 0);
  if (map != MAP_FAILED && offset % item == 0) {
    a.mapping_ = map, a.mapping_bytes_ = size_t(file_bytes);
    a.data_ = static_cast<const char*>(map) + offset;
    return a;
  }
  if (map != MAP_FAILED) ::munmap(map, size_t(file_bytes));
  a.copy_.reset(new std::byte[size_t(data_bytes)]);  // new aligns for any element type
  if (!read_exact(file.fd, a.copy_.get(), size_t(data_bytes), off_t(offset))) fail(path, system_error("cannot read"));
  a.data_ = a.copy_.get();
  return a;
}

const char* npy_descr(DType dtype) {
  switch (dtype) {
    case DType::f32: return "<f4";
    case DType::f16: return "<f2";
    case DType::f64: return "<f8";
    case DType::u8: return "|u1";
    case DType::i32: return "<i4";
    case DType::i64: return "<i8";
    default: throw std::invalid_argument(std::string("no .npy dtype for ") + dtype_name(dtype));
  }
}

std::string npy_header(DType dtype, const std::vector<int64_t>& shape) {
  std::string dict = "{'descr': '" + std::string(npy_descr(dtype)) + "', 'fortran_order': False, 'shape': " +
                     shape_text(shape) + ", }";
  const size_t unpadded = 10 + dict.size() + 1;  // version 1.0 preamble, the dict, '\n'
  const bool v1 = unpadded + 63 <= 10 + 65535;
  const size_t preamble = v1 ? 10 : 12, total = (preamble + dict.size() + 1 + 63) / 64 * 64;
  dict.append(total - preamble - dict.size() - 1, ' ').push_back('\n');
  const size_t len = dict.size();
  std::string header(kMagic);
  header += char(v1 ? 1 : 2), header += char(0);
  header += char(len & 0xff), header += char(len >> 8 & 0xff);
  if (!v1) header += char(len >> 16 & 0xff), header += char(len >> 24 & 0xff);
  return header + dict;
}

}  // namespace memattn::tool
