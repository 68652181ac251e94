// TorchCheckpoint: a TensorSource over a file torch.save wrote (.ckpt, .pt, .pth, .bin), in either of its formats:
//   zip (torch >= 1.6): <archive>/data.pkl, the pickled object whose tensors name their storages by persistent id
//       ('storage', torch.<Type>Storage, key, location, numel), and <archive>/data/<key>, each storage's raw bytes;
//       <archive>/byteorder says "little" (big-endian files are refused);
//   legacy: five pickles in a row (magic number 0x1950a86a20f9469cfc6c, protocol version 1001, system info, the object,
//       the list of storage keys), then each storage as an 8-byte element count and its raw bytes, in the list's order.
// The pickles go through the restricted reader (pickle.hpp), which never runs code. The object must hold tensors in
// (nested) dicts: a Lightning checkpoint's "state_dict" is taken when present, otherwise the whole object; nested dicts
// are flattened with dots ("a.b.weight"); a bare tensor is named "" (NeMo's cached latents). Values that are not tensors
// (epochs, hyper-parameters, inert objects) are skipped. Tensor data is read only when asked for.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "dreambooth/io/mapped_file.hpp"
#include "dreambooth/io/pickle.hpp"
#include "dreambooth/io/tensor_source.hpp"
#include "dreambooth/io/zip.hpp"

namespace dreambooth::io {

// The dtype a torch storage class holds ("torch.FloatStorage" -> F32).
inline std::optional<StDType> torch_storage_dtype(std::string_view storage_class) {
  static const std::pair<std::string_view, StDType> kTypes[] = {{"torch.FloatStorage", StDType::F32},
                                                                {"torch.HalfStorage", StDType::F16},
                                                                {"torch.BFloat16Storage", StDType::BF16},
                                                                {"torch.DoubleStorage", StDType::F64},
                                                                {"torch.LongStorage", StDType::I64},
                                                                {"torch.IntStorage", StDType::I32},
                                                                {"torch.ShortStorage", StDType::I16},
                                                                {"torch.CharStorage", StDType::I8},
                                                                {"torch.ByteStorage", StDType::U8},
                                                                {"torch.BoolStorage", StDType::BOOL},
                                                                {"torch.Float8_e4m3fnStorage", StDType::F8_E4M3},
                                                                {"torch.Float8_e5m2Storage", StDType::F8_E5M2}};
  for (const auto& [name, dtype] : kTypes)
    if (name == storage_class) return dtype;
  return std::nullopt;
}

class TorchCheckpoint final : public TensorSource {
 public:
  explicit TorchCheckpoint(const std::filesystem::path& path) : file_(std::make_shared<MappedFile>(path, "checkpoint")) {
    open(file_->bytes(), file_->path());
  }
  // A checkpoint inside a larger mapped file (a .nemo member); `origin` names it in errors.
  TorchCheckpoint(std::shared_ptr<const MappedFile> file, std::size_t offset, std::size_t size, std::string origin) : file_(std::move(file)) {
    origin_ = std::move(origin);
    open(file_->bytes().subspan(offset, size), origin_);
  }

  const std::string& path() const override { return origin_.empty() ? file_->path() : origin_; }
  std::string_view format() const override { return legacy_ ? "torch legacy" : "torch zip"; }
  const std::map<std::string, TensorInfo>& tensors() const override { return tensors_; }

  // Where the tensors were found ("state_dict" for a Lightning checkpoint, "" for the whole object).
  const std::string& root_key() const { return root_key_; }
  // Top-level keys of the object that were not tensors or dicts (Lightning's "epoch", "global_step", ...), with a
  // short text of their value.
  const std::map<std::string, std::string>& metadata() const override { return scalars_; }

 protected:
  std::optional<std::span<const std::byte>> contiguous(const TensorInfo& info) const override {
    const auto& p = placements_.at(info.name);
    if (!p.contiguous) return std::nullopt;
    return p.storage.subspan(static_cast<std::size_t>(p.offset) * st_dtype_size(info.dtype), static_cast<std::size_t>(info.bytes()));
  }
  void gather(const TensorInfo& info, std::byte* out) const override {
    const auto& p = placements_.at(info.name);
    const auto element = st_dtype_size(info.dtype);
    const auto rank = p.size.size();
    std::vector<std::int64_t> index(rank, 0);
    const auto n = info.shape.numel();
    for (std::int64_t k = 0; k < n; ++k) {
      std::int64_t at = p.offset;
      for (std::size_t d = 0; d < rank; ++d) at += index[d] * p.stride[d];
      std::memcpy(out + static_cast<std::size_t>(k) * element, p.storage.data() + static_cast<std::size_t>(at) * element, element);
      for (std::size_t d = rank; d-- > 0;) {
        if (++index[d] < p.size[d]) break;
        index[d] = 0;
      }
    }
  }

 private:
  struct Placement {
    std::span<const std::byte> storage;  // the whole storage's bytes
    std::int64_t offset = 0;             // elements
    std::vector<std::int64_t> size, stride;
    bool contiguous = true;
  };

  [[noreturn]] void bad(auto&&... parts) const { fail("checkpoint ", path(), ": ", parts...); }

  void open(std::span<const std::byte> bytes, const std::string& origin) {
    if (bytes.size() >= 4 && bytes[0] == std::byte{'P'} && bytes[1] == std::byte{'K'} && bytes[2] == std::byte{3} && bytes[3] == std::byte{4})
      open_zip(bytes, origin);
    else if (bytes.size() >= 2 && bytes[0] == std::byte{0x80} && static_cast<int>(bytes[1]) <= 5)
      open_legacy(bytes, origin);
    else
      bad("not a PyTorch checkpoint (neither the zip format of torch.save nor its legacy pickle format)");
  }

  void open_zip(std::span<const std::byte> bytes, const std::string& origin) {
    const ZipArchive zip(bytes, origin);
    std::string prefix;
    for (const auto& e : zip.entries())
      if (e.name.ends_with("data.pkl") && (e.name == "data.pkl" || e.name.ends_with("/data.pkl")) &&
          std::count(e.name.begin(), e.name.end(), '/') <= 1) {
        if (!prefix.empty() || e.name.size() == 8) bad("holds more than one data.pkl");
        prefix = e.name.substr(0, e.name.size() - 8);
      }
    if (prefix.empty()) bad("a zip archive without <archive>/data.pkl: not written by torch.save");
    if (const auto* order = zip.find(prefix + "byteorder")) {
      const auto b = zip.read(*order);
      const std::string text(reinterpret_cast<const char*>(b.data()), b.size());
      if (text != "little") bad("byte order \"", text, "\": only little-endian checkpoints are read");
    }
    const auto pkl = zip.read(*zip.find(prefix + "data.pkl"));
    std::map<std::string, std::span<const std::byte>> storages;
    pickle::Unpickler unpickler(pkl, origin + ": data.pkl", [&](pickle::Document& doc, const pickle::Value& pid) -> pickle::Value* {
      auto* v = storage_from_pid(doc, pid);
      const auto& key = v->storage->key;
      if (!storages.count(key)) {
        const auto* record = zip.find(prefix + "data/" + key);
        if (!record) bad("storage \"", key, "\" has no record ", prefix, "data/", key);
        storages[key] = zip.stored(*record);
      }
      return v;
    });
    document_ = unpickler.load();
    collect(storages);
  }

  void open_legacy(std::span<const std::byte> bytes, const std::string& origin) {
    legacy_ = true;
    ByteReader in(bytes, origin);
    const auto read_pickle = [&](const char* what, pickle::PersistentLoad load = {}) {
      pickle::Unpickler u(bytes.subspan(in.position()), origin + ": " + what, std::move(load));
      auto doc = u.load();
      in.seek(in.position() + u.position());
      return doc;
    };
    const auto magic = read_pickle("magic number");
    if (magic.root->kind != pickle::Kind::BigInt || magic.root->text.size() != 10 ||
        std::memcmp(magic.root->text.data(), "\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19", 10) != 0)
      bad("a pickle that is not torch.save's legacy format (no magic number)");  // 0x1950a86a20f9469cfc6c, little-endian
    const auto protocol = read_pickle("protocol version");
    if (protocol.root->kind != pickle::Kind::Int || protocol.root->integer != 1001)
      bad("legacy protocol version is not 1001 (tar-based files from torch < 0.4 are not read)");
    const auto sys_info = read_pickle("system info");
    if (const auto* little = sys_info.root->get("little_endian"); little && little->kind == pickle::Kind::Bool && !little->boolean)
      bad("written on a big-endian machine; only little-endian checkpoints are read");
    std::map<std::string, const pickle::Value*> seen;
    document_ = read_pickle("object", [&](pickle::Document& doc, const pickle::Value& pid) -> pickle::Value* {
      auto* v = storage_from_pid(doc, pid);
      seen.emplace(v->storage->key, v);
      return v;
    });
    const auto keys = read_pickle("storage keys");
    if (keys.root->kind != pickle::Kind::List) bad("the legacy storage key list is missing");
    std::map<std::string, std::span<const std::byte>> storages;
    for (const auto* key : keys.root->items) {
      if (key->kind != pickle::Kind::String) bad("a legacy storage key is not a string");
      const auto numel = in.le<std::uint64_t>();
      const auto it = seen.find(key->text);
      if (it == seen.end()) bad("legacy storage \"", key->text, "\" is not used by any tensor");
      const auto element = st_dtype_size(*torch_storage_dtype(it->second->storage->storage_class));
      if (numel > in.remaining() / element) bad("legacy storage \"", key->text, "\" of ", numel, " elements runs past the end of the file");
      storages[key->text] = in.take(static_cast<std::size_t>(numel) * element);
    }
    collect(storages);
  }

  pickle::Value* storage_from_pid(pickle::Document& doc, const pickle::Value& pid) {
    if (pid.kind != pickle::Kind::Tuple || pid.items.size() < 5 || !pid.items[0]->is_string("storage"))
      bad("a persistent id that is not ('storage', type, key, location, numel)");
    const auto* type = pid.items[1];
    if (type->kind != pickle::Kind::Global || !torch_storage_dtype(type->text)) bad("a storage of unknown type");
    if (pid.items[2]->kind != pickle::Kind::String) bad("a storage key that is not a string");
    if (pid.items[4]->kind != pickle::Kind::Int || pid.items[4]->integer < 0) bad("a storage size that is not a count");
    if (pid.items.size() > 5 && pid.items[5]->kind != pickle::Kind::None) bad("a legacy storage view (not supported)");
    doc.arena.push_back(std::make_unique<pickle::Value>());
    auto* v = doc.arena.back().get();
    v->kind = pickle::Kind::Storage;
    v->storage = std::make_unique<pickle::StorageRef>();
    v->storage->storage_class = type->text;
    v->storage->key = pid.items[2]->text;
    v->storage->location = pid.items[3]->kind == pickle::Kind::String ? pid.items[3]->text : "";
    v->storage->numel = pid.items[4]->integer;
    return v;
  }

  // Finds the tensors in the unpickled object and checks each one's view against its storage's bytes.
  void collect(const std::map<std::string, std::span<const std::byte>>& storages) {
    const pickle::Value* root = document_.root;
    if (root->kind == pickle::Kind::Dict) {
      if (const auto* sd = root->get("state_dict"); sd && sd->kind == pickle::Kind::Dict) {
        root_key_ = "state_dict";
        for (const auto& [k, v] : root->entries)
          if (k->kind == pickle::Kind::String && (v->kind == pickle::Kind::Int || v->kind == pickle::Kind::Float || v->kind == pickle::Kind::String))
            scalars_[k->text] = v->kind == pickle::Kind::Int     ? std::to_string(v->integer)
                                : v->kind == pickle::Kind::Float ? std::to_string(v->real)
                                                                 : v->text;
        root = sd;
      }
    } else if (root->kind != pickle::Kind::Tensor) {
      bad("holds a ", pickle::kind_name(root->kind), ", not a state dict or a tensor");
    }
    walk(root, "", 0, storages);
  }

  void walk(const pickle::Value* v, const std::string& name, int depth, const std::map<std::string, std::span<const std::byte>>& storages) {
    if (depth > 100) bad("dicts nested more than 100 deep");
    if (v->kind == pickle::Kind::Tensor) {
      add_tensor(name, *v->tensor, storages);
      return;
    }
    if (v->kind != pickle::Kind::Dict) return;  // not weights
    for (const auto& [k, child] : v->entries) {
      std::string key;
      if (k->kind == pickle::Kind::String)
        key = k->text;
      else if (k->kind == pickle::Kind::Int)
        key = std::to_string(k->integer);
      else
        continue;  // a key that names no tensor (a Lightning callback class)
      walk(child, name.empty() ? key : name + "." + key, depth + 1, storages);
    }
  }

  void add_tensor(const std::string& name, const pickle::TensorRef& t, const std::map<std::string, std::span<const std::byte>>& storages) {
    const auto& s = *t.storage->storage;
    const auto dtype = *torch_storage_dtype(s.storage_class);
    const auto element = st_dtype_size(dtype);
    const auto found = storages.find(s.key);
    if (found == storages.end()) bad("tensor \"", name, "\" uses storage \"", s.key, "\", whose data the file does not hold");
    const auto bytes = found->second;
    if (static_cast<std::uint64_t>(s.numel) > bytes.size() / element)
      bad("storage \"", s.key, "\" declares ", s.numel, " elements but its record holds ", bytes.size(), " bytes");
    if (t.size.size() > static_cast<std::size_t>(Shape::kMaxRank)) bad("tensor \"", name, "\" has rank ", t.size.size());
    TensorInfo info;
    info.name = name;
    info.dtype = dtype;
    Placement p;
    p.storage = bytes.subspan(0, static_cast<std::size_t>(s.numel) * element);
    p.offset = t.offset;
    p.size = t.size;
    p.stride = t.stride;
    // Bounds: every element the view can reach lies inside the storage.
    std::int64_t numel = 1, last = t.offset, expected_stride = 1;
    if (t.offset < 0) bad("tensor \"", name, "\" has a negative storage offset");
    for (std::size_t d = 0; d < t.size.size(); ++d) {
      if (t.size[d] < 0 || t.stride[d] < 0) bad("tensor \"", name, "\" has a negative size or stride");
      if (t.size[d] != 0 && numel > (std::int64_t{1} << 48) / t.size[d]) bad("tensor \"", name, "\" is too large");
      numel *= t.size[d];
      info.shape.push_back(t.size[d]);
    }
    if (numel > 0) {
      for (std::size_t d = 0; d < t.size.size(); ++d) {
        if (t.stride[d] > (std::int64_t{1} << 48) / std::max<std::int64_t>(1, t.size[d])) bad("tensor \"", name, "\" has a stride out of range");
        last += (t.size[d] - 1) * t.stride[d];
      }
      if (last >= s.numel) bad("tensor \"", name, "\" reaches element ", last, " of a storage of ", s.numel);
    }
    for (std::size_t d = t.size.size(); d-- > 0;) {  // C-contiguous: stride = product of the later sizes (size-1 dims free)
      if (t.size[d] != 1 && t.stride[d] != expected_stride) p.contiguous = false;
      expected_stride *= t.size[d];
    }
    if (!placements_.emplace(name, std::move(p)).second) bad("tensor \"", name, "\" appears twice");
    tensors_.emplace(name, std::move(info));
  }

  std::shared_ptr<const MappedFile> file_;
  std::string origin_;
  bool legacy_ = false;
  pickle::Document document_;
  std::string root_key_;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, Placement> placements_;
  std::map<std::string, std::string> scalars_;
};

}  // namespace dreambooth::io
