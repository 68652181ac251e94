#!/usr/bin/env bash
# Acceptance 3 of the CUDA issue, on the device machine: the demo configuration trains on the CPU and on the GPU (fp32)
# from the same instance and regularization images, the per-step losses are compared (demo_parity.py), and the GPU
# model samples. Uses the programs unpacked by run.sh (/tmp/gpu). Usage there: bash tools/gpu/demo_parity.sh [steps]
set -euo pipefail
cd "$(dirname "$0")/../.."
steps=${1:-100}
bin=${BIN:-/tmp/gpu/bin/dreambooth}
second=${SECOND_DEVICE:-cuda}  # SECOND_DEVICE=cpu: a dry run of the script without a GPU
out=${OUT:-/tmp/gpu-out}
w=$(mktemp -d)
mkdir -p "$out"
$bin render-demo-images --output-dir "$w/instance" --count 5 --size 64
common=(--config examples/demo.yaml model.data.instance_dir="$w/instance" model.data.regularization_dir="$w/regularization"
  trainer.max_steps="$steps" trainer.log_every_n_steps=1 model.validation.every_n_steps=0)
# The CPU run samples the regularization images; the GPU run finds the folder full and uses the same files.
$bin train --device cpu "${common[@]}" trainer.output_dir="$w/cpu" model.data.cached_instance_dir="$w/cpu-cache/instance" \
  model.data.cached_reg_dir="$w/cpu-cache/reg"
$bin train --device "$second" "${common[@]}" trainer.output_dir="$w/cuda" model.data.cached_instance_dir="$w/cuda-cache/instance" \
  model.data.cached_reg_dir="$w/cuda-cache/reg"
cp "$w/cpu/metrics.jsonl" "$out/demo_cpu_metrics.jsonl"
cp "$w/cuda/metrics.jsonl" "$out/demo_cuda_metrics.jsonl"
python3 tools/gpu/demo_parity.py "$w/cpu/metrics.jsonl" "$w/cuda/metrics.jsonl" 1e-3 | tee "$out/demo_parity.json"
$bin generate --device "$second" --model "$w/cuda/model" --prompt "a photo of sks ball" --width 64 --height 64 --steps 30 --images 2 --seed 7 \
  --output "$out/demo-cuda-sks-ball.png"
