#!/usr/bin/env bash
# The main job: the DreamBooth demo, from scratch, in a few minutes on 2 cores.
#   1. draw the instance images: a made-up subject (an orange disc with a white band and a dark eye) on varied backgrounds;
#   2. fine-tune the bundled tiny SD-architecture pipeline (tests/data/pipeline/model: diffusers' test UNet, VAE and text
#      encoder at a few thousand parameters, made by tools/reference with a fixed seed) with prior preservation: the model
#      first samples its own regularization images for "a photo of a thing", the latents of all images are cached, then
#      300 steps train "a photo of sks thing";
#   3. sample the subject with the fine-tuned model (out/demo/samples/).
# A model this small learns colours and layout, not a recognisable subject: the demo shows the whole machinery working,
# with real files in and out. For real SD 1.5 weights see README.md. Extra arguments are passed to `train` as overrides
# (`bash tools/run.sh model.peft.peft_scheme=lora` runs it as LoRA DreamBooth, sampling with the adapters).
# DEVICE=cuda bash tools/run.sh builds with the CUDA backend and trains and samples on GPU 0.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
device=${DEVICE:-cpu}
case "$device" in cpu) cuda=OFF ;; cuda) cuda=ON ;; *) echo "DEVICE=$device: expected cpu or cuda" >&2; exit 1 ;; esac
cmake -S . -B build-demo -DCMAKE_BUILD_TYPE=Release -DDREAMBOOTH_BUILD_TESTS=OFF -DDREAMBOOTH_BUILD_BENCHMARKS=OFF -DDREAMBOOTH_CUDA="$cuda" >/dev/null
cmake --build build-demo -j"$(nproc)" --target dreambooth_cli
bin=build-demo/examples/dreambooth
demo=out/demo
rm -rf "$demo"
$bin render-demo-images --output-dir "$demo/instance" --count 5 --size 128
$bin train --device "$device" --config examples/demo.yaml \
  model.data.instance_dir="$demo/instance" model.data.regularization_dir="$demo/regularization" trainer.output_dir="$demo/run" "$@"
mkdir -p "$demo/samples"
if [ -e "$demo/run/lora.safetensors" ]; then  # LoRA mode (model.peft.peft_scheme=lora): the base model with the adapters
  model=(--model tests/data/pipeline/model --lora "$demo/run/lora.safetensors")
else
  model=(--model "$demo/run/model")
fi
$bin generate --device "$device" "${model[@]}" --prompt "a photo of sks thing" --width 64 --height 64 --steps 30 --images 4 --seed 7 \
  --output "$demo/samples/sks-thing.png"
$bin generate --device "$device" "${model[@]}" --prompt "a photo of a thing" --width 64 --height 64 --steps 30 --images 2 --seed 7 \
  --output "$demo/samples/a-thing.png"
echo "demo: instance images in $demo/instance, regularization images in $demo/regularization, checkpoints and metrics.jsonl in"
echo "demo: $demo/run, the fine-tuned pipeline in $demo/run/model, samples in $demo/samples"
