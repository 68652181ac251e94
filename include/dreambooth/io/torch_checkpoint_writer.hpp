// TorchCheckpointWriter: writes tensors as torch.save writes a state dict, in its zip format, so torch.load (with
// weights_only=True too), A1111, ComfyUI, stable-diffusion.cpp and NeMo read the file:
//   archive/data.pkl    a protocol-2 pickle of an OrderedDict name -> torch._utils._rebuild_tensor_v2(storage, 0, size,
//                       stride, False, OrderedDict()), each storage a persistent id ('storage', torch.<Type>Storage, key,
//                       'cpu', numel); optionally wrapped as {"state_dict": ...} (the original Stable Diffusion .ckpt);
//   archive/data/<k>    each tensor's bytes (little-endian), one storage per tensor, aligned to 64 bytes;
//   archive/version     "3".
// Nothing else: A1111's safe unpickler refuses any other member (torch's own byteorder and .data/serialization_id
// records included), and torch reads files without them.
// The pickle names only the globals the restricted reader allows (pickle.hpp), so our own files read back through it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "dreambooth/io/atomic_file.hpp"
#include "dreambooth/io/tensor_writer.hpp"
#include "dreambooth/io/zip.hpp"

namespace dreambooth::io {

// The torch storage class of a stored dtype ("FloatStorage").
inline std::string_view torch_storage_class(StDType d) {
  switch (d) {
    case StDType::F32: return "FloatStorage";
    case StDType::F16: return "HalfStorage";
    case StDType::BF16: return "BFloat16Storage";
    case StDType::F64: return "DoubleStorage";
    case StDType::I64: return "LongStorage";
    case StDType::I32: return "IntStorage";
    case StDType::I16: return "ShortStorage";
    case StDType::I8: return "CharStorage";
    case StDType::U8: return "ByteStorage";
    case StDType::BOOL: return "BoolStorage";
    case StDType::F8_E4M3: return "Float8_e4m3fnStorage";
    case StDType::F8_E5M2: return "Float8_e5m2Storage";
    default: fail("torch checkpoint writer: dtype ", st_dtype_name(d), " has no torch storage type");
  }
}

class TorchCheckpointWriter final : public TensorWriter {
 public:
  using TensorWriter::add;

  // `wrap_key`: when not empty, the state dict is stored as {wrap_key: state_dict} ("state_dict" for a Lightning-style
  // .ckpt). `force_zip64` writes ZIP64 records even when small (tests).
  explicit TorchCheckpointWriter(std::string wrap_key = "", bool force_zip64 = false) : wrap_key_(std::move(wrap_key)), force_zip64_(force_zip64) {}
  // A file holding one tensor alone, as torch.save(tensor) writes it (NeMo's cached latents); add exactly one tensor.
  static TorchCheckpointWriter bare_tensor() {
    TorchCheckpointWriter w;
    w.bare_ = true;
    return w;
  }

  // The pickle alone (data.pkl), for tests and fuzzing seeds.
  std::string pickle() const {
    if (bare_ && entries_.size() != 1) fail("torch checkpoint writer: a bare-tensor file holds exactly one tensor, not ", entries_.size());
    std::string p = "\x80\x02";
    if (bare_) {
      tensor(p, 0);
      return p + '.';
    }
    if (!wrap_key_.empty()) {
      p += '}';
      unicode(p, wrap_key_);
    }
    ordered_dict(p);
    p += '(';
    for (std::size_t k = 0; k < entries_.size(); ++k) {
      unicode(p, entries_[k].name);
      tensor(p, k);
    }
    p += 'u';
    if (!wrap_key_.empty()) p += 's';
    p += '.';
    return p;
  }

 private:
  // torch._utils._rebuild_tensor_v2(storage k, 0, size, stride, False, OrderedDict())
  void tensor(std::string& p, std::size_t k) const {
    const auto& e = entries_[k];
    p += "ctorch._utils\n_rebuild_tensor_v2\n(";
    // the storage's persistent id
    p += '(';
    unicode(p, "storage");
    p += "ctorch\n" + std::string(torch_storage_class(e.dtype)) + "\n";
    unicode(p, std::to_string(k));
    unicode(p, "cpu");
    integer(p, e.shape.numel());
    p += "tQ";
    integer(p, 0);  // storage offset
    std::vector<std::int64_t> stride(static_cast<std::size_t>(e.shape.rank()));
    std::int64_t s = 1;
    for (int d = e.shape.rank(); d-- > 0;) {
      stride[static_cast<std::size_t>(d)] = s;
      s *= e.shape[d];
    }
    tuple(p, {e.shape.begin(), e.shape.end()});
    tuple(p, stride);
    p += '\x89';  // requires_grad False
    ordered_dict(p);
    p += "tR";
  }

 public:
  void write(const std::filesystem::path& path) const override {
    AtomicFileWriter out(path, "torch checkpoint writer");
    ZipWriter zip(out, force_zip64_);
    const auto pkl = pickle();
    zip.add("archive/data.pkl", {reinterpret_cast<const std::byte*>(pkl.data()), pkl.size()});
    for (std::size_t k = 0; k < entries_.size(); ++k) {
      const auto& e = entries_[k];
      zip.add("archive/data/" + std::to_string(k),
              std::span<const std::byte>(buffer_).subspan(static_cast<std::size_t>(e.offset), static_cast<std::size_t>(e.bytes())));
    }
    zip.add("archive/version", {reinterpret_cast<const std::byte*>("3\n"), 2});
    zip.finish();
    out.commit();
  }

 private:
  static void ordered_dict(std::string& p) { p += "ccollections\nOrderedDict\n)R"; }
  static void unicode(std::string& p, std::string_view s) {
    p += 'X';
    for (int i = 0; i < 4; ++i) p += static_cast<char>(static_cast<std::uint32_t>(s.size()) >> (8 * i));
    p += s;
  }
  static void integer(std::string& p, std::int64_t v) {
    if (v >= 0 && v < 256) {
      p += 'K';
      p += static_cast<char>(v);
    } else if (v >= 0 && v < 65536) {
      p += 'M';
      p += static_cast<char>(v & 0xFF);
      p += static_cast<char>(v >> 8);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      p += 'J';
      for (int i = 0; i < 4; ++i) p += static_cast<char>(static_cast<std::uint32_t>(v) >> (8 * i));
    } else {
      p += "\x8a\x08";
      for (int i = 0; i < 8; ++i) p += static_cast<char>(static_cast<std::uint64_t>(v) >> (8 * i));
    }
  }
  static void tuple(std::string& p, const std::vector<std::int64_t>& values) {
    if (values.empty()) {
      p += ')';
      return;
    }
    p += '(';
    for (auto v : values) integer(p, v);
    p += 't';
  }

  std::string wrap_key_;
  bool force_zip64_;
  bool bare_ = false;
};

}  // namespace dreambooth::io
