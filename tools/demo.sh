#!/usr/bin/env bash
# The DreamBooth demo's steps (docs/demo.md), run by tools/run.sh after the build and, shortened, by the cli_demo test:
#   demo.sh DREAMBOOTH_BINARY OUT_DIR [train overrides...]
# Environment: DEVICE (cpu), DEMO_INSTANCES (instance photos, 5), DEMO_SAMPLES (pictures per prompt and model, 6),
# DEMO_COMPARE (1: also train without prior preservation), DEMO_CHECK (1: demo-report --check),
# DEMO_MIN_FIDELITY_GAIN (what --check asks for). Run from the repository root.
set -euo pipefail
export GOMP_SPINCOUNT=${GOMP_SPINCOUNT:-1000}  # short OpenMP spin-waits: see docs/architecture.md, "CPU threads"
bin=$1
demo=$2
shift 2
device=${DEVICE:-cpu}
base=examples/demo-model
samples=${DEMO_SAMPLES:-6}
start=$(date +%s)
rm -rf "$demo"
"$bin" render-demo-images --output-dir "$demo/instance" --count "${DEMO_INSTANCES:-5}" --size 64

# sample NAME MODEL_ARGS...: both prompts, $samples pictures each, the same seed for every model
sample() {
  local name=$1
  shift
  mkdir -p "$demo/samples/$name"
  for prompt in subject:"a photo of sks ball" class:"a photo of a ball"; do
    if ! "$bin" generate --device "$device" "$@" --prompt "${prompt#*:}" --width 64 --height 64 --steps 25 --guidance 4 \
      --images "$samples" --seed 7 --output "$demo/samples/$name/${prompt%%:*}.png" 2>"$demo/generate.log"; then
      tail -n 5 "$demo/generate.log" >&2
      exit 1
    fi
  done
  echo "demo: sampled both prompts with the $name model into $demo/samples/$name ($(($(date +%s) - start)) s)"
}
# the model a run produced: the fine-tuned folder, or in LoRA mode the base model with the run's adapters
tuned() {
  if [ -e "$demo/$1/lora.safetensors" ]; then echo --model "$base" --lora "$demo/$1/lora.safetensors"; else echo --model "$demo/$1/model"; fi
}
train() {
  local name=$1
  shift
  "$bin" train --device "$device" --config examples/demo.yaml model.data.instance_dir="$demo/instance" \
    model.data.regularization_dir="$demo/regularization" trainer.output_dir="$demo/$name" "$@"
  echo "demo: trained $demo/$name ($(($(date +%s) - start)) s)"
}

sample base --model "$base"
train prior "$@"
# shellcheck disable=SC2046  # tuned prints options
sample prior $(tuned prior)
if [ "${DEMO_COMPARE:-1}" = 1 ]; then
  train no-prior model.with_prior_preservation=false "$@"
  # shellcheck disable=SC2046
  sample no-prior $(tuned no-prior)
fi
check=()
[ "${DEMO_CHECK:-0}" = 1 ] && check=(--check --min-fidelity-gain "${DEMO_MIN_FIDELITY_GAIN:-0.1}")
"$bin" demo-report --demo-dir "$demo" --scale 2 "${check[@]}"
echo "demo: done in $(($(date +%s) - start)) s: instance photos in $demo/instance, class images in $demo/regularization, the runs"
echo "demo: (checkpoints, metrics.jsonl, the fine-tuned model) in $demo/prior and $demo/no-prior, samples in $demo/samples"
