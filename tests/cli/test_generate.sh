#!/usr/bin/env bash
# The generate command end to end: from a diffusers folder and from a single file, A1111's parameters in the PNG; bad
# input refused with a clear error, a non-zero exit and no output file; `--help` on every command of the program.
# Usage: test_generate.sh DREAMBOOTH_BINARY TEST_DATA_DIR
source "$(dirname "$0")/common.sh"
bin=$1
data=$2/pipeline

common=(--prompt "a photo of sks dog" --width 32 --height 32 --steps 4)
if "$bin" generate --model "$data/model" "${common[@]}" --output "$work/folder.png" 2>"$work/log" && [ -s "$work/folder.png" ]; then
  pass "generate from a diffusers folder"
else
  failed "generate from a diffusers folder: $(cat "$work/log")"
fi
if "$bin" generate --model "$data/single_file.safetensors" --configs "$data/model" "${common[@]}" --images 2 --output "$work/file.png" 2>"$work/log" &&
  [ -s "$work/file-0.png" ] && [ -s "$work/file-1.png" ]; then
  pass "generate from a single file, two images"
else
  failed "generate from a single file: $(cat "$work/log")"
fi
grep -q "step 4/5" "$work/log" && pass "progress per step" || failed "no progress shown"
# A1111's parameters in the PNG (an uncompressed tEXt chunk): its sampler names, the model hash as A1111 computes it (the
# first 10 hex digits of the file's SHA-256, checked with coreutils' sha256sum), none for a folder A1111 cannot load
text_of() { tr '\n\0' ' \n' <"$1" | grep -a -A1 'tEXtparameters$' | tail -n 1 | tr -cd '[:print:]'; }  # the chunk's text, newlines as spaces
folder_text=$(text_of "$work/folder.png")
case "$folder_text" in
*"a photo of sks dog Steps: 4, Sampler: PLMS, CFG scale: 7.5, Seed: 0, Size: 32x32, Model: model"*) pass "A1111's parameters for a folder (sampler, size, model name)" ;;
*) failed "parameters of folder.png: $folder_text" ;;
esac
[[ "$folder_text" == *"Model hash"* ]] && failed "a folder has no A1111 model hash: $folder_text"
hash=$(sha256sum "$data/single_file.safetensors" | cut -c1-10)
file_text=$(text_of "$work/file-1.png")
[[ "$file_text" == *"Model hash: $hash, Model: single_file, Batch size: 2, Batch pos: 1"* ]] && pass "the single file's A1111 model hash $hash" ||
  failed "parameters of file-1.png: $file_text (hash $hash)"

refuse() {  # refuse NAME EXPECTED-MESSAGE ARGS...
  local name=$1 expected=$2
  shift 2
  if "$bin" generate "$@" --output "$work/refused.png" 2>"$work/log"; then
    failed "$name: exit status 0"
  elif [ -e "$work/refused.png" ] || ls "$work" | grep -q tmp; then
    failed "$name: an output file was left"
  elif ! grep -q -- "$expected" "$work/log"; then
    failed "$name: message '$(cat "$work/log")' lacks '$expected'"
  else
    pass "$name refused: $(tail -n 1 "$work/log")"
  fi
}
refuse "a missing model" "does not exist" --model "$work/nowhere.safetensors" "${common[@]}"
refuse "a folder that is not a pipeline" "has no unet/ folder" --model "$work" "${common[@]}"
refuse "an unknown scheduler" "unknown scheduler \"heun\"" --model "$data/model" "${common[@]}" --scheduler heun
refuse "a size not divisible by 8" "multiples of 8" --model "$data/model" --prompt dog --width 36 --height 32 --steps 2
refuse "zero steps" "steps must be positive" --model "$data/model" --prompt dog --width 32 --height 32 --steps 0
refuse "a step count that is not a number" "Could not convert: --steps = many" --model "$data/model" --prompt dog --steps many
refuse "a fractional step count" "Could not convert: --steps = 2.5" --model "$data/model" --prompt dog --steps 2.5
refuse "an eta above 1" "--eta: Value 2 not in range" --model "$data/model" --prompt dog --eta 2
refuse "a guidance scale that is not a number" "--guidance" --model "$data/model" --prompt dog --guidance nan
refuse "an unknown option" "--stepz" --model "$data/model" --prompt dog --stepz 4
# convert takes generate's component options: the single file's architecture from --*-config (the tiny model does not
# fit SD 1.5's, which it takes without them), a component from elsewhere; what it wrote loads and equals its source
arch=(--unet-config "$data/model/unet/config.json" --vae-config "$data/model/vae/config.json"
  --text-encoder-config "$data/model/text_encoder/config.json" --tokenizer "$data/model/tokenizer")
mkdir -p "$work/converted"
if "$bin" convert --model "$data/single_file.safetensors" "${arch[@]}" --output "$work/converted/model" 2>"$work/log" &&
  grep -q "read back, its .* tensors equal the source's" "$work/log" && [ -s "$work/converted/model/unet/config.json" ]; then
  pass "convert a single file with --unet-config / --vae-config / --text-encoder-config: $(tail -n 1 "$work/log")"
else
  failed "convert with component configs: $(tail -n 3 "$work/log")"
fi
if "$bin" convert --model "$data/single_file.safetensors" --tokenizer "$data/model/tokenizer" --output "$work/unfit" 2>"$work/log"; then
  failed "convert a tiny single file without its configs: exit status 0"
else
  grep -q "has shape" "$work/log" && pass "without them, SD 1.5's architecture is refused: $(tail -n 1 "$work/log")" ||
    failed "convert without configs: $(tail -n 3 "$work/log")"
fi
if "$bin" convert --model "$data/single_file.safetensors" "${arch[@]}" --vae "$data/model/vae" --output "$work/mixed.safetensors" \
  2>"$work/log" && grep -q "read back" "$work/log" && [ -s "$work/mixed.safetensors" ]; then
  pass "convert with --vae from a folder, to one .safetensors: $(tail -n 1 "$work/log")"
else
  failed "convert with --vae: $(tail -n 3 "$work/log")"
fi
# the same weights as the folder the single file was made from: the same image, byte for byte (a folder named "model"
# too, so that A1111's parameters in the PNG are the same)
if "$bin" generate --model "$work/converted/model" "${common[@]}" --output "$work/converted.png" 2>"$work/log" &&
  cmp -s "$work/converted.png" "$work/folder.png"; then
  pass "the converted folder generates the folder's image, byte for byte"
else
  failed "generate from the converted folder: $(tail -n 3 "$work/log")"
fi
# --help on every command: usage on stdout, exit 0, nothing run
for command in inspect convert generate train unet render-demo-images; do
  if "$bin" "$command" --help >"$work/help" 2>&1 && grep -q "Usage: dreambooth $command" "$work/help"; then
    pass "$command --help"
  else
    failed "$command --help: $(head -n 3 "$work/help")"
  fi
done
"$bin" --help >"$work/help" 2>&1 && grep -q "render-demo-images" "$work/help" && pass "dreambooth --help lists the commands" || failed "dreambooth --help"
finish
