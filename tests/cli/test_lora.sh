#!/usr/bin/env bash
# LoRA DreamBooth end to end on the bundled tiny pipeline: a LoRA run (UNet and text-encoder adapters) writes kohya's
# file and LoRA checkpoints; a run killed mid-way resumes to the same adapters; a resume with other LoRA settings is
# refused; the merged export, generate --lora and convert --lora give the same model. Faults are injected at named
# places (DREAMBOOTH_FAULT): nothing depends on timing. Usage: test_lora.sh DREAMBOOTH_BINARY TEST_DATA_DIR
source "$(dirname "$0")/common.sh"
bin=$1
model=$2/pipeline/model

"$bin" render-demo-images --output-dir "$work/instance" --count 4 --size 64 2>/dev/null
run=(model.restore_from_path="$model" model.data.instance_dir="$work/instance" "model.data.instance_prompt=a photo of sks thing"
  "model.data.regularization_prompt=a photo of a thing" model.optim.lr=1e-2 model.data.regularization_dir="$work/reg"
  model.data.num_reg_images=4 model.data.resolution=64 model.regularization.steps=5 trainer.max_steps=30
  trainer.checkpoint_every_n_steps=10 model.train_text_encoder=true model.peft.peft_scheme=lora model.peft.lora_tuning.adapter_dim=2
  model.peft.lora_tuning.network_alpha=4)

# 1. a LoRA run: the adapters' file and checkpoints that hold only the adapters
if "$bin" train "${run[@]}" trainer.output_dir="$work/straight" 2>"$work/straight.log" && [ -s "$work/straight/lora.safetensors" ] &&
  [ -s "$work/straight/checkpoints/step-00000030/lora.safetensors" ] && [ ! -e "$work/straight/checkpoints/step-00000030/unet.safetensors" ] &&
  [ ! -e "$work/straight/model" ] && grep -q "LoRA (rank 2, alpha 4, .*): 40 adapters, 1280 parameters" "$work/straight.log"; then
  pass "a LoRA run writes lora.safetensors and adapter-only checkpoints: $(grep "LoRA (" "$work/straight.log" | cut -c1-150)"
else
  failed "LoRA run: $(tail -n 3 "$work/straight.log"); $(ls -R "$work/straight" | head -20)"
fi
first=$(grep -o '"loss":[0-9.e-]*' "$work/straight/metrics.jsonl" | head -n 1 | cut -d: -f2)
last=$(grep -o '"loss":[0-9.e-]*' "$work/straight/metrics.jsonl" | tail -n 5 | cut -d: -f2 | awk '{s += $1} END {print s / NR}')
awk -v a="$first" -v b="$last" 'BEGIN {exit !(b < a)}' && pass "the loss falls: step 1 $first, mean of the last 5 $last" ||
  failed "the loss did not fall: $first -> $last"

# 2. killed at step 15 (after the step-10 checkpoint) and resumed: the same adapters, byte for byte
DREAMBOOTH_FAULT=kill:step:15 "$bin" train "${run[@]}" trainer.output_dir="$work/killed" 2>"$work/killed.log"
status=$?
"$bin" train "${run[@]}" trainer.output_dir="$work/killed" 2>"$work/resumed.log"
if [ $status -eq 137 ] && grep -q "resumed from .*step-00000010 at step 10" "$work/resumed.log" &&
  cmp -s "$work/straight/lora.safetensors" "$work/killed/lora.safetensors"; then
  pass "killed at step 15, resumed from step 10: the same lora.safetensors as the uninterrupted run"
else
  failed "LoRA resume: exit $status, $(grep resumed "$work/resumed.log"), $(tail -n 2 "$work/resumed.log")"
fi

# 3. a resume with another rank, or without LoRA, is refused naming model.peft
if "$bin" train "${run[@]}" model.peft.lora_tuning.adapter_dim=4 trainer.output_dir="$work/killed" 2>"$work/log"; then
  failed "a resume with another rank: exit status 0"
else
  grep -q "model.peft (LoRA) = rank 2" "$work/log" && pass "a resume with another rank refused: $(tail -n 1 "$work/log" | cut -c1-150)" ||
    failed "another rank: $(tail -n 1 "$work/log")"
fi
if "$bin" train "${run[@]}" model.peft.peft_scheme=null trainer.output_dir="$work/killed" 2>"$work/log"; then
  failed "a full fine-tune resuming a LoRA checkpoint: exit status 0"
else
  grep -q "model.peft (LoRA)" "$work/log" && pass "a full fine-tune does not resume a LoRA run" || failed "no LoRA: $(tail -n 1 "$work/log")"
fi

# 4. the merged export, generate --lora and convert --lora: one model
"$bin" train "${run[@]}" model.peft.merged_export=true trainer.output_dir="$work/merged" 2>"$work/merged.log" ||
  failed "merged export: $(tail -n 2 "$work/merged.log")"
cmp -s "$work/straight/lora.safetensors" "$work/merged/lora.safetensors" && [ -s "$work/merged/model/unet/config.json" ] &&
  pass "model.peft.merged_export: the same adapters, and the model with them folded in" || failed "merged export: $(ls "$work/merged")"
common=(--prompt "a photo of sks thing" --width 32 --height 32 --steps 3)
mkdir -p "$work/a" "$work/b"
"$bin" generate --model "$work/merged/model" "${common[@]}" --output "$work/a/image.png" 2>"$work/log" || failed "generate merged: $(tail -n 1 "$work/log")"
"$bin" generate --model "$model" --lora "$work/straight/lora.safetensors" "${common[@]}" --output "$work/b/image.png" 2>"$work/log" ||
  failed "generate --lora: $(tail -n 1 "$work/log")"
grep -q "merged LoRA .*lora.safetensors into 40 layers at weight 1" "$work/log" && cmp -s "$work/a/image.png" "$work/b/image.png" &&
  pass "generate --lora equals the merged export, byte for byte" || failed "generate --lora differs from the merged model: $(tail -n 2 "$work/log")"
"$bin" generate --model "$model" "${common[@]}" --output "$work/base.png" 2>/dev/null
"$bin" generate --model "$model" --lora "$work/straight/lora.safetensors:0" "${common[@]}" --output "$work/zero.png" 2>/dev/null
cmp -s "$work/base.png" "$work/zero.png" && ! cmp -s "$work/base.png" "$work/b/image.png" && pass "--lora FILE:0 is the base model; weight 1 changes the image" ||
  failed "--lora weights"
if "$bin" convert --model "$model" --lora "$work/straight/lora.safetensors" --output "$work/converted.safetensors" 2>"$work/log" &&
  grep -q "read back, its .* tensors equal the source's" "$work/log"; then
  pass "convert --lora writes the merged model: $(tail -n 1 "$work/log" | cut -c1-120)"
else
  failed "convert --lora: $(tail -n 2 "$work/log")"
fi
# a LoRA for another model is refused, naming the file
if "$bin" generate --model "$model" --lora "$2/lora/pipeline/fixture.safetensors" "${common[@]}" --output "$work/bad.png" 2>"$work/log"; then
  failed "a file that is not a LoRA: exit status 0"
else
  grep -q "name no layer of this model" "$work/log" && [ ! -e "$work/bad.png" ] && pass "a file that is not a LoRA of this model refused: $(tail -n 1 "$work/log" | cut -c1-140)" ||
    failed "bad LoRA: $(tail -n 1 "$work/log")"
fi

# 5. diffusers' format
"$bin" train "${run[@]}" trainer.max_steps=3 model.peft.export_format=diffusers trainer.output_dir="$work/diffusers" 2>"$work/log" &&
  [ -s "$work/diffusers/pytorch_lora_weights.safetensors" ] && pass "model.peft.export_format=diffusers writes pytorch_lora_weights.safetensors" ||
  failed "diffusers format: $(tail -n 2 "$work/log")"

# 6. kohya's LoCon with adapter dropout: 3x3 convolution adapters in the file; killed and resumed, the same adapters
# (the dropout masks come from the run's seed and the micro-batch, not from a generator state)
locon=("${run[@]}" model.peft.lora_tuning.conv_adapter_dim=3 model.peft.lora_tuning.adapter_dropout=0.2 trainer.max_steps=20)
"$bin" train "${locon[@]}" trainer.output_dir="$work/locon" 2>"$work/locon.log"
DREAMBOOTH_FAULT=kill:step:15 "$bin" train "${locon[@]}" trainer.output_dir="$work/locon-killed" 2>/dev/null
"$bin" train "${locon[@]}" trainer.output_dir="$work/locon-killed" 2>"$work/log"
if grep -q "LoCon rank 3, alpha 3, dropout 0.2): 71 adapters" "$work/locon.log" && grep -q "resumed from .*step-00000010" "$work/log" &&
  cmp -s "$work/locon/lora.safetensors" "$work/locon-killed/lora.safetensors" && ! cmp -s "$work/locon/lora.safetensors" "$work/straight/lora.safetensors"; then
  pass "LoCon with dropout: $(grep "LoRA (" "$work/locon.log" | sed 's/.*LoCon/LoCon/' | cut -c1-80); killed at step 15, resumed to the same file"
else
  failed "LoCon with dropout: $(grep "LoRA (" "$work/locon.log"), $(tail -n 2 "$work/log")"
fi
finish
