#!/usr/bin/env python3
"""Loads what `dreambooth train` writes in diffusers and transformers, with their default arguments, and samples it there.

For the run in tests/data/trained_folder/train.yaml (the tiny pipeline, 3 steps), once with the text encoder frozen and once
trained:
  <output>/model             StableDiffusionPipeline.from_pretrained(folder) (no other argument); CLIPTextModel and
                             CLIPTokenizer.from_pretrained on its parts; every weight equal to the files written
  images                     for pndm, ddim, euler, euler_a and dpm++2m: `dreambooth generate` on the folder and diffusers on
                             the same folder from the same initial latents (the project's Philox normals for the seed, and
                             for Euler ancestral its noise) give the same 8-bit pixels; Pillow reads the PNG's parameters
                             as A1111 does (image.info["parameters"])
  <output>/model.safetensors from_single_file(config=folder): every weight equal to the folder's
  <output>/model.ckpt        the same, and torch.load(weights_only=True)
Then writes tests/data/trained_folder/accepted.json: what these loaders accepted (the folder's files, its JSON files, each
safetensors file's metadata and tensor names, dtypes and shapes) and the results; test_trained_folder compares every new
run's folder with it, without Python.

Usage (after building; with tools/reference/requirements.txt installed):
  python tools/reference/check_trained_folder.py build/examples/dreambooth
"""
import json
import pathlib
import re
import struct
import subprocess
import sys
import tempfile

import diffusers
import numpy as np
import PIL
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
OUT = DATA / "trained_folder"
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_pipeline_fixtures import philox_normal  # noqa: E402  (the project's Philox normals in numpy)

PROMPT, NEGATIVE, STEPS, SIZE, SEED = "a photo of sks dog", "blurry", 10, 32, 99
SCHEDULERS = {"pndm": "PNDMScheduler", "ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler",
              "euler_a": "EulerAncestralDiscreteScheduler", "dpm++2m": "DPMSolverMultistepScheduler"}


def run(binary, *args):
    r = subprocess.run([binary, *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{binary} {' '.join(map(str, args))}: {r.stderr[-2000:]}")


def equal_state(a, b, what):
    if set(a) != set(b):
        raise SystemExit(f"{what}: names differ: {sorted(set(a) ^ set(b))[:5]}")
    for k, v in b.items():
        if not torch.equal(a[k].float(), v.float()):
            raise SystemExit(f"{what}: {k} differs")
    print(f"ok: {what}: {len(b)} tensors equal")
    return len(b)


def safetensors_header(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    metadata = header.pop("__metadata__", None)
    return metadata, {k: [v["dtype"], v["shape"]] for k, v in sorted(header.items())}


def layout(folder):
    """What the loaders saw: every file; small JSON files whole, safetensors files' metadata and tensors, others' sizes."""
    files = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = f.relative_to(folder).as_posix()
        if f.suffix == ".json" and f.stat().st_size < 4096:  # configurations whole; the vocabulary by its size
            files[rel] = {"json": json.loads(f.read_text())}
        elif f.suffix == ".safetensors":
            metadata, tensors = safetensors_header(f)
            files[rel] = {"metadata": metadata, "tensors": tensors}
        else:
            files[rel] = {"bytes": f.stat().st_size}
    return files


def sample_in_diffusers(pipe, scheduler):
    """diffusers' pipeline from the project's initial latents for SEED and, for Euler ancestral, its noise."""
    cls = getattr(diffusers, SCHEDULERS[scheduler])
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    side = SIZE // pipe.vae_scale_factor
    latents = torch.from_numpy(philox_normal(SEED, 0, 4 * side * side).reshape(1, 4, side, side))
    module = sys.modules[cls.__module__]
    calls = {"n": 0}

    def philox_randn(shape, generator=None, device=None, dtype=None, layout=None, **_):
        out = torch.from_numpy(philox_normal(SEED, (1 << 20) + calls["n"], int(np.prod(shape))).reshape(shape))
        calls["n"] += 1
        return out.to(dtype or torch.float32)

    original = getattr(module, "randn_tensor", None)
    if original is not None:
        module.randn_tensor = philox_randn
    try:
        image = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, height=SIZE, width=SIZE, latents=latents,
                     output_type="np").images[0]
    finally:
        if original is not None:
            module.randn_tensor = original
    return (image * 255).round().astype("uint8"), image * 255  # diffusers' numpy_to_pil, and the values it rounds


def check_run(binary, work, name, overrides):
    out = work / name
    run(binary, "train", "--config", OUT / "train.yaml", f"model.restore_from_path={DATA / 'pipeline' / 'model'}",
        f"model.data.instance_dir={work / 'instance'}", f"model.data.cached_instance_dir={out / 'cache'}",
        f"trainer.output_dir={out}", *overrides)
    folder = out / "model"
    result = {"overrides": overrides}
    # the folder, with default arguments only
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    written = {part: load_file(folder / part / file) for part, file in
               (("unet", "diffusion_pytorch_model.safetensors"), ("vae", "diffusion_pytorch_model.safetensors"),
                ("text_encoder", "model.safetensors"))}
    for part, state in written.items():
        equal_state(getattr(pipe, part).state_dict(), state, f"{name}: from_pretrained {part}")
    text_encoder = transformers.CLIPTextModel.from_pretrained(folder / "text_encoder")
    equal_state(text_encoder.state_dict(), written["text_encoder"], f"{name}: CLIPTextModel.from_pretrained")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer")
    assert tokenizer(PROMPT).input_ids == pipe.tokenizer(PROMPT).input_ids
    print(f"ok: {name}: StableDiffusionPipeline, CLIPTextModel and CLIPTokenizer load the folder with default arguments")
    result["from_pretrained"] = "loaded with default arguments; weights equal to the files"
    # the same images
    result["images"] = {}
    for scheduler in SCHEDULERS:
        png = work / f"{name}-{scheduler}.png"
        run(binary, "generate", "--model", folder, "--prompt", PROMPT, "--negative-prompt", NEGATIVE, "--steps", STEPS,
            "--width", SIZE, "--height", SIZE, "--seed", SEED, "--scheduler", scheduler, "--output", png)
        image = Image.open(png)
        ours = np.asarray(image.convert("RGB"))
        theirs, theirs_float = sample_in_diffusers(pipe, scheduler)
        differing = int((ours != theirs).any(axis=-1).sum())
        max_diff = int(np.abs(ours.astype(int) - theirs.astype(int)).max())
        parameters = image.info.get("parameters", "")
        assert parameters.startswith(f"{PROMPT}\nNegative prompt: {NEGATIVE}\nSteps: {STEPS}, Sampler: "), parameters
        assert re.search(rf"Seed: {SEED}, Size: {SIZE}x{SIZE}, Model: model$", parameters), parameters
        print(f"ok: {name}: {scheduler}: {differing} of {SIZE * SIZE} pixels differ "
              f"(max {max_diff} levels{'' if not differing else ', at rounding boundaries'}); parameters: {parameters.splitlines()[-1]}")
        result["images"][scheduler] = {"pixels_differing": differing, "max_level_difference": max_diff,
                                       "parameters": parameters}
        # Where the 8-bit values differ, diffusers' own value must sit at a rounding boundary: within 0.05 of a level of
        # k + 0.5 (float32 noise decides the side; DDIM on this tiny model is the most sensitive: diffusers' own float32 and
        # float64 scheduler arithmetic give final latents 2.6e-5 apart there)
        margin = float(np.abs(np.abs(np.modf(theirs_float)[0] - 0.5)[ours != theirs]).max(initial=0.0))
        result["images"][scheduler]["largest_distance_from_a_rounding_boundary"] = margin
        if max_diff > 1 or margin > 0.05:
            raise SystemExit(f"{name}: {scheduler}: the images differ ({max_diff} levels, {margin:.3f} from a rounding boundary)")
    # single files
    reference = {part: getattr(pipe, part).state_dict() for part in ("unet", "vae", "text_encoder")}
    for ext in ("safetensors", "ckpt"):
        if ext == "ckpt":
            torch.load(out / "model.ckpt", weights_only=True)
        single = diffusers.StableDiffusionPipeline.from_single_file(str(out / f"model.{ext}"), config=str(folder))
        for part in reference:
            equal_state(getattr(single, part).state_dict(), reference[part], f"{name}: from_single_file model.{ext} {part}")
        result[f"model.{ext}"] = "from_single_file(config=folder): weights equal to the folder's"
    result["layout"] = layout(folder)
    return result


def main():
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory() as d:
        work = pathlib.Path(d)
        run(binary, "render-demo-images", "--output-dir", work / "instance", "--count", 3, "--size", SIZE)
        runs = {"frozen_text_encoder": check_run(binary, work, "frozen_text_encoder", []),
                "trained_text_encoder": check_run(binary, work, "trained_text_encoder", ["model.train_text_encoder=true"])}
    accepted = {"versions": {"diffusers": diffusers.__version__, "transformers": transformers.__version__,
                             "torch": torch.__version__, "Pillow": PIL.__version__},
                "runs": runs}
    (OUT / "accepted.json").write_text(json.dumps(accepted, indent=1, sort_keys=True) + "\n")
    print(f"ok: wrote {OUT / 'accepted.json'}")


if __name__ == "__main__":
    main()
