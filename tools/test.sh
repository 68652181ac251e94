#!/usr/bin/env bash
# The test command: installs what is missing, builds with -Wall -Wextra -Werror, runs every test (the `gpu`
# label only where a GPU is present), then rebuilds the parsing and core tests and the file parsers' fuzz targets
# with AddressSanitizer + UBSan and runs them again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
jobs=$(nproc)

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DDREAMBOOTH_WERROR=ON
cmake --build build -j"$jobs"

# OpenMP threads waiting at a barrier spin ~1000 iterations, not libgomp's 300000, before they sleep: with ctest -j (two
# tests, each with a team per core) or on a busy machine, spinning team members take the cores the working ones need
# (docs/architecture.md, "CPU threads").
export GOMP_SPINCOUNT=${GOMP_SPINCOUNT:-1000}
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "test: a GPU is present; running the gpu-labelled tests too"
  ctest --test-dir build --output-on-failure -j"$jobs"
else
  echo "test: no GPU; skipping the gpu-labelled tests"
  ctest --test-dir build --output-on-failure -j"$jobs" -LE gpu
fi

echo "test: AddressSanitizer + UBSan build"
cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=Debug -DDREAMBOOTH_SANITIZE=ON -DDREAMBOOTH_WERROR=ON -DDREAMBOOTH_CUDA=OFF \
  -DDREAMBOOTH_BUILD_EXAMPLES=OFF -DDREAMBOOTH_BUILD_BENCHMARKS=OFF
fuzz_targets=()  # every fuzz_<name>.cpp in tests/fuzz but the replay driver
for f in tests/fuzz/fuzz_*.cpp; do t=$(basename "$f" .cpp); [ "$t" = fuzz_driver ] || fuzz_targets+=("$t"); done
cmake --build build-sanitize -j"$jobs" --target test_safetensors test_core test_backend_ops "${fuzz_targets[@]}"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
for t in test_safetensors test_core test_backend_ops; do
  echo "test: $t under sanitizers"
  ./build-sanitize/tests/"$t"
done
# the file parsers' fuzz targets: the seed corpus and deterministic mutants of it (tools/fuzz.sh runs libFuzzer)
for t in "${fuzz_targets[@]}"; do
  echo "test: $t under sanitizers"
  ./build-sanitize/tests/fuzz/"$t" -mutants=300 tests/fuzz/corpus/"$t"
done
echo "test: all passed"
