#!/usr/bin/env bash
# Runs on the device machine (an H200): unpacks .gpu/programs.tar.xz made by pack.sh, points the loader at PyTorch's
# cuDNN / cuBLAS, installs the carried wheels, and runs the CUDA issue's checks in order of importance, within one time
# budget so that a rerun fits in the session's device time:
#   tests  the gpu-labelled tests (every op, the models and the training step against the CPU backend)
#   bench  train_step_bench --device cuda: the SD 1.5 DreamBooth step in bf16 (with --profile: time per op kind),
#          with gradient checkpointing, and LoRA ranks 4 and 32 (rank 4 with gradient checkpointing too: the LoRA issue's
#          memory goal)
#   peer   the same steps in diffusers + PyTorch (benchmarks/peer/torch_train_step.py)
#   demo   the demo trained on the CPU and the GPU, per-step losses compared, the GPU model sampling (demo_parity.sh)
# Each part gets at most its own cap and the time left of BUDGET_S (470 s). Everything lands in /tmp/gpu-results; $OUT
# receives summary.json (the figures side by side, also printed last), run.log and results.tar.gz (every log, JSON and
# image): three files, under the device tool's limit of eight.
# Usage there: bash tools/gpu/run.sh [tests] [bench] [peer] [demo]   (default: all four; the device tool: carry [".gpu"])
# PACK (.gpu), UNPACK (/tmp/gpu), WORK (/tmp/gpu-results) and PEER_SCRIPT replace its folders and the peer benchmark
# (tests/cli/test_gpu_run.sh does, with stand-in programs).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
root=$PWD
out=${OUT:-/tmp/gpu-out}
budget=${BUDGET_S:-470}
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(tests bench peer demo)
pack=${PACK:-.gpu}
unpack=${UNPACK:-/tmp/gpu}
work=${WORK:-/tmp/gpu-results}
rm -rf "$work" && mkdir -p "$work" "$out" "$unpack"
begin=$SECONDS
log() { echo "$*" | tee -a "$work/run.log"; }
wanted() { [[ " ${parts[*]} " == *" $1 "* ]]; }

# timed NAME CAP CMD...: CMD under a limit of CAP seconds or the budget's remainder, whichever is less; its stdout to
# NAME.json when NAME ends in .json (a benchmark's report; stderr to NAME.log), else both to NAME.log.
timed() {
  local name=$1 cap=$2
  shift 2
  local limit=$((budget - (SECONDS - begin)))
  [ "$cap" -lt "$limit" ] && limit=$cap
  if [ "$limit" -lt 10 ]; then
    log "${name%.json}: not run, the ${budget} s budget is spent"
    return 1
  fi
  local started=$SECONDS rc
  if [[ $name == *.json ]]; then
    timeout -k 5 "$limit" "$@" >"$work/$name" 2>"$work/${name%.json}.log"
  else
    timeout -k 5 "$limit" "$@" >"$work/$name.log" 2>&1
  fi
  rc=$?
  log "${name%.json}: exit $rc$([ $rc = 124 ] && echo ' (stopped at its limit)'), $((SECONDS - started)) s of at most $limit"
  return $rc
}

tar -C "$unpack" -xJf "$pack/programs.tar.xz"
# The tests name fixtures by the absolute path of the checkout they were built in.
built_root=${BUILT_ROOT:-/work/main}
if [ "$root" != "$built_root" ] && [ ! -e "$built_root" ]; then mkdir -p "$(dirname "$built_root")" && ln -s "$root" "$built_root"; fi
site=$(python3 -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null || true)
libs=$unpack/lib
for d in "$site"/nvidia/*/lib "$site"/nvidia/cu13/lib /usr/local/cuda/lib64; do [ -d "$d" ] && libs="$libs:$d"; done
export LD_LIBRARY_PATH="$libs:${LD_LIBRARY_PATH:-}"
if ldd "$unpack"/bin/* "$unpack"/lib/*.so* | grep "not found" | sort -u | tee "$work/missing-libraries.txt" | grep -q .; then
  log "run.sh: libraries missing on this machine (missing-libraries.txt); LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv >"$work/device.txt" 2>&1
log "$(tr '\n' ' ' <"$work/device.txt")"
if [ -d "$pack/wheels" ]; then
  wheels=()
  for w in "$pack"/wheels/*.whl; do
    # the machine's own peft where it is recent enough for diffusers' LoRA loading (0.17)
    if [[ $(basename "$w") == peft-* ]] &&
      python3 -c 'import sys, peft; from packaging.version import Version; sys.exit(Version(peft.__version__) < Version("0.17"))' 2>/dev/null; then
      continue
    fi
    wheels+=("$w")
  done
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}" >"$work/pip.log" 2>&1 &&
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  log "wheels installed: $(find /tmp/site -maxdepth 1 -name '*.dist-info' -printf '%f ' 2>/dev/null)"
fi
status=0
bench=$unpack/bin/train_step_bench

if wanted tests; then
  for t in "$unpack"/bin/test_cuda_*; do
    name=$(basename "$t")
    timed "$name" 150 "$t" || status=1
    tail -3 "$work/$name.log" | tee -a "$work/run.log"
    # A fault inside a kernel surfaces at the next synchronisation, under that call's name: once more with every launch
    # synchronous, so that the log names the kernel that faulted.
    if grep -q -i -E "illegal (memory access|address|instruction)|misaligned address|unspecified launch failure|device-side assert" \
      "$work/$name.log"; then
      CUDA_LAUNCH_BLOCKING=1 timed "$name-launch-blocking" 60 "$t"
      grep -i -m 3 "CUDA backend" "$work/$name-launch-blocking.log" | tee -a "$work/run.log"
    fi
  done
fi
if wanted bench; then
  timed ours_bf16.json 60 "$bench" --device cuda --precision bf16 --steps 6 --profile || status=1
  timed ours_bf16_checkpointing.json 45 "$bench" --device cuda --precision bf16 --checkpointing on || status=1
  timed ours_bf16_lora4.json 40 "$bench" --device cuda --precision bf16 --lora 4 || status=1
  timed ours_bf16_lora32.json 40 "$bench" --device cuda --precision bf16 --lora 32 || status=1
  timed ours_bf16_lora4_checkpointing.json 30 "$bench" --device cuda --precision bf16 --lora 4 --checkpointing on || status=1
fi
if wanted peer; then
  peer=(python3 "${PEER_SCRIPT:-benchmarks/peer/torch_train_step.py}" --device cuda --precision bf16)
  timed peer_bf16.json 60 "${peer[@]}" --profile || status=1
  timed peer_bf16_checkpointing.json 45 "${peer[@]}" --checkpointing || status=1
  timed peer_bf16_lora4.json 45 "${peer[@]}" --lora 4 || status=1
fi
if wanted demo; then
  OUT=$work BIN=$unpack/bin/dreambooth timed demo 150 bash tools/gpu/demo_parity.sh "${DEMO_STEPS:-100}" || status=1
  tail -3 "$work/demo.log" | tee -a "$work/run.log"
fi
log "run.sh: $((SECONDS - begin)) s in all, exit $status"
python3 "$root/tools/gpu/summary.py" "$work" >"$out/summary.json" 2>>"$work/run.log"
cp "$work/run.log" "$out/run.log"
tar -C "$work" -czf "$out/results.tar.gz" .
cat "$out/summary.json"
exit $status
