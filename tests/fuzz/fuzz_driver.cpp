// A libFuzzer-compatible driver for compilers without libFuzzer (the regular build): runs LLVMFuzzerTestOneInput on every
// file of the corpus folders or files given, then on deterministic mutants of each (bit flips, byte changes, truncations,
// insertions, splices), from a fixed seed so that a run is repeatable. Usage: fuzz_<target> [-mutants=N] CORPUS...
// A crash or sanitizer report is the failure; inputs a parser refuses with an error are expected.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {
std::uint64_t state = 0x9E3779B97F4A7C15ull;
std::uint64_t next() {  // splitmix64
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::vector<std::uint8_t> mutate(std::vector<std::uint8_t> in, const std::vector<std::vector<std::uint8_t>>& corpus) {
  const auto edits = 1 + next() % 4;
  for (std::uint64_t e = 0; e < edits; ++e) {
    const auto kind = next() % 6;
    if (in.empty() && kind != 4) continue;
    const auto at = in.empty() ? 0 : next() % in.size();
    switch (kind) {
      case 0: in[at] ^= static_cast<std::uint8_t>(1u << (next() % 8)); break;
      case 1: in[at] = static_cast<std::uint8_t>(next()); break;
      case 2: in.resize(at); break;
      case 3:
        in.erase(in.begin() + static_cast<std::ptrdiff_t>(at),
                 in.begin() + static_cast<std::ptrdiff_t>(std::min<std::size_t>(in.size(), at + 1 + next() % 16)));
        break;
      case 4:
        in.insert(in.begin() + static_cast<std::ptrdiff_t>(at), static_cast<std::size_t>(1 + next() % 8), static_cast<std::uint8_t>(next()));
        break;
      case 5: {  // splice in a piece of another input
        const auto& other = corpus[next() % corpus.size()];
        if (other.empty()) break;
        const auto from = next() % other.size(), n = 1 + next() % std::min<std::size_t>(64, other.size() - from);
        in.insert(in.begin() + static_cast<std::ptrdiff_t>(at), other.begin() + static_cast<std::ptrdiff_t>(from),
                  other.begin() + static_cast<std::ptrdiff_t>(from + n));
        break;
      }
    }
  }
  return in;
}
}  // namespace

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  std::size_t mutants = 200;
  std::vector<std::vector<std::uint8_t>> corpus;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("-mutants=", 0) == 0) {
      mutants = std::stoul(a.substr(9));
      continue;
    }
    std::vector<fs::path> files;
    if (fs::is_directory(a)) {
      for (const auto& e : fs::directory_iterator(a))
        if (e.is_regular_file()) files.push_back(e.path());
    } else {
      files.push_back(a);
    }
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      std::ifstream in(f, std::ios::binary);
      corpus.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
  }
  if (corpus.empty()) {
    std::fprintf(stderr, "usage: %s [-mutants=N] CORPUS...\n", argv[0]);
    return 2;
  }
  std::size_t runs = 0;
  for (const auto& input : corpus) {
    LLVMFuzzerTestOneInput(input.data(), input.size());
    ++runs;
    for (std::size_t m = 0; m < mutants; ++m) {
      const auto mutant = mutate(input, corpus);
      LLVMFuzzerTestOneInput(mutant.data(), mutant.size());
      ++runs;
    }
  }
  std::printf("%zu inputs (%zu seeds, %zu mutants each): no crash\n", runs, corpus.size(), mutants);
  return 0;
}
