#!/usr/bin/env bash
# The SD 1.5 UNet forward + backward (batch 2, 64x64 latents) on the CPU, this project beside PyTorch, in one run on one
# machine: unet_bench in fp32 and bf16, then torch_unet_step.py in fp32 and bf16 autocast; prints the four step times and
# the ratios (PyTorch's seconds / ours: above 1, this project is faster). Never run in CI.
#   benchmarks/peer/cpu_unet_peer.sh BUILD_DIR PYTHON   (PYTHON: a venv with torch and diffusers from PyPI)
set -euo pipefail
build=${1:?usage: cpu_unet_peer.sh BUILD_DIR PYTHON}
python=${2:?usage: cpu_unet_peer.sh BUILD_DIR PYTHON}
here=$(dirname "$0")
step() { grep -o '"step_seconds": [0-9.]*' | awk '{print $2}'; }
lscpu | grep -E "Model name|^CPU\(s\)" >&2
ours_fp32=$("$build/benchmarks/unet_bench" | step)
# bf16 needs AVX512-BF16 or AMX (unet_bench refuses it otherwise): then only the fp32 pair is compared
ours_bf16=$("$build/benchmarks/unet_bench" --precision bf16 | step) || ours_bf16=""
if [ -n "$ours_bf16" ]; then peer=$("$python" "$here/torch_unet_step.py"); else peer=$("$python" "$here/torch_unet_step.py" fp32); fi
torch_fp32=$(echo "$peer" | "$python" -c 'import json,sys; print(json.load(sys.stdin)["fp32"]["step_seconds"])')
torch_bf16=$(echo "$peer" | "$python" -c 'import json,sys; print(json.load(sys.stdin).get("bf16_autocast", {}).get("step_seconds", "null"))')
awk -v a="$ours_fp32" -v b="${ours_bf16:-null}" -v c="$torch_fp32" -v d="$torch_bf16" 'BEGIN {
  printf "{\n \"ours_fp32_s\": %s,\n \"ours_bf16_s\": %s,\n \"torch_fp32_s\": %s,\n \"torch_bf16_autocast_s\": %s,\n", a, b, c, d
  printf " \"fp32_speedup_over_torch\": %.2f,\n", c / a
  if (b == "null") printf " \"bf16_speedup_over_torch\": null\n}\n"; else printf " \"bf16_speedup_over_torch\": %.2f\n}\n", d / b }'
