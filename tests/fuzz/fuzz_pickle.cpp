// Fuzz target: the restricted unpickler (any bytes; storages answered for any ('storage', ...) persistent id).
#include <cstdint>

#include "dreambooth/io/pickle.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace dreambooth::io::pickle;
  try {
    Unpickler u({reinterpret_cast<const std::byte*>(data), size}, "fuzz", [](Document& doc, const Value& pid) -> Value* {
      if (pid.kind != Kind::Tuple || pid.items.empty()) return nullptr;
      doc.arena.push_back(std::make_unique<Value>());
      doc.arena.back()->kind = Kind::Storage;
      doc.arena.back()->storage = std::make_unique<StorageRef>();
      return doc.arena.back().get();
    });
    const auto doc = u.load();
    (void)doc;
  } catch (const dreambooth::Error&) {
  }
  return 0;
}
