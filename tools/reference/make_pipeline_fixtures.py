#!/usr/bin/env python3
"""Text-to-image reference: diffusers' StableDiffusionPipeline on a tiny pipeline, one run per scheduler.

Writes tests/data/pipeline/:
  model/            a diffusers pipeline folder (unet, vae, text_encoder, tokenizer, scheduler, model_index.json): diffusers'
                    tiny test components with perturbed weights, and a small CLIP vocabulary (the 512 byte symbols, the
                    first 200 merges of the real vocabulary, the two special tokens)
  single_file.safetensors   the same UNet, VAE and text encoder as one original checkpoint
  fixture.safetensors       initial latents, and per scheduler: timesteps.<s>, latents.<s> (final, before decoding),
                            image.<s> (decoded, in [0, 1]) and image_u8.<s> (diffusers' 8-bit conversion)
Noise that a sampler injects (Euler ancestral) is replaced by the project's counter-based Philox normals, written here in
numpy, so both sides use the same numbers: normal(seed, 2^20 + step, i).
"""
import json
import pathlib
import shutil
import sys

import diffusers
import numpy as np
import torch
import transformers
from diffusers import (AutoencoderKL, DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "data"
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
OUT = ROOT / "pipeline"
PROMPT, STEPS, GUIDANCE, SIZE, NOISE_SEED = "a photo of sks dog", 10, 7.5, 32, 4242
SCHEDULERS = {"pndm": PNDMScheduler, "ddim": DDIMScheduler, "euler": EulerDiscreteScheduler,
              "euler_a": EulerAncestralDiscreteScheduler, "dpm++2m": DPMSolverMultistepScheduler}


def philox_normal(seed, offset, count):
    """The project's rng::normal(seed, offset, i) for i < count (Philox4x32-10, Box-Muller in double)."""
    M = np.uint64(0xFFFFFFFF)
    i = np.arange(count, dtype=np.uint64)
    c = [i & M, i >> np.uint64(32), np.full(count, offset & 0xFFFFFFFF, np.uint64), np.full(count, offset >> 32, np.uint64)]
    k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c[0]
        p1 = np.uint64(0xCD9E8D57) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & M, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & M]
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & M, (k1 + np.uint64(0xBB67AE85)) & M
    u1 = (c[0].astype(np.float64) + 0.5) / 4294967296.0
    u2 = (c[1].astype(np.float64) + 0.5) / 4294967296.0
    return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2 * np.pi * u2)).astype(np.float32)


def use_philox_noise(scheduler_class):
    """Makes the scheduler's injected noise the project's: draw k of n values is philox_normal(NOISE_SEED, 2^20 + k, n).
    Returns the counter of draws ({"n": ...})."""
    module = __import__(scheduler_class.__module__, fromlist=["randn_tensor"])
    calls = {"n": 0}

    def philox_randn(shape, generator=None, device=None, dtype=None, layout=None, **_):
        n = int(np.prod(shape))
        out = torch.from_numpy(philox_normal(NOISE_SEED, (1 << 20) + calls["n"], n).reshape(shape))
        calls["n"] += 1
        return out.to(dtype or torch.float32)

    if hasattr(module, "randn_tensor"):
        module.randn_tensor = philox_randn
    return calls


def small_vocabulary(folder):
    real = ROOT / "clip_tokenizer"
    vocab = json.loads((real / "vocab.json").read_text(encoding="utf-8"))
    merges = (real / "merges.txt").read_text(encoding="utf-8").split("\n")[1:201]
    tokens = [t for t, i in sorted(vocab.items(), key=lambda kv: kv[1]) if i < 512]
    tokens += ["".join(m.split()) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def write_single_file(pipe):
    """The UNet, VAE and text encoder as one original checkpoint, with the name maps of the other reference scripts."""
    import make_clip_vae_fixtures as cv
    import make_unet_fixtures as un
    state = {}
    for k, v in pipe.unet.state_dict().items():
        state["model.diffusion_model." + un.original_name(k, pipe.unet.config)] = v
    cv.vae_config = dict(pipe.vae.config)
    for k, v in pipe.vae.state_dict().items():
        if ".mid_block.attentions." in k and any(x in k for x in ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")):
            v = v.reshape(*v.shape, 1, 1)
        state["first_stage_model." + cv.vae_original_name(k)] = v
    for k, v in pipe.text_encoder.state_dict().items():
        if not k.endswith("position_ids"):
            state["cond_stage_model.transformer." + k] = v
    save_file({k: v.float().contiguous() for k, v in state.items()}, str(OUT / "single_file.safetensors"))


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    torch.manual_seed(30)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8, norm_num_groups=2)
    vae = AutoencoderKL(block_out_channels=[4, 8], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=2)
    text_encoder = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=2, hidden_size=8, intermediate_size=16,
                                                layer_norm_eps=1e-05, num_attention_heads=2, num_hidden_layers=2, pad_token_id=1,
                                                vocab_size=1000))
    with torch.no_grad():
        for m in (unet, vae, text_encoder):
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    tokenizer = small_vocabulary(OUT / "model" / "tokenizer")
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(OUT / "model", safe_serialization=True)
    pipe.set_progress_bar_config(disable=True)

    # Swap schedulers the way a user does after loading the saved pipeline: from the scheduler_config.json on disk (whose
    # explicit keys, timestep_spacing "leading" among them, carry over to the other scheduler classes).
    saved = PNDMScheduler.from_pretrained(OUT / "model", subfolder="scheduler")
    g = torch.Generator().manual_seed(31)
    latents = torch.randn((1, 4, SIZE // 2, SIZE // 2), generator=g)
    tensors = {"input.latents": latents}
    for name, cls in SCHEDULERS.items():
        pipe.scheduler = cls.from_config(saved.config)
        calls = use_philox_noise(cls)
        out = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=SIZE, width=SIZE, latents=latents.clone(),
                   output_type="latent")
        final = out.images
        image = pipe.vae.decode(final / pipe.vae.config.scaling_factor).sample
        image = (image / 2 + 0.5).clamp(0, 1)
        u8 = (image.permute(0, 2, 3, 1).detach().numpy() * 255).round().astype("uint8")
        tensors[f"timesteps.{name}"] = pipe.scheduler.timesteps.to(torch.float32)
        tensors[f"latents.{name}"] = final.detach()
        tensors[f"image.{name}"] = image.detach()
        tensors[f"image_u8.{name}"] = torch.from_numpy(u8.copy())
        print(f"{name}: {len(pipe.scheduler.timesteps)} timesteps, noise draws {calls['n']}")
    # timesteps alone, for every spacing and a few step counts
    for name, cls in SCHEDULERS.items():
        for spacing in ("leading", "trailing", "linspace"):
            for steps in (7, 25, 50):
                sch = cls.from_config(saved.config, timestep_spacing=spacing)
                sch.set_timesteps(steps)
                tensors[f"schedule.{name}.{spacing}.{steps}"] = sch.timesteps.to(torch.float32)
    write_single_file(pipe)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    meta = {"producer": "tools/reference/make_pipeline_fixtures.py", "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "prompt": PROMPT, "negative_prompt": "", "steps": str(STEPS),
            "guidance_scale": str(GUIDANCE), "size": str(SIZE), "noise_seed": str(NOISE_SEED)}
    save_file(tensors, str(OUT / "fixture.safetensors"), metadata=meta)


if __name__ == "__main__":
    main()
