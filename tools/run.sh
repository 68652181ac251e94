#!/usr/bin/env bash
# The main job. Until the trainer exists it runs the furthest real parts built so far: the UNet (forward and
# backward) on the bundled diffusers-made SD-layout model and its fixture inputs, then the CPU backend's op
# benchmark (GEMM, SD-sized 3x3 convolutions, attention), printed as JSON. Arguments go to op_bench.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)" --target op_bench unet_bench dreambooth_cli
./build/examples/dreambooth unet --model tests/data/unet/sd15_layout/diffusers \
  --inputs tests/data/unet/sd15_layout/fixture.safetensors --output build/unet_out.safetensors --grad
./build/examples/dreambooth inspect build/unet_out.safetensors | tail -n 1
./build/benchmarks/op_bench "${@:---quick}"
