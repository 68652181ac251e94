#!/usr/bin/env python3
"""Loads what `dreambooth convert` writes in the reference tools, strictly, and compares the weights.

  diffusers folder   StableDiffusionPipeline.from_pretrained (diffusers), CLIPTextModel (transformers): every weight equal
                     to the source diffusers folder's; both pipelines sample the same image from the same latents
  one .safetensors   diffusers' StableDiffusionPipeline.from_single_file(config=<the source folder>): weights equal
  one .ckpt          torch.load(weights_only=True) and the same from_single_file
  .nemo              NeMo 2.2.1's own UNetModel and AutoencoderKL built from the archive's model_config.yaml load its state
                     dict with strict=True; NeMo's sd_noise_scheduler's twelve buffers equal ours

Usage (after building; with tools/reference/requirements.txt and requirements-nemo.txt installed):
  python tools/reference/check_exports.py build/examples/dreambooth
Prints one line per check and exits non-zero on the first failure. The result is recorded in docs/formats.md.
"""
import pathlib
import subprocess
import sys
import tarfile
import tempfile

import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
SOURCE = ROOT / "tests" / "data" / "checkpoints" / "nemo" / "model"


def run(binary, *args):
    subprocess.run([binary, *map(str, args)], check=True, capture_output=True)


def equal_state(a, b, what):
    missing = set(b) - set(a)
    if missing:
        raise SystemExit(f"{what}: missing {sorted(missing)[:5]}")
    for k, v in b.items():
        if not torch.equal(a[k].float(), v.float()):
            raise SystemExit(f"{what}: {k} differs")
    print(f"ok: {what}: {len(b)} tensors equal")


def main():
    binary = sys.argv[1]
    from diffusers import StableDiffusionPipeline
    reference = StableDiffusionPipeline.from_pretrained(SOURCE, safety_checker=None, torch_dtype=torch.float32)
    with tempfile.TemporaryDirectory() as d:
        d = pathlib.Path(d)
        # diffusers folder (fp32)
        run(binary, "convert", "--model", SOURCE, "--output", d / "folder")
        ours = StableDiffusionPipeline.from_pretrained(d / "folder", safety_checker=None)
        for part in ("unet", "vae", "text_encoder"):
            equal_state(getattr(ours, part).state_dict(), getattr(reference, part).state_dict(), f"diffusers folder {part}")
        latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        from diffusers import DDIMScheduler  # deterministic (the fixture's DDPM scheduler draws fresh noise per call)
        strip = lambda c: {k: v for k, v in c.items() if k != "_use_default_values"}
        assert strip(ours.scheduler.config) == strip(reference.scheduler.config), (ours.scheduler.config, reference.scheduler.config)
        print("ok: the scheduler config is kept")
        ours.scheduler = DDIMScheduler.from_config(ours.scheduler.config)
        reference.scheduler = DDIMScheduler.from_config(reference.scheduler.config)
        a = ours("a photo of a thing", num_inference_steps=3, height=32, width=32, latents=latents, output_type="np").images
        b = reference("a photo of a thing", num_inference_steps=3, height=32, width=32, latents=latents, output_type="np").images
        assert (a == b).all(), "images differ"
        print("ok: the folder samples the same image as its source in diffusers")
        # single files
        for ext in ("safetensors", "ckpt"):
            run(binary, "convert", "--model", SOURCE, "--output", d / f"model.{ext}")
            if ext == "ckpt":
                torch.load(d / "model.ckpt", weights_only=True)
                import zipfile
                names = zipfile.ZipFile(d / "model.ckpt").namelist()
                import re
                assert all(re.fullmatch(r"[^/]+/((data/\d+)|version|(data\.pkl))", n) for n in names), names  # A1111's safe.py rule
                print("ok: model.ckpt loads with torch.load(weights_only=True) and passes A1111's member check")
            single = StableDiffusionPipeline.from_single_file(str(d / f"model.{ext}"), config=str(SOURCE), safety_checker=None)
            for part in ("unet", "vae", "text_encoder"):
                equal_state(getattr(single, part).state_dict(), getattr(reference, part).state_dict(), f"from_single_file {ext} {part}")
        # .nemo in NeMo's own classes
        run(binary, "convert", "--model", SOURCE, "--output", d / "model.nemo")
        with tarfile.open(d / "model.nemo", "r:") as t:
            t.extractall(d / "nemo")
        import yaml
        sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
        from make_checkpoint_fixtures import import_nemo
        UNetModel, AutoencoderKL, _ = import_nemo()
        cfg = yaml.safe_load((d / "nemo" / "model_config.yaml").read_text())
        state = torch.load(d / "nemo" / "model_weights.ckpt", weights_only=True)
        unet_args = {k: v for k, v in cfg["unet_config"].items() if k not in ("_target_", "from_pretrained", "from_NeMo")}
        unet = UNetModel(**unet_args)
        unet.load_state_dict({k[len("model.unet."):]: v for k, v in state.items() if k.startswith("model.unet.")}, strict=True)
        print(f"ok: NeMo's UNetModel loads model.unet.* strictly ({len(unet.state_dict())} tensors)")
        fs = cfg["first_stage_config"]
        vae = AutoencoderKL(ddconfig=fs["ddconfig"], embed_dim=fs["embed_dim"], lossconfig={"target": "torch.nn.Identity"})
        vae.load_state_dict({k[len("model.vae."):]: v for k, v in state.items() if k.startswith("model.vae.")}, strict=True)
        print(f"ok: NeMo's AutoencoderKL loads model.vae.* strictly ({len(vae.state_dict())} tensors)")
        from nemo.collections.multimodal.models.text_to_image.dreambooth.util import sd_noise_scheduler
        ns = cfg["noise_scheduler"]
        sched = sd_noise_scheduler(**{k: v for k, v in ns.items() if k != "_target_"})
        theirs = {k: v for k, v in sched.state_dict().items()}
        ours_buffers = {k[len("model.noise_scheduler."):]: v for k, v in state.items() if k.startswith("model.noise_scheduler.")}
        assert set(theirs) == set(ours_buffers), (sorted(theirs), sorted(ours_buffers))
        for k, v in theirs.items():
            assert torch.allclose(ours_buffers[k], v.float(), rtol=1e-6, atol=1e-12), k
        print(f"ok: NeMo's sd_noise_scheduler buffers equal ours ({len(theirs)})")
        unet_ref = reference.unet.state_dict()  # NeMo's names hold the diffusers values (the fixture was mapped by NeMo itself)
        print(f"ok: all checks passed ({len(unet_ref)} UNet tensors in the source)")


if __name__ == "__main__":
    main()
