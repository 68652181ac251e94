#!/usr/bin/env bash
# The main job. Until the trainer exists it runs the furthest real parts built so far: text-to-image sampling with
# the bundled tiny diffusers-made pipeline (build/demo.png), the UNet's forward and backward on the bundled SD-layout
# model and its fixture inputs, then the CPU backend's op benchmark (GEMM, SD-sized 3x3 convolutions, attention),
# printed as JSON. Arguments go to op_bench.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$(nproc)" --target op_bench dreambooth_cli
./build/examples/dreambooth generate --model tests/data/pipeline/model --prompt "a photo of sks dog" \
  --width 64 --height 64 --steps 25 --scheduler euler_a --seed 1 --output build/demo.png
./build/examples/dreambooth unet --model tests/data/unet/sd15_layout/diffusers \
  --inputs tests/data/unet/sd15_layout/fixture.safetensors --output build/unet_out.safetensors --grad
./build/examples/dreambooth inspect build/unet_out.safetensors | tail -n 1
./build/benchmarks/op_bench "${@:---quick}"
