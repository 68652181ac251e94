#!/usr/bin/env bash
# The main job: the DreamBooth demo, from scratch, in a few minutes on 2 cores (docs/demo.md).
#   1. draw the instance images: a made-up subject (an orange ball with a white band and a dark eye) on varied floors;
#   2. sample "a photo of sks ball" and "a photo of a ball" with the bundled pretrained model (examples/demo-model: a small
#      SD-architecture pipeline that draws toy balls, boxes, stars, rings and kites, made by
#      tools/reference/make_demo_model.py), which has never seen the subject;
#   3. fine-tune it with prior preservation (the model first samples its own "a photo of a ball" class images), and
#      once more without, for comparison;
#   4. sample both prompts again with each fine-tuned model, with the same seeds, and measure (dreambooth demo-report):
#      how close the subject samples came to the instance photos, and how far the class samples drifted toward the
#      subject with and without prior preservation: out/demo/report.json, grid.png and loss.png.
# Extra arguments are passed to both `train` runs as overrides (`bash tools/run.sh model.peft.peft_scheme=lora` runs it
# as LoRA DreamBooth, sampling with the adapters). DEVICE=cuda bash tools/run.sh builds with the CUDA backend and trains
# and samples on GPU 0.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-deps.sh
device=${DEVICE:-cpu}
case "$device" in cpu) cuda=OFF ;; cuda) cuda=ON ;; *) echo "DEVICE=$device: expected cpu or cuda" >&2; exit 1 ;; esac
cmake -S . -B build-demo -DCMAKE_BUILD_TYPE=Release -DDREAMBOOTH_BUILD_TESTS=OFF -DDREAMBOOTH_BUILD_BENCHMARKS=OFF -DDREAMBOOTH_CUDA="$cuda" >/dev/null
cmake --build build-demo -j"$(nproc)" --target dreambooth_cli
DEVICE="$device" bash tools/demo.sh build-demo/examples/dreambooth out/demo "$@"
