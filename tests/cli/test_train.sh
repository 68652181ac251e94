#!/usr/bin/env bash
# The train command end to end on the bundled tiny pipeline: regularization images (and a run killed while making them),
# exact resume after SIGKILL, faults inside checkpoints, damaged checkpoints, resume rules, and refused inputs. Every
# fault is injected at a named place (DREAMBOOTH_FAULT, include/dreambooth/core/fault.hpp): nothing depends on timing. Usage: test_train.sh DREAMBOOTH_BINARY TEST_DATA_DIR
source "$(dirname "$0")/common.sh"
bin=$1
model=$2/pipeline/model

"$bin" render-demo-images --output-dir "$work/instance" --count 4 --size 64 2>/dev/null
base=(model.restore_from_path="$model" model.data.instance_dir="$work/instance" "model.data.instance_prompt=a photo of sks thing"
  "model.data.regularization_prompt=a photo of a thing" model.optim.lr=1e-3 model.data.num_workers=2)

# 1. Regularization images: killed after the third image (fault injection, core/fault.hpp), then completed by a rerun;
#    no partial image.
reg=(model.data.regularization_dir="$work/reg" model.data.num_reg_images=24 model.data.num_images_per_prompt=1 model.data.resolution=64
  model.regularization.steps=50 trainer.max_steps=1 trainer.output_dir="$work/out-reg")
DREAMBOOTH_FAULT=kill:regularization-image:3 "$bin" train "${base[@]}" "${reg[@]}" 2>"$work/reg.log"
status=$?
made=$(ls "$work/reg" | grep -c '\.png$')
[ $status -eq 137 ] && [ "$made" -eq 3 ] && pass "killed after the third of 24 images: 3 images" || failed "kill during sampling: exit $status, $made images"
"$bin" train "${base[@]}" "${reg[@]}" 2>"$work/reg2.log"
made=$(ls "$work/reg" | grep -c '\.png$')
partial=0
for f in "$work"/reg/*.png; do tail -c 12 "$f" | grep -q IEND || partial=$((partial + 1)); done
[ "$made" -eq 24 ] && [ "$partial" -eq 0 ] && [ "$(ls "$work/reg" | grep -vc '\.png$')" -eq 0 ] && pass "a rerun completes: exactly 24 whole images" ||
  failed "rerun left $made images ($partial partial): $(ls "$work/reg")"

# 2. Resume: a run killed at step 50 (after its step-40 checkpoint) and resumed gives the uninterrupted run's losses,
#    each step once in metrics.jsonl, and the same weights.
train=(model.data.regularization_dir="$work/reg" model.data.num_reg_images=24 model.data.resolution=64 trainer.max_steps=120
  trainer.checkpoint_every_n_steps=20 trainer.keep_last_checkpoints=2 model.use_cached_latents=true)
"$bin" train "${base[@]}" "${train[@]}" trainer.output_dir="$work/straight" 2>"$work/straight.log" || failed "uninterrupted run: $(tail -n 3 "$work/straight.log")"
DREAMBOOTH_FAULT=kill:step:50 "$bin" train "${base[@]}" "${train[@]}" trainer.output_dir="$work/killed" 2>"$work/killed.log"
[ $? -eq 137 ] && [ ! -e "$work/killed/model" ] && [ -e "$work/killed/checkpoints/step-00000040" ] && pass "training killed at step 50" ||
  failed "the run was not killed at step 50: $(ls "$work/killed" "$work/killed/checkpoints")"
mkdir -p "$work/killed/checkpoints/step-00000099.tmp-1" && echo broken >"$work/killed/checkpoints/step-00000099.tmp-1/unet.safetensors"
"$bin" train "${base[@]}" "${train[@]}" trainer.output_dir="$work/killed" 2>"$work/resumed.log" || failed "resumed run: $(tail -n 3 "$work/resumed.log")"
grep -q "resumed from .*step-00000040 at step 40" "$work/resumed.log" && pass "resumed from the last complete checkpoint, the interrupted one ignored" ||
  failed "resume: $(grep resumed "$work/resumed.log")"
steps() { grep -o '"step":[0-9]*' "$1" | cut -d: -f2; }
last_losses() { grep -o '"loss":[^,]*,"lr":[^,]*,"prior_loss":[^,]*,"step":[0-9]*' "$1" | awk -F'[:,]' '{loss[$NF]=$2} END {for (s in loss) print s, loss[s]}' | sort -n; }
if diff <(last_losses "$work/straight/metrics.jsonl") <(last_losses "$work/killed/metrics.jsonl") >"$work/diff"; then
  pass "the resumed run's losses equal the uninterrupted run's at all 120 steps"
else
  failed "losses differ after resume: $(head -n 4 "$work/diff")"
fi
[ "$(steps "$work/killed/metrics.jsonl" | tr '\n' ' ')" = "$(seq 1 120 | tr '\n' ' ')" ] && pass "metrics.jsonl holds steps 1..120 once each after the resume" ||
  failed "metrics.jsonl steps after resume: $(steps "$work/killed/metrics.jsonl" | sort -n | uniq -d | head -3 | tr '\n' ' ') repeated, $(steps "$work/killed/metrics.jsonl" | wc -l) lines"
# progress in a log file: one whole line per update, no carriage returns
if ! grep -q $'\r' "$work/straight.log" && grep -q "^train: step 120/120  loss" "$work/straight.log"; then
  pass "progress off a terminal: one line per step, no carriage returns"
else
  failed "progress in the log: $(grep -c $'\r' "$work/straight.log") carriage returns"
fi
cmp -s "$work/straight/model/unet/diffusion_pytorch_model.safetensors" "$work/killed/model/unet/diffusion_pytorch_model.safetensors" &&
  pass "identical final weights" || failed "final weights differ"
[ "$(ls "$work/killed/checkpoints")" = "$(printf 'step-00000100\nstep-00000120')" ] && pass "the last 2 checkpoints kept, the final one among them" ||
  failed "checkpoints kept: $(ls "$work/killed/checkpoints")"
# a finished run run again trains nothing and changes nothing
cp "$work/killed/metrics.jsonl" "$work/metrics-before"
"$bin" train "${base[@]}" "${train[@]}" trainer.output_dir="$work/killed" 2>"$work/again.log" || failed "rerun of a finished run: $(tail -n 3 "$work/again.log")"
grep -q "nothing to train" "$work/again.log" && ! grep -q "^train: .*step [0-9]*/" "$work/again.log" && cmp -s "$work/metrics-before" "$work/killed/metrics.jsonl" &&
  cmp -s "$work/straight/model/unet/diffusion_pytorch_model.safetensors" "$work/killed/model/unet/diffusion_pytorch_model.safetensors" &&
  pass "a finished run rerun trains nothing: $(grep -o 'the run had finished[^:]*' "$work/again.log")" || failed "rerun of a finished run: $(grep -c '^train: .*step [0-9]*/' "$work/again.log") steps trained"

# min-SNR weighting and noise offset reach the step: each changes the first step's loss from the plain run's
first_loss() { grep -o '"loss":[^,]*' "$1" | head -n 1 | cut -d: -f2; }
for extra in model.snr_gamma=0.5 model.noise_offset=0.1; do
  "$bin" train "${base[@]}" "${train[@]}" trainer.max_steps=1 "+$extra" trainer.output_dir="$work/objective" 2>"$work/log" || failed "$extra: $(tail -n 2 "$work/log")"
  plain=$(first_loss "$work/straight/metrics.jsonl") changed=$(first_loss "$work/objective/metrics.jsonl")
  [ -n "$changed" ] && [ "$plain" != "$changed" ] && pass "$extra changes the first step's loss: $plain -> $changed" || failed "$extra: loss $plain -> $changed"
  rm -rf "$work/objective"
done

# EMA (model.ema): the checkpoints hold the average; a run killed and resumed exports the uninterrupted run's average;
# the export holds the average unless model.ema.export_original_weights, whose weights are the plain run's (the average
# does not change the training); a resume with other EMA settings is refused
ema=("${train[@]}" trainer.max_steps=8 trainer.checkpoint_every_n_steps=3 +model.ema.enable=true +model.ema.decay=0.9 +model.ema.warmup=none)
unet_file=model/unet/diffusion_pytorch_model.safetensors
"$bin" train "${base[@]}" "${ema[@]}" trainer.output_dir="$work/ema" 2>"$work/ema.log" || failed "EMA run: $(tail -n 2 "$work/ema.log")"
DREAMBOOTH_FAULT=kill:step:5 "$bin" train "${base[@]}" "${ema[@]}" trainer.output_dir="$work/ema-killed" 2>/dev/null
"$bin" train "${base[@]}" "${ema[@]}" trainer.output_dir="$work/ema-killed" 2>"$work/ema-resumed.log"
[ -e "$work/ema/checkpoints/step-00000006/ema.safetensors" ] && grep -q '"ema_decay":0.9' "$work/ema/metrics.jsonl" &&
  grep -q "resumed from .*step-00000003 at step 3" "$work/ema-resumed.log" && cmp -s "$work/ema/$unet_file" "$work/ema-killed/$unet_file" &&
  pass "EMA: checkpoints hold the average; killed at step 5 and resumed from step 3, the same exported average" ||
  failed "EMA resume: $(tail -n 2 "$work/ema-resumed.log")"
"$bin" train "${base[@]}" "${ema[@]}" +model.ema.export_original_weights=true trainer.output_dir="$work/ema-original" 2>"$work/log" &&
  "$bin" train "${base[@]}" "${train[@]}" trainer.max_steps=8 trainer.checkpoint_every_n_steps=3 trainer.output_dir="$work/no-ema" 2>>"$work/log" &&
  cmp -s "$work/ema-original/$unet_file" "$work/no-ema/$unet_file" && ! cmp -s "$work/ema/$unet_file" "$work/no-ema/$unet_file" &&
  pass "EMA: the export holds the average, or with export_original_weights the trained weights, equal to a run without EMA" ||
  failed "EMA exports: $(tail -n 2 "$work/log")"
"$bin" train "${base[@]}" "${ema[@]}" trainer.max_steps=9 +model.ema.decay=0.5 trainer.output_dir="$work/ema" 2>"$work/log" &&
  failed "a resume with another EMA decay was accepted" ||
  { grep -q "was trained with model.ema (EMA) = decay 0.9" "$work/log" && pass "a resume with another EMA decay refused: $(tail -n 1 "$work/log" | cut -c1-100)" ||
    failed "EMA decay change: $(tail -n 1 "$work/log")"; }
rm -rf "$work/ema" "$work/ema-killed" "$work/ema-original" "$work/no-ema"

# Validation (model.validation.*): 2 prompts x 2 images, a grid of 2 rows of 2 at step 2; a negative prompt changes it; with
# EMA the grid samples the average, or with validate_original_weights the trained weights (the plain run's grid)
png_size() { od -An -tu1 -j16 -N8 "$1" | awk '{print $3 * 256 + $4 "x" $7 * 256 + $8}'; }
val=("${train[@]}" trainer.max_steps=2 trainer.checkpoint_every_n_steps=0 "+model.validation.prompts=[a photo of sks thing, a thing]"
  +model.validation.every_n_steps=2 +model.validation.steps=3 +model.validation.num_images_per_prompt=2 +model.validation.guidance_scale=3)
grid=validation/step-00000002.png
for run in plain "negative +model.validation.negative_prompt=blurry" "ema +model.ema.enable=true +model.ema.decay=0.9 +model.ema.warmup=none" \
  "ema-original +model.ema.enable=true +model.ema.decay=0.9 +model.ema.warmup=none +model.ema.validate_original_weights=true"; do
  set -- $run
  name=$1
  shift
  "$bin" train "${base[@]}" "${val[@]}" "$@" trainer.output_dir="$work/val-$name" 2>"$work/log" || failed "validation $name: $(tail -n 2 "$work/log")"
done
[ "$(png_size "$work/val-plain/$grid")" = "128x128" ] && pass "validation grid: 2 prompts x 2 images of 64 px, $(png_size "$work/val-plain/$grid")" ||
  failed "validation grid size: $(png_size "$work/val-plain/$grid")"
! cmp -s "$work/val-plain/$grid" "$work/val-negative/$grid" && pass "model.validation.negative_prompt changes the validation pictures" ||
  failed "the negative prompt changed nothing"
! cmp -s "$work/val-plain/$grid" "$work/val-ema/$grid" && cmp -s "$work/val-plain/$grid" "$work/val-ema-original/$grid" &&
  pass "with EMA validation samples the average; with validate_original_weights the trained weights" || failed "EMA validation grids"
rm -rf "$work"/val-*

# kohya's stop_text_encoder_training: the text encoder trains for 2 steps, then stays; the UNet trains on. diffusers'
# scale_lr: the rate times the instance images per step.
"$bin" train "${base[@]}" "${train[@]}" trainer.max_steps=4 trainer.checkpoint_every_n_steps=1 trainer.keep_last_checkpoints=-1 \
  model.train_text_encoder=true +model.stop_text_encoder_training=2 +model.optim.scale_lr=true model.micro_batch_size=2 \
  trainer.output_dir="$work/stop" 2>"$work/log" || failed "stop_text_encoder_training: $(tail -n 2 "$work/log")"
ckpt="$work/stop/checkpoints"
grep -q "the text encoder stops training after step 2" "$work/log" &&
  ! cmp -s "$ckpt/step-00000001/text_encoder.safetensors" "$ckpt/step-00000002/text_encoder.safetensors" 2>/dev/null &&
  cmp -s "$ckpt/step-00000002/text_encoder.safetensors" "$ckpt/step-00000004/text_encoder.safetensors" &&
  ! cmp -s "$ckpt/step-00000003/unet.safetensors" "$ckpt/step-00000004/unet.safetensors" &&
  pass "stop_text_encoder_training=2: the text encoder changes in steps 1-2 only, the UNet in every step" ||
  failed "stop_text_encoder_training: $(grep -c stops "$work/log") notes; $(ls "$ckpt")"
grep -q "model.optim.scale_lr: learning rate 0.001 x 2 instance images per optimizer step = 0.002" "$work/log" && grep -q '"lr":0.002' "$work/stop/metrics.jsonl" &&
  pass "scale_lr: 0.001 x micro-batch 2 = 0.002" || failed "scale_lr: $(grep scale_lr "$work/log")"
rm -rf "$work/stop"

# kohya's captions: a caption file beside two of the four instance images; the log counts them, and the first step's
# loss changes from the plain run's (the same seed: only the prompts differ); an empty caption file is refused by name
cp -r "$work/instance" "$work/captioned"
echo "a photo of sks thing, red, on grass" >"$work/captioned/subject-00.txt"
echo "sks thing beside a tree" >"$work/captioned/subject-01.txt"
cap=(model.data.instance_dir="$work/captioned" +model.data.caption_extension=.txt +model.data.shuffle_caption=true +model.data.keep_tokens=1)
"$bin" train "${base[@]}" "${train[@]}" trainer.max_steps=1 "${cap[@]}" trainer.output_dir="$work/captions" 2>"$work/log" &&
  grep -q "captions: 2 of 4 instance images and 0 of 24 class images have a caption file (.txt)" "$work/log" &&
  [ "$(first_loss "$work/captions/metrics.jsonl")" != "$(first_loss "$work/straight/metrics.jsonl")" ] &&
  pass "caption files: 2 of 4 read, the first loss $(first_loss "$work/straight/metrics.jsonl") -> $(first_loss "$work/captions/metrics.jsonl")" ||
  failed "captions: $(grep -E 'captions|error' "$work/log" | head -n 2)"
: >"$work/captioned/subject-02.txt"
"$bin" train "${base[@]}" "${train[@]}" trainer.max_steps=1 "${cap[@]}" trainer.output_dir="$work/captions2" 2>"$work/log" &&
  failed "an empty caption file was accepted" ||
  { grep -q "caption file .*subject-02.txt is empty" "$work/log" && pass "an empty caption file refused: $(tail -n 1 "$work/log" | cut -c1-100)" ||
    failed "empty caption file: $(tail -n 1 "$work/log")"; }
rm -rf "$work/captioned" "$work/captions" "$work/captions2"

# random crops (center_crop=false) change the pictures every step, so their latents are encoded each step, not cached
# (a note says so; no cache folder is made); random flips (random_flip) cache both orientations (kohya's latents_flipped),
# and training on them gives the losses of encoding each step (the flip itself is test_dataset's)
cp -r "$work/instance" "$work/augmented"
"$bin" train "${base[@]}" "${train[@]}" trainer.max_steps=2 model.data.center_crop=false model.data.instance_dir="$work/augmented" \
  trainer.output_dir="$work/aug" 2>"$work/log" &&
  grep -q "note: model.data.center_crop=false: the crops change every step, so the latents are encoded each step" "$work/log" &&
  [ ! -e "$work/augmented_latents" ] && [ -n "$(first_loss "$work/aug/metrics.jsonl")" ] &&
  pass "center_crop=false: latents encoded each step, no cache folder made" || failed "center_crop=false: $(grep -E 'note|error' "$work/log" | head -n 2)"
rm -rf "$work/aug"
losses() { grep -o '"loss":[^,]*' "$1" | tr '\n' ' '; }
"$bin" train "${base[@]}" "${train[@]}" trainer.max_steps=3 +model.data.random_flip=true model.data.instance_dir="$work/augmented" \
  trainer.output_dir="$work/aug" 2>"$work/log" &&
  "$bin" train "${base[@]}" "${train[@]}" trainer.max_steps=3 +model.data.random_flip=true model.data.instance_dir="$work/augmented" \
    model.use_cached_latents=false trainer.output_dir="$work/aug-online" 2>"$work/log2" &&
  [ "$(ls "$work/augmented_latents" | grep -c '\.safetensors$')" -eq 4 ] && [ -n "$(losses "$work/aug/metrics.jsonl")" ] &&
  [ "$(losses "$work/aug/metrics.jsonl")" = "$(losses "$work/aug-online/metrics.jsonl")" ] &&
  pass "random_flip: both orientations cached; the losses equal encoding each step: $(losses "$work/aug/metrics.jsonl")" ||
  failed "random_flip: $(grep -E 'note|error' "$work/log" "$work/log2" | head -n 2); $(losses "$work/aug/metrics.jsonl") vs $(losses "$work/aug-online/metrics.jsonl")"
rm -rf "$work/augmented" "$work/augmented_latents" "$work/aug" "$work/aug-online"

# Several subjects (model.data.concepts_list, diffusers' JSON file with its key names): a list of the one concept trains
# exactly as model.data's own keys do; with two concepts the second's class folder is sampled, each folder gets its latent
# cache, a micro-batch of 1 example holds 4 images and the loss changes; the list beside model.data.instance_dir is refused.
unset_single=(model.data.instance_dir=null model.data.instance_prompt=null model.data.regularization_prompt=null model.data.regularization_dir=null)
"$bin" render-demo-images --output-dir "$work/second" --count 2 --size 48 2>/dev/null
cat >"$work/one.json" <<EOF
[{"instance_data_dir": "$work/instance", "instance_prompt": "a photo of sks thing", "class_data_dir": "$work/reg",
  "class_prompt": "a photo of a thing", "num_class_images": 24}]
EOF
cat >"$work/two.json" <<EOF
[{"instance_data_dir": "$work/instance", "instance_prompt": "a photo of sks thing", "class_data_dir": "$work/reg",
  "class_prompt": "a photo of a thing", "num_class_images": 24},
 {"instance_data_dir": "$work/second", "instance_prompt": "a photo of zwx toy", "class_data_dir": "$work/reg2",
  "class_prompt": "a photo of a toy", "num_class_images": 2, "validation_number_images": 4}]
EOF
"$bin" train "${base[@]}" "${train[@]}" trainer.max_steps=2 trainer.output_dir="$work/flat" 2>"$work/log" || failed "flat run: $(tail -n 1 "$work/log")"
"$bin" train "${base[@]}" "${train[@]}" trainer.max_steps=2 "${unset_single[@]}" +model.data.concepts_list="$work/one.json" \
  trainer.output_dir="$work/one" 2>"$work/log" &&
  cmp -s "$work/flat/model/unet/diffusion_pytorch_model.safetensors" "$work/one/model/unet/diffusion_pytorch_model.safetensors" &&
  pass "a concepts_list of one concept trains exactly as model.data's keys (identical weights)" || failed "one-concept list: $(tail -n 2 "$work/log")"
"$bin" train "${base[@]}" "${train[@]}" trainer.max_steps=2 "${unset_single[@]}" +model.data.concepts_list="$work/two.json" \
  model.regularization.steps=5 trainer.output_dir="$work/two" 2>"$work/log" &&
  grep -q "2 concepts (model.data.concepts_list): 6 instance images, 26 class images; each micro-batch of 1 examples holds 4 images" "$work/log" &&
  [ "$(ls "$work/reg2" | grep -c '\.png$')" -eq 2 ] && [ "$(ls "$work/reg2_latents" | grep -c '\.safetensors$')" -eq 2 ] &&
  [ "$(ls "$work/second_latents" | grep -c '\.safetensors$')" -eq 2 ] && grep -q "validation_number_images: model.validation" "$work/log" &&
  [ "$(first_loss "$work/two/metrics.jsonl")" != "$(first_loss "$work/flat/metrics.jsonl")" ] &&
  pass "two concepts: 2 class images sampled for the second, a cache per folder, 4 images per micro-batch, loss $(first_loss "$work/two/metrics.jsonl")" ||
  failed "two concepts: $(grep -E 'concepts|error|regularization' "$work/log" | head -n 3); $(ls "$work")"
"$bin" train "${base[@]}" "${train[@]}" trainer.max_steps=1 +model.data.concepts_list="$work/two.json" trainer.output_dir="$work/both" 2>"$work/log" &&
  failed "a concepts_list beside model.data.instance_dir was accepted" ||
  { grep -q "model.data.instance_dir is set beside model.data.concepts_list" "$work/log" && pass "concepts_list beside model.data.instance_dir refused" ||
    failed "concepts_list beside instance_dir: $(tail -n 1 "$work/log")"; }
rm -rf "$work/second" "$work/second_latents" "$work/reg2" "$work/reg2_latents" "$work/flat" "$work/one" "$work/two"

# Aspect-ratio buckets (kohya's): a wide and a tall picture beside two square ones go to their own buckets (the square
# class images to theirs), are cached at their buckets' sizes, and a run killed at step 3 and resumed ends with the
# uninterrupted run's weights; bucket_reso_steps that is no multiple of 8 is refused by name.
mkdir -p "$work/shapes" && cp "$work/instance/subject-00.png" "$work/instance/subject-01.png" "$work/shapes/"
"$bin" generate --model "$model" --prompt "a wide picture" --width 128 --height 48 --steps 2 --output "$work/shapes/wide.png" 2>/dev/null &&
  "$bin" generate --model "$model" --prompt "a tall picture" --width 48 --height 128 --steps 2 --output "$work/shapes/tall.png" 2>/dev/null ||
  failed "generate the wide and tall pictures"
buckets=(model.data.instance_dir="$work/shapes" trainer.max_steps=6 model.micro_batch_size=2 trainer.checkpoint_every_n_steps=2
  +model.data.enable_bucket=true +model.data.min_bucket_reso=32 +model.data.max_bucket_reso=128 +model.data.bucket_reso_steps=32)
"$bin" train "${base[@]}" "${train[@]}" "${buckets[@]}" trainer.output_dir="$work/bucketed" 2>"$work/log" &&
  grep -q "aspect-ratio buckets (kohya's; steps 32, sides 32 to 128): instance images 32x96 x1 64x64 x2 96x32 x1; class images 64x64 x24" "$work/log" &&
  [ "$(ls "$work/shapes_latents" | grep -c '\.safetensors$')" -eq 4 ] &&
  pass "buckets: wide and tall pictures in 96x32 and 32x96, the square ones in 64x64, 4 cache entries" ||
  failed "buckets: $(grep -E 'bucket|error' "$work/log" | head -n 3)"
DREAMBOOTH_FAULT=kill:step:3 "$bin" train "${base[@]}" "${train[@]}" "${buckets[@]}" trainer.output_dir="$work/bucket-killed" 2>"$work/log"
"$bin" train "${base[@]}" "${train[@]}" "${buckets[@]}" trainer.output_dir="$work/bucket-killed" 2>"$work/log" &&
  grep -q "resumed from .*step-00000002 at step 2" "$work/log" &&
  cmp -s "$work/bucketed/model/unet/diffusion_pytorch_model.safetensors" "$work/bucket-killed/model/unet/diffusion_pytorch_model.safetensors" &&
  pass "buckets: killed at step 3 and resumed: the uninterrupted run's weights" || failed "bucket resume: $(grep -E 'resumed|error' "$work/log")"
"$bin" train "${base[@]}" "${train[@]}" "${buckets[@]}" +model.data.bucket_reso_steps=12 trainer.output_dir="$work/bucket-bad" 2>"$work/log" &&
  failed "bucket_reso_steps=12 accepted" ||
  { grep -q "model.data.bucket_reso_steps\" = 12 must be a positive multiple of 8" "$work/log" && pass "bucket_reso_steps=12 refused by name" ||
    failed "bucket_reso_steps=12: $(tail -n 1 "$work/log")"; }
rm -rf "$work/shapes" "$work/shapes_latents" "$work/bucketed" "$work/bucket-killed" "$work/bucket-bad"

# 3. Faults inside a checkpoint: killed after its second file, or just before its rename, or a full disk while
#    state.json is written: nothing half-written is published, and the resume continues from the previous one.
short=(model.data.regularization_dir="$work/reg" model.data.num_reg_images=24 model.data.resolution=64 trainer.max_steps=6
  trainer.checkpoint_every_n_steps=2 trainer.keep_last_checkpoints=3 model.use_cached_latents=true)
for fault in kill:checkpoint-file:5 kill:checkpoint-rename:2 enospc:state.json:2; do
  rm -rf "$work/fault"
  DREAMBOOTH_FAULT=$fault "$bin" train "${base[@]}" "${short[@]}" trainer.output_dir="$work/fault" 2>"$work/fault.log"
  status=$?
  published=$(ls "$work/fault/checkpoints" | grep -v '\.tmp-' | tr '\n' ' ')  # a killed run's temporary folder is not published
  if [ $status -eq 0 ] || [ "$published" != "step-00000002 " ]; then
    failed "$fault: exit $status, checkpoints $published"
  elif [ "${fault%%:*}" = enospc ] && ! grep -q "state.json.*No space left on device" "$work/fault.log"; then
    failed "$fault: the error does not name the file: $(tail -n 1 "$work/fault.log")"
  else
    "$bin" train "${base[@]}" "${short[@]}" trainer.output_dir="$work/fault" 2>"$work/fault2.log"
    grep -q "resumed from .*step-00000002 at step 2" "$work/fault2.log" && [ -e "$work/fault/model" ] &&
      pass "$fault: only whole checkpoints published ($published), resumed from step 2: $(grep -m1 -o 'error: .*' "$work/fault.log" | cut -c1-100)" ||
      failed "$fault: resume: $(tail -n 2 "$work/fault2.log")"
  fi
done
# a damaged checkpoint (a truncated file, bad JSON) is named, skipped, and the previous one resumed
rm -rf "$work/damaged"
DREAMBOOTH_FAULT=kill:step:5 "$bin" train "${base[@]}" "${short[@]}" trainer.output_dir="$work/damaged" 2>/dev/null
truncate -s 1000 "$work/damaged/checkpoints/step-00000004/unet.safetensors"
"$bin" train "${base[@]}" "${short[@]}" trainer.output_dir="$work/damaged" 2>"$work/damaged.log"
grep -q "step-00000004 is damaged and skipped" "$work/damaged.log" && grep -q "resumed from .*step-00000002 at step 2" "$work/damaged.log" &&
  pass "a truncated checkpoint file: $(grep -o 'step-00000004 is damaged.*' "$work/damaged.log" | cut -c1-110)" || failed "damaged checkpoint: $(grep -E 'damaged|resumed|error' "$work/damaged.log")"
rm -rf "$work/damaged"
DREAMBOOTH_FAULT=kill:step:5 "$bin" train "${base[@]}" "${short[@]}" trainer.output_dir="$work/damaged" 2>/dev/null
echo '{"step": 4,' >"$work/damaged/checkpoints/step-00000004/state.json"
"$bin" train "${base[@]}" "${short[@]}" trainer.output_dir="$work/damaged" 2>"$work/damaged.log"
grep -q "step-00000004 is damaged and skipped: checkpoint state .*state.json" "$work/damaged.log" && grep -q "resumed from .*step-00000002 at step 2" "$work/damaged.log" &&
  pass "a checkpoint with bad JSON named and skipped" || failed "bad state.json: $(grep -E 'damaged|resumed|error' "$work/damaged.log")"
# a resume with another seed, text-encoder setting or precision is refused naming the key; trainer.resume=never starts afresh
rm -rf "$work/changed"
DREAMBOOTH_FAULT=kill:step:3 "$bin" train "${base[@]}" "${short[@]}" trainer.output_dir="$work/changed" 2>/dev/null
for change in model.seed=99 model.train_text_encoder=true; do
  if "$bin" train "${base[@]}" "${short[@]}" trainer.output_dir="$work/changed" "$change" 2>"$work/log"; then
    failed "resume with $change: exit status 0"
  elif ! grep -q "was trained with ${change%%=*} = .*trainer.resume=never" "$work/log" || [ -e "$work/changed/model" ]; then
    failed "resume with $change: $(tail -n 1 "$work/log")"
  else
    pass "resume with $change refused: $(tail -n 1 "$work/log" | cut -c1-110)"
  fi
done
"$bin" train "${base[@]}" "${short[@]}" trainer.output_dir="$work/changed" model.seed=99 trainer.resume=never 2>"$work/log" &&
  grep -q "trainer.resume=never: removed 1 checkpoints" "$work/log" && ! grep -q resumed "$work/log" &&
  [ "$(steps "$work/changed/metrics.jsonl" | tr '\n' ' ')" = "1 2 3 4 5 6 " ] && pass "trainer.resume=never starts afresh" ||
  failed "trainer.resume=never: $(tail -n 2 "$work/log")"
"$bin" train "${base[@]}" "${short[@]}" trainer.output_dir="$work/changed" trainer.resume="$work/changed/checkpoints/step-00000004" trainer.max_steps=7 model.seed=99 2>"$work/log" &&
  grep -q "resumed from .*step-00000004 at step 4" "$work/log" && pass "trainer.resume=PATH resumes that checkpoint" || failed "trainer.resume=PATH: $(tail -n 2 "$work/log")"

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
# no periodic checkpoints (0 divided the step count before): the run ends with its final checkpoint only
rm -rf "$work/nockpt"
"$bin" train "${ok[@]}" trainer.max_steps=3 trainer.checkpoint_every_n_steps=0 trainer.output_dir="$work/nockpt" 2>"$work/log" &&
  [ "$(ls "$work/nockpt/checkpoints")" = "step-00000003" ] && pass "trainer.checkpoint_every_n_steps=0: only the final checkpoint" ||
  failed "trainer.checkpoint_every_n_steps=0: exit $?, $(tail -n 1 "$work/log"), checkpoints $(ls "$work/nockpt/checkpoints" 2>&1)"
# render-demo-images with an absurd size is refused by range (it overflowed and crashed before)
"$bin" render-demo-images --output-dir "$work/huge" --count 1 --size 100000000 2>"$work/log"
status=$?
[ $status -eq 2 ] && [ ! -e "$work/huge" ] && grep -q -- "--size" "$work/log" && pass "render-demo-images --size 100000000 refused: $(head -n 1 "$work/log")" ||
  failed "render-demo-images --size 100000000: exit $status, $(head -n 1 "$work/log")"
refuse "an empty instance directory" "holds no JPEG or PNG" "${ok[@]}" model.data.instance_dir="$work/empty"
refuse "a missing instance directory" "is not a directory" "${ok[@]}" model.data.instance_dir="$work/nowhere"
refuse "a corrupt image" "subject-01.png" "${ok[@]}" model.data.instance_dir="$work/corrupt"
refuse "an image over the pixel limit" "subject-00.png: 64x64 pixels .* raise model.data.max_image_pixels" "${ok[@]}" model.data.max_image_pixels=4000
refuse "an unknown config key" "did you mean \"model.prior_loss_weight\"" "${ok[@]}" model.prior_los_weight=1
refuse "a value of the wrong type" "needs an integer" "${ok[@]}" trainer.max_steps=many
refuse "a missing model" "does not exist" "${ok[@]}" model.restore_from_path="$work/nowhere.safetensors"
refuse "a resolution not divisible by 8" "multiple of 8" "${ok[@]}" model.data.resolution=60
# trainer.precision=bf16 on the CPU (bf16 GEMMs through oneDNN): the losses of 6 steps within 1e-2 of fp32's, and not
# all equal (bf16 ran); where this CPU or build has no bf16 kernel, the refusal says why
"$bin" train "${ok[@]}" trainer.max_steps=6 trainer.output_dir="$work/prec32" 2>"$work/log32"
if "$bin" train "${ok[@]}" trainer.max_steps=6 trainer.precision=bf16 trainer.output_dir="$work/prec16" 2>"$work/log16"; then
  values() { grep -o '"loss":[^,]*' "$1" | cut -d: -f2; }
  gap=$(paste <(values "$work/prec32/metrics.jsonl") <(values "$work/prec16/metrics.jsonl") |
    awk 'NF == 2 {d = ($1 - $2) / $1; if (d < 0) d = -d; if (d > m) m = d} END {printf "%.2e", m}')
  grep -q "CPU GEMMs and convolutions in bf16 with fp32 accumulation (oneDNN" "$work/log16" && awk -v g="$gap" 'BEGIN {exit !(g <= 1e-2 && g > 0)}' &&
    [ "$(grep -c '"step"' "$work/prec16/metrics.jsonl")" -eq 6 ] &&
    pass "trainer.precision=bf16 on the CPU: 6 losses within $gap of fp32's" || failed "bf16 on the CPU: gap $gap; $(grep -i bf16 "$work/log16" | head -n 2)"
elif grep -qE "neither AVX512-BF16 nor AMX|no oneDNN" "$work/log16"; then
  pass "trainer.precision=bf16 on the CPU refused here, saying why: $(tail -n 1 "$work/log16" | cut -c1-140)"
else
  failed "trainer.precision=bf16 on the CPU: $(tail -n 2 "$work/log16")"
fi
finish
