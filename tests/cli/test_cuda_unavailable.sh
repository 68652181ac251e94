#!/usr/bin/env bash
# --device cuda where it cannot run: in a build without the CUDA backend ("this build has no CUDA backend"), or in a
# build with it on a machine without a GPU ("no CUDA device is available"), train, generate and unet stop with exit
# status 1, a message naming CUDA, and no output. Also the CPU's refusals of half precision and of an unknown device.
# Usage: test_cuda_unavailable.sh DREAMBOOTH_BINARY TEST_DATA_DIR CUDA_BUILT(ON|OFF)
# Exits 77 (skipped) when the CUDA backend is built and a GPU is visible: there --device cuda runs (the gpu tests' domain).
set -u
bin=$1
data=$2
cuda_built=$3
if [ "$cuda_built" = ON ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then
  echo "skipped: the CUDA backend is built and a GPU is visible, so --device cuda would run"
  exit 77
fi
if [ "$cuda_built" = ON ]; then expected="no CUDA device is available"; else expected="this build has no CUDA backend"; fi
source "$(dirname "$0")/common.sh"

# refuse NAME EXPECTED OUTPUT ARGS...: exit status 1, EXPECTED in the message, OUTPUT (a path) not created, no temporary file
refuse() {
  local name=$1 expected=$2 output=$3
  shift 3
  "$bin" "$@" 2>"$work/log" >/dev/null
  local status=$?
  if [ "$status" -ne 1 ]; then
    failed "$name: exit status $status, not 1 ($(tail -n 2 "$work/log"))"
  elif [ -e "$output" ] || ls "$work" | grep -q 'tmp-'; then
    failed "$name: output left: $(ls "$work")"
  elif ! grep -q -- "$expected" "$work/log"; then
    failed "$name: message '$(tail -n 1 "$work/log")' lacks '$expected'"
  else
    pass "$name refused: $(tail -n 1 "$work/log")"
  fi
}

"$bin" render-demo-images --output-dir "$work/instance" --count 2 --size 32 2>/dev/null
train=(model.restore_from_path="$data/pipeline/model" model.data.instance_dir="$work/instance" "model.data.instance_prompt=a photo of sks thing"
  model.with_prior_preservation=false model.data.resolution=32 trainer.max_steps=1 trainer.output_dir="$work/out")
generate=(--model "$data/pipeline/model" --prompt "a photo of sks dog" --width 32 --height 32 --steps 2 --output "$work/image.png")
unet=(--model "$data/unet/tiny/diffusers" --inputs "$data/unet/tiny/fixture.safetensors" --output "$work/unet.safetensors")

refuse "train --device cuda" "$expected" "$work/out" train "${train[@]}" --device cuda
refuse "train trainer.device=cuda trainer.precision=bf16" "$expected" "$work/out" train "${train[@]}" trainer.device=cuda trainer.precision=bf16
refuse "train --device cuda with trainer.precision=16-mixed" "$expected" "$work/out" train "${train[@]}" trainer.precision=16-mixed --device cuda
refuse "generate --device cuda" "$expected" "$work/image.png" generate "${generate[@]}" --device cuda
refuse "generate --device cuda --precision bf16" "$expected" "$work/image.png" generate "${generate[@]}" --device cuda --precision bf16
refuse "unet --device cuda" "$expected" "$work/unet.safetensors" unet "${unet[@]}" --device cuda
grep -q CUDA "$work/log" && pass "the message names CUDA" || failed "the message does not name CUDA: $(cat "$work/log")"

# the CPU backend: fp32 or bf16, and only cpu or cuda
refuse "train trainer.precision=tf32 on the CPU" "the CPU backend trains in fp32 or bf16" "$work/out" train "${train[@]}" trainer.precision=tf32
refuse "train --device cpu trainer.precision=16" "trainer.precision \"16\"" "$work/out" train "${train[@]}" trainer.precision=16 --device cpu
refuse "train --device tpu" "trainer.device \"tpu\" is not cpu or cuda" "$work/out" train "${train[@]}" --device tpu
refuse "generate --precision fp16 on the CPU" "computes in fp32 or bf16" "$work/image.png" generate "${generate[@]}" --precision fp16
refuse "generate --device tpu" "is not cpu or cuda" "$work/image.png" generate "${generate[@]}" --device tpu
refuse "generate --precision fp8" "is not one of fp32, tf32, bf16, fp16" "$work/image.png" generate "${generate[@]}" --precision fp8

# and the CPU still runs where it is asked for explicitly
if "$bin" train "${train[@]}" --device cpu 2>"$work/log" && [ -d "$work/out/model" ]; then
  pass "train --device cpu runs"
else
  failed "train --device cpu: $(tail -n 3 "$work/log")"
fi
finish
