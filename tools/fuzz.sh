#!/usr/bin/env bash
# Coverage-guided fuzzing of the file parsers with libFuzzer (clang): builds the fuzz targets with -fsanitize=fuzzer,
# address,undefined into build-fuzz/ (or $FUZZ_BUILD_DIR) and runs each for SECONDS (default 60) from its seed corpus
# (tests/fuzz/corpus/<target>), growing a working corpus in build-fuzz/corpus/<target>. A crash leaves its input in
# build-fuzz/ and fails the script. Every target's final statistics go to build-fuzz/fuzz-log.txt as well.
#   bash tools/fuzz.sh [SECONDS] [TARGET...]
# The regular test suite replays the seed corpus and deterministic mutants of it under AddressSanitizer (ctest -L fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
build=$(realpath -m "${FUZZ_BUILD_DIR:-build-fuzz}")
root=$PWD
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then  # every fuzz_<name>.cpp in tests/fuzz but the replay driver
  for f in tests/fuzz/fuzz_*.cpp; do t=$(basename "$f" .cpp); [ "$t" = fuzz_driver ] || targets+=("$t"); done
fi
command -v clang++ >/dev/null || { echo "fuzz: clang++ is needed (apt-get install clang)" >&2; exit 1; }
CC=clang CXX=clang++ cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDREAMBOOTH_LIBFUZZER=ON -DDREAMBOOTH_CUDA=OFF \
  -DDREAMBOOTH_BUILD_EXAMPLES=OFF -DDREAMBOOTH_BUILD_BENCHMARKS=OFF -DDREAMBOOTH_NATIVE=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target "${targets[@]}"
for t in "${targets[@]}"; do
  mkdir -p "$build/corpus/$t"
  echo "fuzz: $t for ${seconds}s ($(date -u +%FT%TZ))" | tee -a "$build/fuzz-log.txt"
  (cd "$build" && "./tests/fuzz/$t" -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 \
    "corpus/$t" "$root/tests/fuzz/corpus/$t" 2>&1 | tail -n 12 | tee -a "$build/fuzz-log.txt")
done
echo "fuzz: no crash"
