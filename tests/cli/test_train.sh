#!/usr/bin/env bash
# The train command end to end on the bundled tiny pipeline: regularization images (and a run killed while making them),
# exact resume after SIGKILL, interrupted checkpoints, and refused inputs. Usage: test_train.sh DREAMBOOTH_BINARY TEST_DATA_DIR
set -u
bin=$1
model=$2/pipeline/model
work=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
failures=0 passes=0
pass() { echo "ok: $1"; passes=$((passes + 1)); }
failed() { echo "FAILED: $1"; failures=$((failures + 1)); }
wait_for() {  # wait_for PATH SECONDS: until PATH exists
  local end=$((SECONDS + $2))
  while [ ! -e "$1" ] && [ $SECONDS -lt $end ]; do sleep 0.02; done
  [ -e "$1" ]
}

"$bin" render-demo-images --output-dir "$work/instance" --count 4 --size 64 2>/dev/null
base=(model.restore_from_path="$model" model.data.instance_dir="$work/instance" "model.data.instance_prompt=a photo of sks thing"
  "model.data.regularization_prompt=a photo of a thing" model.optim.lr=1e-3 model.data.num_workers=2)

# 1. Regularization images: killed while sampling, then completed by a rerun; no partial image.
reg=(model.data.regularization_dir="$work/reg" model.data.num_reg_images=24 model.data.num_images_per_prompt=1 model.data.resolution=64
  model.regularization.steps=50 trainer.max_steps=1 trainer.output_dir="$work/out-reg")
"$bin" train "${base[@]}" "${reg[@]}" 2>"$work/reg.log" &
pid=$!
if wait_for "$work/reg/reg-00002.png" 60; then kill -9 $pid; fi
wait $pid 2>/dev/null
made=$(ls "$work/reg" | grep -c '\.png$')
if [ "$made" -lt 24 ] && [ "$made" -ge 3 ]; then pass "killed during sampling with $made of 24 images"; else failed "kill during sampling: $made images"; fi
partial=0
for f in "$work"/reg/*.png; do tail -c 12 "$f" | grep -q IEND || partial=$((partial + 1)); done
[ "$partial" -eq 0 ] && pass "no partial image after SIGKILL" || failed "$partial partial images after SIGKILL"
"$bin" train "${base[@]}" "${reg[@]}" 2>"$work/reg2.log"
made=$(ls "$work/reg" | grep -c '\.png$')
[ "$made" -eq 24 ] && [ "$(ls "$work/reg" | grep -vc '\.png$')" -eq 0 ] && pass "a rerun completes: exactly 24 images" || failed "rerun left $made images: $(ls "$work/reg")"

# 2. Resume: a run killed after its step-40 checkpoint and resumed gives the uninterrupted run's losses.
train=(model.data.regularization_dir="$work/reg" model.data.num_reg_images=24 model.data.resolution=64 trainer.max_steps=120
  trainer.checkpoint_every_n_steps=20 trainer.keep_last_checkpoints=2 model.use_cached_latents=true)
"$bin" train "${base[@]}" "${train[@]}" trainer.output_dir="$work/straight" 2>"$work/straight.log" || failed "uninterrupted run: $(tail -n 3 "$work/straight.log")"
"$bin" train "${base[@]}" "${train[@]}" trainer.output_dir="$work/killed" 2>"$work/killed.log" &
pid=$!
if wait_for "$work/killed/checkpoints/step-00000040" 120; then kill -9 $pid; fi
wait $pid 2>/dev/null
[ -e "$work/killed/model" ] && failed "the killed run finished before it could be killed" || pass "training killed after a checkpoint"
mkdir -p "$work/killed/checkpoints/step-00000099.tmp-1" && echo broken >"$work/killed/checkpoints/step-00000099.tmp-1/unet.safetensors"
"$bin" train "${base[@]}" "${train[@]}" trainer.output_dir="$work/killed" 2>"$work/resumed.log" || failed "resumed run: $(tail -n 3 "$work/resumed.log")"
grep -q "resumed from .*step-000000[4-9]0 at step" "$work/resumed.log" && pass "resumed from the last complete checkpoint, the interrupted one ignored" ||
  failed "resume: $(grep resumed "$work/resumed.log")"
last_losses() { grep -o '"loss":[^,]*,"lr":[^,]*,"prior_loss":[^,]*,"step":[0-9]*' "$1" | awk -F'[:,]' '{loss[$NF]=$2} END {for (s in loss) print s, loss[s]}' | sort -n; }
if diff <(last_losses "$work/straight/metrics.jsonl") <(last_losses "$work/killed/metrics.jsonl") >"$work/diff"; then
  pass "the resumed run's losses equal the uninterrupted run's at all 120 steps"
else
  failed "losses differ after resume: $(head -n 4 "$work/diff")"
fi
# progress in a log file: one whole line per update, no carriage returns
if ! grep -q $'\r' "$work/straight.log" && grep -q "^train: step 120/120  loss" "$work/straight.log"; then
  pass "progress off a terminal: one line per step, no carriage returns"
else
  failed "progress in the log: $(grep -c $'\r' "$work/straight.log") carriage returns"
fi
cmp -s "$work/straight/model/unet/diffusion_pytorch_model.safetensors" "$work/killed/model/unet/diffusion_pytorch_model.safetensors" &&
  pass "identical final weights" || failed "final weights differ"
[ "$(ls "$work/killed/checkpoints" | wc -l)" -eq 2 ] && pass "the last 2 checkpoints kept" || failed "checkpoints kept: $(ls "$work/killed/checkpoints")"

# 3. Bad input: a clear error, a non-zero exit, no output.
refuse() {  # refuse NAME EXPECTED ARGS...
  local name=$1 expected=$2
  shift 2
  rm -rf "$work/refused"
  if "$bin" train "$@" trainer.output_dir="$work/refused" 2>"$work/log"; then
    failed "$name: exit status 0"
  elif [ -e "$work/refused" ]; then
    failed "$name: output left in $(ls -R "$work/refused" | head -3)"
  elif ! grep -q -- "$expected" "$work/log"; then
    failed "$name: message '$(tail -n 1 "$work/log")' lacks '$expected'"
  else
    pass "$name refused: $(tail -n 1 "$work/log")"
  fi
}
mkdir -p "$work/empty" "$work/corrupt"
cp "$work"/instance/*.png "$work/corrupt/" && printf 'not really a png' >"$work/corrupt/subject-01.png"
ok=("${base[@]}" model.data.regularization_dir="$work/reg" model.data.num_reg_images=24 model.data.resolution=64 trainer.max_steps=1)
refuse "negative loading workers" "model.data.num_workers -1" "${ok[@]}" model.data.num_workers=-1
# A learning rate that makes the loss NaN: the run stops naming the step, before updating the weights with it; no model
rm -rf "$work/nan"
if "$bin" train "${ok[@]}" model.optim.lr=1e10 trainer.max_steps=20 trainer.checkpoint_every_n_steps=1 trainer.output_dir="$work/nan" 2>"$work/log"; then
  failed "a NaN loss: exit status 0"
elif [ -e "$work/nan/model" ] || ! grep -q "error: step [0-9]*: the loss is nan" "$work/log"; then
  failed "a NaN loss: $(tail -n 1 "$work/log"); output $(ls "$work/nan")"
else
  pass "a NaN loss stops the run: $(tail -n 1 "$work/log" | cut -c1-120)"
fi
refuse "an empty instance directory" "holds no JPEG or PNG" "${ok[@]}" model.data.instance_dir="$work/empty"
refuse "a missing instance directory" "is not a directory" "${ok[@]}" model.data.instance_dir="$work/nowhere"
refuse "a corrupt image" "subject-01.png" "${ok[@]}" model.data.instance_dir="$work/corrupt"
refuse "an unknown config key" "did you mean \"model.prior_loss_weight\"" "${ok[@]}" model.prior_los_weight=1
refuse "a value of the wrong type" "needs an integer" "${ok[@]}" trainer.max_steps=many
refuse "a missing model" "does not exist" "${ok[@]}" model.restore_from_path="$work/nowhere.safetensors"
refuse "a resolution not divisible by 8" "multiple of 8" "${ok[@]}" model.data.resolution=60
echo "$passes passed, $failures failed"
[ "$failures" -eq 0 ]
