#!/usr/bin/env bash
# The main job. Until the trainer exists it runs the furthest real part built so far: the CPU backend's op
# benchmark (GEMM, SD-sized 3x3 convolutions, attention), printed as JSON. Arguments go to op_bench.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)" --target op_bench dreambooth_cli
./build/benchmarks/op_bench "${@:---quick}"
