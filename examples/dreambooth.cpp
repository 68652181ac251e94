// The dreambooth command. Subcommands grow with the project (train, generate, cache-latents, convert, ...).
//   dreambooth inspect FILE.safetensors   list the tensors (name, dtype, shape, bytes) and metadata of a file
#include <cstdio>
#include <cstring>
#include <string>

#include "dreambooth/io/safetensors.hpp"

namespace {

int usage(std::FILE* out) {
  std::fputs(
      "usage: dreambooth <command> [arguments]\n"
      "commands:\n"
      "  inspect FILE.safetensors   list the tensors and metadata of a safetensors file\n",
      out);
  return out == stdout ? 0 : 2;
}

int inspect(const std::string& path) {
  const dreambooth::io::SafetensorsFile file(path);
  std::uint64_t total = 0;
  for (const auto& [key, value] : file.metadata()) std::printf("metadata %s = %s\n", key.c_str(), value.c_str());
  for (const auto& [name, info] : file.tensors()) {
    std::printf("%-60s %-5s %-22s %12llu bytes\n", name.c_str(), std::string(dreambooth::io::st_dtype_name(info.dtype)).c_str(),
                info.shape.str().c_str(), static_cast<unsigned long long>(info.bytes()));
    total += info.bytes();
  }
  std::printf("%zu tensors, %llu bytes of data\n", file.tensors().size(), static_cast<unsigned long long>(total));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage(stderr);
  const std::string command = argv[1];
  try {
    if (command == "-h" || command == "--help" || command == "help") return usage(stdout);
    if (command == "inspect") {
      if (argc != 3) {
        std::fputs("dreambooth inspect: expected one argument, FILE.safetensors\n", stderr);
        return 2;
      }
      return inspect(argv[2]);
    }
    std::fprintf(stderr, "dreambooth: unknown command '%s'\n", command.c_str());
    return usage(stderr);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dreambooth %s: error: %s\n", command.c_str(), e.what());
    return 1;
  }
}
