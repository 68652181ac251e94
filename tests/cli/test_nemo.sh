#!/usr/bin/env bash
# NeMo's files end to end: NeMo's stock dreambooth.yaml (examples/nemo_dreambooth.yaml, paths changed only) trains the tiny
# NeMo model with model.restore_from_path a .nemo, its exports load back, NeMo's resume keys behave as NeMo's, NeMo's cached
# latents (.pt) are read and written, and keys that cannot be honoured are refused.
# Usage: test_nemo.sh DREAMBOOTH_BINARY REPOSITORY_ROOT
set -u
bin=$1
root=$2
cd "$root" || exit 1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
pass() { echo "ok: $1"; }
failed() { echo "FAILED: $1"; failures=$((failures + 1)); }

"$bin" render-demo-images --output-dir "$work/instance" --count 3 --size 32 2>/dev/null
# the stock file, run on the CPU at the tiny model's size: only command-line overrides, as a NeMo user runs Hydra
cpu=(trainer.accelerator=cpu trainer.precision=32 model.data.resolution=32 "model.data.instance_dir=$work/instance"
  "model.data.regularization_dir=$work/reg" infer.height=32 infer.width=32 infer.inference_steps=4 model.data.num_images_per_prompt=2
  model.data.num_reg_images=4 model.with_prior_preservation=true model.use_cached_latents=true
  exp_manager.checkpoint_callback_params.every_n_train_steps=5 trainer.max_steps=12)
run=$work/exp/Dreambooth
if "$bin" train --config examples/nemo_dreambooth.yaml "${cpu[@]}" "exp_manager.exp_dir=$work/exp" "model.export=[diffusers,safetensors,ckpt]" \
  model.save_precision=16 2>"$work/log"; then
  pass "NeMo's stock dreambooth.yaml trains the tiny NeMo model (restore_from_path: a .nemo)"
else
  failed "NeMo's stock dreambooth.yaml: $(tail -n 5 "$work/log")"
fi
grep -q "keys have no effect here" "$work/log" && pass "the keys with no effect are named once" || failed "no note of the keys with no effect"
[ "$(ls "$work/reg" | grep -c png)" -eq 4 ] && pass "4 regularization images sampled by sd.nemo" || failed "regularization images: $(ls "$work/reg")"
[ "$(wc -l <"$run/metrics.jsonl")" -eq 12 ] && pass "12 steps in exp_dir/name/metrics.jsonl" || failed "metrics: $(wc -l <"$run/metrics.jsonl" 2>&1)"
head -n 1 "$run/metrics.jsonl" | grep -q '"lr":5e-07' && pass "WarmupHoldPolicy's first step at half the rate, as NeMo's" ||
  failed "first lr: $(head -n 1 "$run/metrics.jsonl")"
[ -d "$run/checkpoints/step-00000005" ] && [ -d "$run/checkpoints/step-00000010" ] && pass "every_n_train_steps 5, save_top_k -1 keeps all" ||
  failed "checkpoints: $(ls "$run/checkpoints")"
[ -s "$run/checkpoints/Dreambooth.nemo" ] && pass "<name>.nemo written at the end, as NeMo's save_nemo_on_train_end" || failed "no Dreambooth.nemo"
"$bin" inspect "$run/model.safetensors" 2>&1 | grep -q "model.diffusion_model.conv_in\|F16" && "$bin" inspect "$run/model.safetensors" | grep -q " F16 " &&
  pass "model.save_precision 16: the single file is fp16" || failed "single file: $("$bin" inspect "$run/model.safetensors" 2>&1 | head -3)"
"$bin" inspect "$run/model.ckpt" 2>&1 | grep -q "layout original (CompVis)" && pass "model.ckpt in the original layout" || failed "model.ckpt"
if "$bin" generate --model "$run/checkpoints/Dreambooth.nemo" --prompt "a photo of a sks dog" --width 32 --height 32 --steps 3 \
  --output "$work/from-nemo.png" 2>"$work/log" && [ -s "$work/from-nemo.png" ]; then
  pass "the trained .nemo samples"
else
  failed "sampling the trained .nemo: $(tail -n 3 "$work/log")"
fi
if "$bin" convert --model "$run/checkpoints/Dreambooth.nemo" --output "$work/converted" 2>"$work/log"; then
  pass "the .nemo converts to a diffusers folder: $(tail -n 1 "$work/log")"
else
  failed "convert: $(tail -n 3 "$work/log")"
fi

# NeMo's resume keys
if "$bin" train --config examples/nemo_dreambooth.yaml "${cpu[@]}" "exp_manager.exp_dir=$work/exp" exp_manager.resume_if_exists=false 2>"$work/log"; then
  failed "resume_if_exists false over earlier checkpoints: exit status 0"
else
  grep -q "resume_if_exists is false" "$work/log" && pass "resume_if_exists false refuses to overwrite an earlier run" || failed "message: $(tail -n 1 "$work/log")"
fi
"$bin" train --config examples/nemo_dreambooth.yaml "${cpu[@]}" "exp_manager.exp_dir=$work/again" \
  "exp_manager.resume_from_checkpoint=$run/checkpoints/step-00000005" "model.export=[diffusers]" model.save_precision=16 2>"$work/log"
if grep -q "resumed from .*step-00000005 at step 5" "$work/log" &&
  cmp -s "$run/model/unet/diffusion_pytorch_model.safetensors" "$work/again/Dreambooth/model/unet/diffusion_pytorch_model.safetensors"; then
  pass "resume_from_checkpoint continues the run exactly (identical final weights)"
else
  failed "resume_from_checkpoint: $(tail -n 3 "$work/log")"
fi

# NeMo's cached latents: read as NeMo wrote them (reused: as many files as images), and written as NeMo writes them
data=tests/data/checkpoints/nemo
"$bin" train --config examples/nemo_dreambooth.yaml "${cpu[@]}" "exp_manager.exp_dir=$work/cache" model.with_prior_preservation=false \
  "model.data.instance_dir=$data/images" "model.data.cached_instance_dir=$data/images_cached" trainer.max_steps=2 "model.export=[]" \
  exp_manager.checkpoint_callback_params.save_nemo_on_train_end=false 2>"$work/log"
grep -q "instance latent cache (NeMo .pt, .*): 0 encoded, 3 reused" "$work/log" && pass "NeMo's .pt latents reused" ||
  failed "NeMo cache: $(grep -i "cache\|error" "$work/log" | tail -n 2)"
cp -r "$data/images" "$work/images"
"$bin" train --config examples/nemo_dreambooth.yaml "${cpu[@]}" "exp_manager.exp_dir=$work/cache2" model.with_prior_preservation=false \
  "model.data.instance_dir=$work/images" model.data.cache_format=nemo trainer.max_steps=2 "model.export=[]" 2>"$work/log"
"$bin" inspect "$work/images_cached/instance_image_cache_2.pt" 2>&1 | grep -q "\[8, 16, 16\]" &&
  pass "NeMo's cache written as NeMo's cache_latents writes it (<dir>_cached/instance_image_cache_<i>.pt)" ||
  failed "NeMo cache written: $(ls "$work/images_cached" 2>&1) $(tail -n 2 "$work/log")"

# NeMo's EMA (exp_manager.ema): the stock file's decay, no warm-up, an update after every 2nd step; the checkpoint holds
# the average
"$bin" train --config examples/nemo_dreambooth.yaml "${cpu[@]}" "exp_manager.exp_dir=$work/ema" model.with_prior_preservation=false \
  "model.data.instance_dir=$work/images" trainer.max_steps=3 "model.export=[]" exp_manager.ema.enable=true exp_manager.ema.every_n_steps=2 \
  exp_manager.checkpoint_callback_params.save_nemo_on_train_end=false 2>"$work/log"
grep -q "EMA of the trained weights (decay 0.9999, warmup none, every 2 steps); validation samples the average" "$work/log" &&
  [ -e "$work/ema/Dreambooth/checkpoints/step-00000003/ema.safetensors" ] && grep -q '"ema_decay":0.9999' "$work/ema/Dreambooth/metrics.jsonl" &&
  pass "exp_manager.ema.enable: NeMo's EMA kept and checkpointed" || failed "NeMo's EMA: $(grep -E 'EMA|error' "$work/log" | tail -n 2)"

# keys NeMo has that this project cannot honour yet: refused by name, before anything is written
refuse() {  # refuse NAME EXPECTED-MESSAGE OVERRIDES...
  local name=$1 expected=$2
  shift 2
  rm -rf "$work/refused"
  if "$bin" train --config examples/nemo_dreambooth.yaml "${cpu[@]}" "exp_manager.exp_dir=$work/refused" "$@" 2>"$work/log"; then
    failed "$name: exit status 0"
  elif [ -e "$work/refused" ]; then
    failed "$name: output was written"
  elif ! grep -q -- "$expected" "$work/log"; then
    failed "$name: message '$(tail -n 1 "$work/log")' lacks '$expected'"
  else
    pass "$name refused: $(tail -n 1 "$work/log")"
  fi
}
refuse "2 devices in one process" "mpirun -np 2" trainer.devices=2 model.global_batch_size=4
refuse "a missing CLIP .nemo" "model.cond_stage_config.restore_from_path" model.cond_stage_config.restore_from_path=/ckpts/openai.nemo
refuse "the GPU on this build or machine" "CUDA" trainer.accelerator=gpu trainer.precision=bf16-mixed
echo "$((20 - failures)) passed, $failures failed"
[ "$failures" -eq 0 ]
