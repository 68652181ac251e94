// A restricted reader for Python pickles, as torch.save writes them: it builds a tree of plain values (None, bools,
// integers, floats, strings, bytes, tuples, lists, sets, dicts) and torch tensors, and NEVER runs code. A pickle names
// the Python callables it wants called (GLOBAL / STACK_GLOBAL); this reader knows a fixed, small set of them and what
// they mean for data (OrderedDict, torch's tensor and parameter rebuilders, the storage classes, _codecs.encode) plus
// a list of classes whose instances it keeps as inert placeholders (a Lightning callback, an OmegaConf node, a numpy
// scalar, ...: data-only objects that real checkpoints carry beside their weights). Any other global (os.system,
// builtins.eval, subprocess.Popen, ...) is refused with its name before anything else happens.
//
// Opcodes: every opcode of protocols 0-5 except the extension registry (EXT1/2/4) and out-of-band buffers
// (NEXT_BUFFER / READONLY_BUFFER), which are refused by name. Values live in an arena owned by the result, so memo
// references and self-referencing containers need no reference counting. Limits: 10^7 values, a stack and memo bounded
// by the input's length, containers walked at most 100 levels deep.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "dreambooth/core/error.hpp"
#include "dreambooth/core/text.hpp"
#include "dreambooth/io/mapped_file.hpp"

namespace dreambooth::io::pickle {

enum class Kind { None, Bool, Int, BigInt, Float, String, Bytes, Tuple, List, Set, Dict, Global, Object, Storage, Tensor };

constexpr std::string_view kind_name(Kind k) {
  constexpr std::string_view kNames[] = {"None", "bool", "int",  "int",    "float",  "str",     "bytes", "tuple",
                                         "list", "set",  "dict", "global", "object", "storage", "tensor"};
  return kNames[static_cast<int>(k)];
}

struct Value;

// A torch storage named by a persistent id: ('storage', <storage class>, key, location, numel[, view]).
struct StorageRef {
  std::string key;
  std::string storage_class;  // "torch.FloatStorage", ...
  std::string location;       // "cpu", "cuda:0"
  std::int64_t numel = 0;     // elements of the storage's dtype
};

// A tensor rebuilt by torch._utils._rebuild_tensor_v2: a strided view into a storage.
struct TensorRef {
  const Value* storage = nullptr;  // Kind::Storage
  std::int64_t offset = 0;         // elements
  std::vector<std::int64_t> size, stride;
};

struct Value {
  Kind kind = Kind::None;
  bool boolean = false;
  std::int64_t integer = 0;
  double real = 0;
  std::string text;                                      // String (UTF-8), Bytes, BigInt (little-endian bytes), Global / Object: class name
  std::vector<Value*> items;                             // Tuple, List, Set; Object: its arguments
  std::vector<std::pair<const Value*, Value*>> entries;  // Dict, in insertion order
  std::unique_ptr<StorageRef> storage;
  std::unique_ptr<TensorRef> tensor;

  bool is_string(std::string_view s) const { return kind == Kind::String && text == s; }
  // The value stored under a string key of a dict (nullptr when absent or not a dict).
  const Value* get(std::string_view key) const {
    if (kind != Kind::Dict) return nullptr;
    for (const auto& [k, v] : entries)
      if (k->is_string(key)) return v;
    return nullptr;
  }
};

// What the unpickler met: the root value and the arena that owns every value.
struct Document {
  std::vector<std::unique_ptr<Value>> arena;
  Value* root = nullptr;
};

// The callables a pickle may name, and what each does here.
enum class GlobalRole {
  OrderedDict,
  RebuildTensor,
  RebuildTensorV2,
  RebuildParameter,
  CodecsEncode,
  MakeSet,
  MakeTuple,
  MakeBytes,
  StorageClass,
  Inert
};

inline const std::map<std::string, GlobalRole, std::less<>>& known_globals() {
  static const std::map<std::string, GlobalRole, std::less<>> table = [] {
    std::map<std::string, GlobalRole, std::less<>> t;
    t["collections.OrderedDict"] = GlobalRole::OrderedDict;
    t["torch._utils._rebuild_tensor"] = GlobalRole::RebuildTensor;
    t["torch._utils._rebuild_tensor_v2"] = GlobalRole::RebuildTensorV2;
    t["torch._utils._rebuild_parameter"] = GlobalRole::RebuildParameter;
    t["torch._utils._rebuild_parameter_with_state"] = GlobalRole::RebuildParameter;
    t["_codecs.encode"] = GlobalRole::CodecsEncode;
    for (const char* s : {"builtins.set", "builtins.frozenset", "__builtin__.set", "__builtin__.frozenset"}) t[s] = GlobalRole::MakeSet;
    t["torch.Size"] = GlobalRole::MakeTuple;
    t["builtins.bytearray"] = GlobalRole::MakeBytes;
    t["__builtin__.bytearray"] = GlobalRole::MakeBytes;
    for (const char* s : {"Float", "Half", "BFloat16", "Double", "Long", "Int", "Short", "Char", "Byte", "Bool", "Float8_e4m3fn", "Float8_e5m2"})
      t[std::string("torch.") + s + "Storage"] = GlobalRole::StorageClass;
    // Data-only classes real checkpoints carry beside their weights; instances become inert placeholders.
    for (const char* s : {"torch.device",
                          "torch.float32",
                          "torch.float16",
                          "torch.bfloat16",
                          "torch.float64",
                          "torch.int64",
                          "torch.int32",
                          "torch.uint8",
                          "torch.bool",
                          "torch.torch_version.TorchVersion",
                          "numpy.core.multiarray.scalar",
                          "numpy._core.multiarray.scalar",
                          "numpy.dtype",
                          "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
                          "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
                          "omegaconf.dictconfig.DictConfig",
                          "omegaconf.listconfig.ListConfig",
                          "omegaconf.base.ContainerMetadata",
                          "omegaconf.base.Metadata",
                          "omegaconf.nodes.AnyNode",
                          "omegaconf.nodes.StringNode",
                          "omegaconf.nodes.IntegerNode",
                          "omegaconf.nodes.FloatNode",
                          "omegaconf.nodes.BooleanNode",
                          "omegaconf.nodes.ValueNode",
                          "omegaconf.nodes.EnumNode",
                          "typing.Any",
                          "collections.defaultdict",
                          "pathlib.PosixPath",
                          "_io.BytesIO"})
      t[s] = GlobalRole::Inert;
    // builtin types named as values (OmegaConf stores a node's type); protocol 2 spells builtins "__builtin__"
    for (const char* s : {"dict", "list", "int", "long", "float", "str", "unicode", "bool", "tuple", "object", "bytes", "NoneType"}) {
      t[std::string("builtins.") + s] = GlobalRole::Inert;
      t[std::string("__builtin__.") + s] = GlobalRole::Inert;
    }
    return t;
  }();
  return table;
}

// Maps a persistent id (BINPERSID's argument) to a value; returns nullptr to refuse it.
using PersistentLoad = std::function<Value*(Document&, const Value& pid)>;

class Unpickler {
 public:
  // `origin` names the pickle in errors ("checkpoint x.ckpt: data.pkl").
  Unpickler(std::span<const std::byte> bytes, std::string origin, PersistentLoad persistent_load = {})
      : in_(bytes, origin), origin_(std::move(origin)), persistent_load_(std::move(persistent_load)) {}

  // Reads one pickle (up to its STOP); the reader stays positioned after it (torch's legacy format is several pickles
  // in a row).
  Document load() {
    Document doc;
    doc_ = &doc;
    stack_.clear();
    marks_.clear();
    memo_.clear();
    while (true) {
      if (in_.at_end()) bad("ends without a STOP opcode");
      const auto op = in_.u8();
      if (op == '.') break;
      step(op);
    }
    if (!marks_.empty()) bad("a MARK was never closed");
    if (stack_.size() != 1) bad("STOP with ", stack_.size(), " values on the stack (expected 1)");
    doc.root = stack_.back();
    doc_ = nullptr;
    return doc;
  }

  std::size_t position() const { return in_.position(); }

 private:
  [[noreturn]] void bad(auto&&... parts) const { fail(origin_, ": ", parts..., " (pickle offset ", in_.position(), ")"); }

  Value* make(Kind kind) {
    if (doc_->arena.size() >= kMaxValues) bad("more than ", kMaxValues, " values");
    doc_->arena.push_back(std::make_unique<Value>());
    doc_->arena.back()->kind = kind;
    return doc_->arena.back().get();
  }
  Value* make_int(std::int64_t v) {
    auto* x = make(Kind::Int);
    x->integer = v;
    return x;
  }
  Value* make_text(Kind kind, std::string s) {
    auto* x = make(kind);
    x->text = std::move(s);
    return x;
  }

  Value* pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) bad("stack underflow");
    auto* v = stack_.back();
    stack_.pop_back();
    return v;
  }
  Value* top() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) bad("stack underflow");
    return stack_.back();
  }
  void push(Value* v) {
    if (stack_.size() > in_.size() + 16) bad("stack overflow");
    stack_.push_back(v);
  }
  // The values pushed since the last MARK, which is removed.
  std::vector<Value*> pop_mark() {
    if (marks_.empty()) bad("no MARK to pop to");
    const auto mark = marks_.back();
    marks_.pop_back();
    std::vector<Value*> items(stack_.begin() + static_cast<std::ptrdiff_t>(mark), stack_.end());
    stack_.resize(mark);
    return items;
  }

  std::string line() {  // protocol 0 arguments end with a newline
    std::string s;
    while (true) {
      if (in_.at_end()) bad("a text argument runs past the end");
      const char c = static_cast<char>(in_.u8());
      if (c == '\n') return s;
      s += c;
    }
  }

  void memo_put(std::uint64_t index) {
    if (index > in_.size()) bad("memo index ", index, " out of range");
    memo_[index] = top();
  }
  Value* memo_get(std::uint64_t index) {
    const auto it = memo_.find(index);
    if (it == memo_.end()) bad("memo index ", index, " was never stored");
    return it->second;
  }

  // Protocol 0's raw-unicode-escape: \uXXXX and \UXXXXXXXX escapes, other bytes as Latin-1.
  std::string raw_unicode_escape(const std::string& s) {
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
      if (s[i] == '\\' && i + 1 < s.size() && (s[i + 1] == 'u' || s[i + 1] == 'U')) {
        const std::size_t digits = s[i + 1] == 'u' ? 4 : 8;
        if (i + 2 + digits > s.size()) bad("truncated \\u escape in a UNICODE argument");
        std::uint32_t cp = 0;
        for (std::size_t k = 0; k < digits; ++k) {
          const char c = s[i + 2 + k];
          const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
          if (d < 0) bad("bad \\u escape in a UNICODE argument");
          cp = cp * 16 + static_cast<std::uint32_t>(d);
        }
        if (cp > 0x10FFFF) bad("code point out of range in a UNICODE argument");
        text::append_utf8(out, cp);
        i += 1 + digits;
      } else {
        text::append_utf8(out, static_cast<unsigned char>(s[i]));
      }
    }
    return out;
  }
  // _codecs.encode(text, "latin1"): code points below 256 as bytes.
  std::string latin1_bytes(const std::string& utf8) {
    std::string out;
    for (std::size_t i = 0; i < utf8.size();) {
      const auto c = static_cast<unsigned char>(utf8[i]);
      std::uint32_t cp;
      if (c < 0x80) {
        cp = c, i += 1;
      } else if ((c & 0xE0) == 0xC0 && i + 1 < utf8.size()) {
        cp = ((c & 0x1Fu) << 6) | (static_cast<unsigned char>(utf8[i + 1]) & 0x3Fu), i += 2;
      } else {
        bad("_codecs.encode: a character beyond Latin-1");
      }
      if (cp > 0xFF) bad("_codecs.encode: a character beyond Latin-1");
      out += static_cast<char>(cp);
    }
    return out;
  }

  Value* make_long(std::span<const std::byte> b) {  // little-endian two's complement
    if (b.empty()) return make_int(0);
    if (b.size() <= 8) {
      std::uint64_t v = 0;
      for (std::size_t i = 0; i < b.size(); ++i) v |= static_cast<std::uint64_t>(b[i]) << (8 * i);
      if (b.size() < 8 && (static_cast<std::uint8_t>(b.back()) & 0x80)) v |= ~0ull << (8 * b.size());  // sign-extend
      return make_int(static_cast<std::int64_t>(v));
    }
    return make_text(Kind::BigInt, std::string(reinterpret_cast<const char*>(b.data()), b.size()));
  }

  Value* global(const std::string& module, const std::string& name) {
    const auto full = module + "." + name;
    if (!known_globals().count(full))
      bad("refuses the Python global \"", full, "\": only tensors and (nested) state dicts are read, and this name is not among the data-only ",
          "classes allowed (a pickle that names it could run code)");
    return make_text(Kind::Global, full);
  }

  // REDUCE / NEWOBJ: `callable(*args)` for the known globals, computed as data.
  Value* call(const Value* callable, Value* args) {
    if (callable->kind != Kind::Global) bad("calls a ", kind_name(callable->kind), ", not a known global");
    if (args->kind != Kind::Tuple) bad(callable->text, " called with a ", kind_name(args->kind), " instead of an argument tuple");
    const auto& a = args->items;
    switch (known_globals().at(callable->text)) {
      case GlobalRole::OrderedDict: {
        auto* d = make(Kind::Dict);
        if (!a.empty()) {  // OrderedDict([(k, v), ...])
          if (a.size() != 1 || (a[0]->kind != Kind::List && a[0]->kind != Kind::Tuple)) bad("OrderedDict called with unexpected arguments");
          for (auto* pair : a[0]->items) {
            if (pair->kind != Kind::Tuple || pair->items.size() != 2) bad("OrderedDict item is not a pair");
            d->entries.emplace_back(pair->items[0], pair->items[1]);
          }
        }
        return d;
      }
      case GlobalRole::RebuildTensor:
      case GlobalRole::RebuildTensorV2: {
        if (a.size() < 4) bad(callable->text, " called with ", a.size(), " arguments (at least 4)");
        if (a[0]->kind != Kind::Storage) bad(callable->text, ": the first argument is a ", kind_name(a[0]->kind), ", not a storage");
        auto* t = make(Kind::Tensor);
        t->tensor = std::make_unique<TensorRef>();
        t->tensor->storage = a[0];
        t->tensor->offset = integer(a[1], "storage offset");
        t->tensor->size = ints(a[2], "size");
        t->tensor->stride = ints(a[3], "stride");
        if (t->tensor->size.size() != t->tensor->stride.size()) bad(callable->text, ": size and stride differ in length");
        return t;
      }
      case GlobalRole::RebuildParameter:
        if (a.empty() || a[0]->kind != Kind::Tensor) bad(callable->text, " called without a tensor");
        return a[0];
      case GlobalRole::CodecsEncode:
        if (a.size() != 2 || a[0]->kind != Kind::String || a[1]->kind != Kind::String) bad("_codecs.encode called with unexpected arguments");
        if (a[1]->text != "latin1" && a[1]->text != "latin-1") bad("_codecs.encode with encoding \"", a[1]->text, "\" (only latin1)");
        return make_text(Kind::Bytes, latin1_bytes(a[0]->text));
      case GlobalRole::MakeSet: {
        auto* s = make(Kind::Set);
        if (!a.empty()) {
          if (a[0]->kind != Kind::List && a[0]->kind != Kind::Tuple && a[0]->kind != Kind::Set) bad("set called with a ", kind_name(a[0]->kind));
          s->items = a[0]->items;
        }
        return s;
      }
      case GlobalRole::MakeTuple: {
        auto* t = make(Kind::Tuple);
        if (!a.empty()) {
          if (a[0]->kind != Kind::List && a[0]->kind != Kind::Tuple) bad("torch.Size called with a ", kind_name(a[0]->kind));
          t->items = a[0]->items;
        }
        return t;
      }
      case GlobalRole::MakeBytes: {
        auto* b = make(Kind::Bytes);
        if (!a.empty() && a[0]->kind == Kind::Bytes) b->text = a[0]->text;
        return b;
      }
      case GlobalRole::StorageClass: bad(callable->text, " is called; storages come only from persistent ids");
      case GlobalRole::Inert: {
        auto* o = make_text(Kind::Object, callable->text);
        o->items = a;
        return o;
      }
    }
    bad("unreachable");
  }

  std::int64_t integer(const Value* v, const char* what) {
    if (v->kind == Kind::Int) return v->integer;
    if (v->kind == Kind::Bool) return v->boolean;
    bad("the tensor's ", what, " is a ", kind_name(v->kind), ", not an integer");
  }
  std::vector<std::int64_t> ints(const Value* v, const char* what) {
    if (v->kind != Kind::Tuple && v->kind != Kind::List) bad("the tensor's ", what, " is a ", kind_name(v->kind), ", not a tuple");
    std::vector<std::int64_t> out;
    for (const auto* x : v->items) out.push_back(integer(x, what));
    return out;
  }

  void setitems(Value* dict, const std::vector<Value*>& kv) {
    if (kv.size() % 2) bad("SETITEMS with an odd number of values");
    if (dict->kind == Kind::Object) return;  // an inert object's items are not kept
    if (dict->kind != Kind::Dict) bad("SETITEM on a ", kind_name(dict->kind));
    // appended in order; a repeated key is found (and refused) where the dict is read
    for (std::size_t i = 0; i < kv.size(); i += 2) dict->entries.emplace_back(kv[i], kv[i + 1]);
  }
  void appends(Value* list, const std::vector<Value*>& items) {
    if (list->kind == Kind::Object) return;
    if (list->kind != Kind::List && list->kind != Kind::Set) bad("APPEND on a ", kind_name(list->kind));
    list->items.insert(list->items.end(), items.begin(), items.end());
  }
  Value* tuple(std::vector<Value*> items) {
    auto* t = make(Kind::Tuple);
    t->items = std::move(items);
    return t;
  }

  void step(std::uint8_t op) {
    switch (op) {
      case 0x80: {  // PROTO
        const auto proto = in_.u8();
        if (proto > 5) bad("pickle protocol ", int(proto), " (this reader knows 0 to 5)");
        return;
      }
      case 0x95: (void)in_.le<std::uint64_t>(); return;  // FRAME: a length hint
      case '(': marks_.push_back(stack_.size()); return;
      case '0': (void)pop(); return;
      case '1': (void)pop_mark(); return;
      case '2': push(top()); return;
      case 'N': push(make(Kind::None)); return;
      case 0x88:
      case 0x89: {
        auto* b = make(Kind::Bool);
        b->boolean = op == 0x88;
        push(b);
        return;
      }
      case 'J': push(make_int(in_.le<std::int32_t>())); return;
      case 'K': push(make_int(in_.u8())); return;
      case 'M': push(make_int(in_.le<std::uint16_t>())); return;
      case 0x8a: push(make_long(in_.take(in_.u8()))); return;
      case 0x8b: {
        const auto n = in_.le<std::int32_t>();
        if (n < 0) bad("LONG4 with a negative length");
        push(make_long(in_.take(static_cast<std::size_t>(n))));
        return;
      }
      case 'I': {  // protocol 0 integer, or a bool as I00 / I01
        const auto s = line();
        if (s == "00" || s == "01") {
          auto* b = make(Kind::Bool);
          b->boolean = s == "01";
          push(b);
          return;
        }
        push(make_int(parse_int(s)));
        return;
      }
      case 'L': {
        auto s = line();
        if (!s.empty() && s.back() == 'L') s.pop_back();
        push(make_int(parse_int(s)));
        return;
      }
      case 'G': {
        const auto b = in_.take(8);
        std::uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | static_cast<std::uint8_t>(b[static_cast<std::size_t>(i)]);  // big-endian
        auto* f = make(Kind::Float);
        std::memcpy(&f->real, &bits, 8);
        push(f);
        return;
      }
      case 'F': {
        const auto s = line();
        auto* f = make(Kind::Float);
        char* end = nullptr;
        f->real = std::strtod(s.c_str(), &end);
        if (s.empty() || end != s.c_str() + s.size()) bad("FLOAT argument \"", s, "\" is not a number");
        push(f);
        return;
      }
      case 'X': push(make_text(Kind::String, in_.text(in_.le<std::uint32_t>()))); return;
      case 0x8c: push(make_text(Kind::String, in_.text(in_.u8()))); return;
      case 0x8d: push(make_text(Kind::String, in_.text(length64()))); return;
      case 'V': push(make_text(Kind::String, raw_unicode_escape(line()))); return;
      case 'T': {
        const auto n = in_.le<std::int32_t>();
        if (n < 0) bad("BINSTRING with a negative length");
        push(make_text(Kind::String, in_.text(static_cast<std::size_t>(n))));
        return;
      }
      case 'U': push(make_text(Kind::String, in_.text(in_.u8()))); return;
      case 'S': {  // protocol 0 quoted string
        auto s = line();
        if (s.size() < 2 || (s.front() != '\'' && s.front() != '"') || s.back() != s.front()) bad("STRING argument is not quoted");
        push(make_text(Kind::String, s.substr(1, s.size() - 2)));
        return;
      }
      case 'B': push(make_text(Kind::Bytes, in_.text(in_.le<std::uint32_t>()))); return;
      case 'C': push(make_text(Kind::Bytes, in_.text(in_.u8()))); return;
      case 0x8e:
      case 0x96: push(make_text(Kind::Bytes, in_.text(length64()))); return;
      case ')': push(make(Kind::Tuple)); return;
      case 't': push(tuple(pop_mark())); return;
      case 0x85:
      case 0x86:
      case 0x87: {
        const std::size_t n = op - 0x84u;
        std::vector<Value*> items(n);
        for (std::size_t i = n; i-- > 0;) items[i] = pop();
        push(tuple(std::move(items)));
        return;
      }
      case ']': push(make(Kind::List)); return;
      case 'l': {
        auto* l = make(Kind::List);
        l->items = pop_mark();
        push(l);
        return;
      }
      case '}': push(make(Kind::Dict)); return;
      case 'd': {
        auto* d = make(Kind::Dict);
        setitems(d, pop_mark());
        push(d);
        return;
      }
      case 0x8f: push(make(Kind::Set)); return;
      case 0x91: {
        auto* s = make(Kind::Set);
        s->items = pop_mark();
        push(s);
        return;
      }
      case 0x90: {
        auto items = pop_mark();
        appends(top(), items);
        return;
      }
      case 'a': {
        auto* item = pop();
        appends(top(), {item});
        return;
      }
      case 'e': {
        auto items = pop_mark();
        appends(top(), items);
        return;
      }
      case 's': {
        auto* value = pop();
        auto* key = pop();
        setitems(top(), {key, value});
        return;
      }
      case 'u': {
        auto kv = pop_mark();
        setitems(top(), kv);
        return;
      }
      case 'p': memo_put(parse_uint(line())); return;
      case 'q': memo_put(in_.u8()); return;
      case 'r': memo_put(in_.le<std::uint32_t>()); return;
      case 0x94: memo_put(memo_.size()); return;
      case 'g': push(memo_get(parse_uint(line()))); return;
      case 'h': push(memo_get(in_.u8())); return;
      case 'j': push(memo_get(in_.le<std::uint32_t>())); return;
      case 'c': {
        const auto module = line();
        const auto name = line();
        push(global(module, name));
        return;
      }
      case 0x93: {
        auto* name = pop();
        auto* module = pop();
        if (module->kind != Kind::String || name->kind != Kind::String) bad("STACK_GLOBAL needs two strings");
        push(global(module->text, name->text));
        return;
      }
      case 'R': {
        auto* args = pop();
        auto* callable = pop();
        push(call(callable, args));
        return;
      }
      case 0x81: {  // NEWOBJ: cls.__new__(cls, *args)
        auto* args = pop();
        auto* cls = pop();
        push(call(cls, args));
        return;
      }
      case 0x92: {    // NEWOBJ_EX
        (void)pop();  // kwargs
        auto* args = pop();
        auto* cls = pop();
        push(call(cls, args));
        return;
      }
      case 'o': {  // OBJ: MARK cls args... OBJ
        auto items = pop_mark();
        if (items.empty()) bad("OBJ without a class");
        auto* cls = items.front();
        push(call(cls, tuple({items.begin() + 1, items.end()})));
        return;
      }
      case 'i': {  // INST module\nname\n: MARK args... INST
        const auto module = line();
        const auto name = line();
        auto* cls = global(module, name);
        push(call(cls, tuple(pop_mark())));
        return;
      }
      case 'b': {  // BUILD: state is kept nowhere (an OrderedDict's _metadata, an inert object's fields)
        (void)pop();
        auto* target = top();
        if (target->kind != Kind::Dict && target->kind != Kind::Object && target->kind != Kind::Tensor) bad("BUILD on a ", kind_name(target->kind));
        return;
      }
      case 'Q': {
        auto* pid = pop();
        if (!persistent_load_) bad("a persistent id where none is expected");
        auto* v = persistent_load_(*doc_, *pid);
        if (!v) bad("refuses persistent id of kind ", kind_name(pid->kind));
        push(v);
        return;
      }
      case 'P': bad("refuses a text persistent id (PERSID): torch writes binary ones");
      case 0x82:
      case 0x83:
      case 0x84: bad("refuses the extension registry opcode EXT", op == 0x82 ? 1 : op == 0x83 ? 2 : 4);
      case 0x97:
      case 0x98: bad("refuses out-of-band buffers (", op == 0x97 ? "NEXT_BUFFER" : "READONLY_BUFFER", ")");
      default: bad("unknown opcode 0x", hex(op));
    }
  }

  std::size_t length64() {
    const auto n = in_.le<std::uint64_t>();
    if (n > in_.remaining()) bad("length ", n, " runs past the end");
    return static_cast<std::size_t>(n);
  }
  std::int64_t parse_int(const std::string& s) {
    char* end = nullptr;
    errno = 0;
    const auto v = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || end != s.c_str() + s.size() || errno == ERANGE) bad("integer argument \"", s, "\" is not a 64-bit integer");
    return v;
  }
  std::uint64_t parse_uint(const std::string& s) {
    const auto v = parse_int(s);
    if (v < 0) bad("negative memo index");
    return static_cast<std::uint64_t>(v);
  }
  static std::string hex(std::uint8_t v) {
    constexpr char kDigits[] = "0123456789abcdef";
    return {kDigits[v >> 4], kDigits[v & 15]};
  }

  static constexpr std::size_t kMaxValues = 10'000'000;

  ByteReader in_;
  std::string origin_;
  PersistentLoad persistent_load_;
  Document* doc_ = nullptr;
  std::vector<Value*> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<std::uint64_t, Value*> memo_;
};

}  // namespace dreambooth::io::pickle
