#!/usr/bin/env bash
# Runs on the device machine (an H100): unpacks .gpu/programs.tar.xz made by pack.sh, points the loader at
# PyTorch's cuDNN / cuBLAS, runs the gpu tests and the benchmarks, and leaves logs and JSON in $OUT.
# Usage there: bash tools/gpu/run.sh [tests|bench|demo|all]   (the device tool: carry [".gpu"])
set -uo pipefail
cd "$(dirname "$0")/../.."
what=${1:-all}
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out" /tmp/gpu
tar -C /tmp/gpu -xJf .gpu/programs.tar.xz
# The tests name fixtures by the absolute path of the checkout they were built in.
built_root=${BUILT_ROOT:-/work/main}
if [ "$PWD" != "$built_root" ] && [ ! -e "$built_root" ]; then mkdir -p "$(dirname "$built_root")" && ln -s "$PWD" "$built_root"; fi
site=$(python3 -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null || true)
libs=/tmp/gpu/lib
for d in "$site"/nvidia/*/lib "$site"/nvidia/cu13/lib /usr/local/cuda/lib64; do [ -d "$d" ] && libs="$libs:$d"; done
export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
if ldd /tmp/gpu/bin/* /tmp/gpu/lib/libdreambooth_cuda.so | grep "not found" | sort -u | tee "$out/missing-libraries.txt" | grep -q .; then
  echo "run.sh: libraries missing on this machine (see above); LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.txt"
status=0
if [ "$what" = tests ] || [ "$what" = all ]; then
  for t in /tmp/gpu/bin/test_cuda_*; do
    echo "== $(basename "$t")"
    "$t" 2>&1 | tee "$out/$(basename "$t").log" | tail -5 || status=1
  done
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  [ -x /tmp/gpu/bin/train_step_bench ] && /tmp/gpu/bin/train_step_bench --device cuda --precision bf16 2>&1 | tee "$out/train_step_bf16.json"
  [ -x /tmp/gpu/bin/train_step_bench ] && /tmp/gpu/bin/train_step_bench --device cuda --precision bf16 --checkpointing on 2>&1 | tee "$out/train_step_bf16_ckpt.json"
fi
if [ "$what" = demo ] || [ "$what" = all ]; then
  bash tools/gpu/demo_parity.sh 100 >"$out/demo.log" 2>&1 || status=1
  tail -3 "$out/demo.log"
fi
exit $status
