#!/usr/bin/env python3
"""Loads the LoRA files `dreambooth train` writes in diffusers and checks them against the project's own merge.

A 20-step LoRA DreamBooth run on the bundled tiny pipeline (UNet and text-encoder adapters, rank 2, alpha 4), once per
format (kohya's lora.safetensors, diffusers' pytorch_lora_weights.safetensors), then once more in each format as kohya's
LoCon (conv_adapter_dim 3, conv_network_alpha 1.5: 3x3 convolution adapters) with adapter dropout 0.1; then for each file:
  diffusers' StableDiffusionPipeline.load_lora_weights(file) and fuse_lora(): every fused UNet and text-encoder weight
  equal (max abs difference <= 1e-6) to the model `dreambooth convert --lora file` writes (the project's merge), and the
  two pipelines, both run by diffusers from the same initial latents, sample the same latents (<= 1e-4).
For the kohya file also: every key follows sd-scripts' naming (lora_unet_ / lora_te_ + the module path with "." -> "_",
then .lora_down.weight, .lora_up.weight, .alpha) and the ss_network_dim / ss_network_alpha metadata.

Usage (after building; with tools/reference/requirements.txt installed):
  python tools/reference/check_lora_files.py build/examples/dreambooth
Prints one line per check and exits non-zero on the first failure. The result is recorded in docs/training.md.
"""
import pathlib
import re
import subprocess
import sys
import tempfile

import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = ROOT / "tests" / "data" / "pipeline" / "model"


def run(binary, *args):
    subprocess.run([binary, *map(str, args)], check=True, capture_output=True)


def load(folder):
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe):
    latents = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return pipe("a photo of sks thing", num_inference_steps=5, guidance_scale=7.5, height=32, width=32, latents=latents,
                    output_type="latent").images


def check_kohya_names(path, pipe):
    linear = {n for n, m in pipe.unet.named_modules() if isinstance(m, torch.nn.Linear) or isinstance(m, torch.nn.Conv2d)}
    text = {n for n, m in pipe.text_encoder.named_modules() if isinstance(m, torch.nn.Linear)}
    stems = {"lora_unet_" + n.replace(".", "_") for n in linear} | {"lora_te_" + n.replace(".", "_") for n in text}
    with safe_open(path, "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    for key in keys:
        stem, _, part = key.partition(".")
        if stem not in stems or part not in ("lora_down.weight", "lora_up.weight", "alpha"):
            raise SystemExit(f"kohya names: {key} does not follow sd-scripts' naming")
    if meta.get("ss_network_dim") != "2" or meta.get("ss_network_alpha") != "4":
        raise SystemExit(f"kohya metadata: {meta}")
    print(f"ok: kohya names: {len(keys)} keys follow sd-scripts' naming, ss_network_dim 2, ss_network_alpha 4")


def main():
    binary = pathlib.Path(sys.argv[1]).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        run(binary, "render-demo-images", "--output-dir", work / "instance", "--count", 4, "--size", 64)
        locon = ["model.peft.lora_tuning.conv_adapter_dim=3", "model.peft.lora_tuning.conv_network_alpha=1.5",
                 "model.peft.lora_tuning.adapter_dropout=0.1"]
        for label, fmt, name, extra in (("kohya", "kohya", "lora.safetensors", []),
                                        ("diffusers", "diffusers", "pytorch_lora_weights.safetensors", []),
                                        ("kohya LoCon", "kohya", "lora.safetensors", locon),
                                        ("diffusers LoCon", "diffusers", "pytorch_lora_weights.safetensors", locon)):
            out = work / label.replace(" ", "_")
            run(binary, "train", f"model.restore_from_path={MODEL}", f"model.data.instance_dir={work / 'instance'}",
                "model.data.instance_prompt=a photo of sks thing", "model.data.regularization_prompt=a photo of a thing",
                f"model.data.regularization_dir={work / 'reg'}", "model.data.num_reg_images=4", "model.data.resolution=64",
                "model.regularization.steps=5", "trainer.max_steps=20", "model.optim.lr=1e-2", "model.train_text_encoder=true",
                "model.peft.peft_scheme=lora", "model.peft.lora_tuning.adapter_dim=2", "model.peft.lora_tuning.network_alpha=4",
                f"model.peft.export_format={fmt}", f"trainer.output_dir={out}", *extra)
            lora = out / name
            run(binary, "convert", "--model", MODEL, "--lora", lora, "--output", out / "merged")
            theirs = load(MODEL)
            theirs.load_lora_weights(str(lora))
            theirs.fuse_lora()
            ours = load(out / "merged")
            worst = 0.0
            count = 0
            for model in ("unet", "text_encoder"):
                a = {re.sub(r"\.base_layer\.", ".", k): v for k, v in getattr(theirs, model).state_dict().items() if "lora" not in k}
                b = getattr(ours, model).state_dict()
                for k, v in b.items():
                    worst = max(worst, (a[k].float() - v.float()).abs().max().item())
                    count += 1
            if worst > 1e-6:
                raise SystemExit(f"{label}: diffusers' fused weights differ from convert --lora's by {worst}")
            with safe_open(lora, "pt") as f:
                convs = sum(1 for k in f.keys() if k.endswith("down.weight") and len(f.get_slice(k).get_shape()) == 4
                            and f.get_slice(k).get_shape()[2] == 3)
            if (convs > 0) != bool(extra):
                raise SystemExit(f"{label}: {convs} 3x3 convolution adapters")
            print(f"ok: {label}: diffusers' load_lora_weights + fuse_lora equals convert --lora on {count} tensors (max abs {worst:.2e}),"
                  f" {convs} 3x3 convolution adapters")
            diff = (sample(theirs) - sample(ours)).abs().max().item()
            if diff > 1e-4:
                raise SystemExit(f"{label}: sampled latents differ by {diff}")
            print(f"ok: {label}: both sample the same latents (max abs {diff:.2e})")
            if fmt == "kohya":
                check_kohya_names(lora, load(MODEL))


if __name__ == "__main__":
    main()
