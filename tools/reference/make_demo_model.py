#!/usr/bin/env python3
"""Trains the demo's small pretrained text-to-image model from scratch, on the CPU, in under an hour on 2 cores.

A Stable Diffusion-architecture pipeline (diffusers' UNet2DConditionModel, AutoencoderKL, transformers' CLIPTextModel
and the real CLIP tokenizer files) scaled down to 64x64 pictures and 16x16x4 latents, trained on procedurally drawn,
captioned toy objects (shapes_dataset.py: balls, boxes, stars, rings and kites in ten colours, plain, striped or
dotted, on floors of eight colours). Three stages, all seeded:
  1. the VAE learns to reconstruct the pictures (L1 + 1e-6 KL, as SD's first stage without its GAN and LPIPS terms);
     its scaling_factor is 1 / std of the latents, as SD chose 0.18215;
  2. the pictures' latents are encoded once;
  3. the UNet and the text encoder learn epsilon prediction on DDPM noise with SD 1.x's schedule (scaled_linear,
     0.00085 .. 0.012), the caption dropped 10 % of the time for classifier-free guidance; the UNet's weights are kept as
     an exponential moving average, which is what is saved.
Writes, fp16, a diffusers folder (default examples/demo-model/): unet/, vae/, text_encoder/, tokenizer/ (the real CLIP
vocabulary: links to tests/data/clip_tokenizer's files), scheduler/ (PNDM, SD 1.5's), model_index.json, README.md (the model
card, with the measured losses and times) and samples.png (a grid sampled by diffusers' StableDiffusionPipeline).

  python tools/reference/make_demo_model.py [--out DIR] [--quick]
"""
import argparse
import json
import math
import os
import pathlib
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
import shapes_dataset  # noqa: E402

SEED = 20261203
SIZE = 64
CROP = 32
VAE_CONFIG = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 3,
                  up_block_types=["UpDecoderBlock2D"] * 3, block_out_channels=[16, 32, 64], layers_per_block=1,
                  latent_channels=4, norm_num_groups=8, sample_size=SIZE)
UNET_CONFIG = dict(sample_size=SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
                   block_out_channels=[32, 64, 64],
                   down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                   up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                   cross_attention_dim=64, attention_head_dim=4, norm_num_groups=16)
TEXT_CONFIG = dict(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                   max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=64, bos_token_id=49406,
                   eos_token_id=49407, pad_token_id=49407)
SCHEDULER_CONFIG = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                        set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, prediction_type="epsilon")
PREVIEW_PROMPTS = ["a photo of a ball", "a photo of a red ball on a grey floor", "a photo of a blue box",
                   "a photo of a yellow star on a green floor", "a photo of a ring", "a photo of a pink kite",
                   "a photo of a green and white striped ball", "a photo of a purple box with yellow dots"]


def to_tensor(images):
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def cosine_lr(step, total, warmup, base):
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_vae(images, steps, batch, log):
    torch.manual_seed(SEED + 1)
    vae = AutoencoderKL(**VAE_CONFIG)
    with torch.no_grad():  # start with a narrow posterior (std e^-4), not std 1, which the reconstruction must first undo
        vae.quant_conv.bias[VAE_CONFIG["latent_channels"]:] = -8.0
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    rng = np.random.default_rng(SEED + 1)
    t0, losses = time.time(), []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, 50, 2e-3)
        # random 32x32 crops: the VAE is convolutional, and a quarter of the pixels cost a quarter of the time
        top, left = rng.integers(0, SIZE - CROP + 1, size=2)
        x = to_tensor(images[rng.integers(len(images), size=batch), top:top + CROP, left:left + CROP])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16):
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample.float()
        mse = F.mse_loss(recon, x)
        loss = F.l1_loss(recon, x) + 1e-6 * posterior.kl().float().mean()  # L1, as SD's first stage
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(mse.item())
        if step % 100 == 0 or step == steps - 1 or steps < 50:
            log(f"vae step {step}/{steps} mse {np.mean(losses[-100:]):.5f} ({time.time() - t0:.0f} s)")
    return vae, float(np.mean(losses[-100:])), time.time() - t0


@torch.no_grad()
def encode_all(vae, images, batch=256):
    means, stds = [], []
    for i in range(0, len(images), batch):
        dist = vae.encode(to_tensor(images[i:i + batch])).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def train_unet(means, stds, scaling_factor, captions, tokenizer, steps, batch, log):
    torch.manual_seed(SEED + 2)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    noise_scheduler = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items()
                                       if k not in ("skip_prk_steps", "set_alpha_to_one", "steps_offset")})
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    ids = tokenizer(captions + [""], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    empty_ids = ids[-1:]
    ids = ids[:-1]
    rng = np.random.default_rng(SEED + 2)
    t0, losses = time.time(), []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, 100, 1e-3)
        pick = torch.from_numpy(rng.integers(len(means), size=batch))
        latents = (means[pick] + stds[pick] * torch.randn_like(means[pick])) * scaling_factor
        batch_ids = ids[pick].clone()
        dropped = torch.from_numpy(rng.random(batch) < 0.1)
        batch_ids[dropped] = empty_ids
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, 1000, (batch,))
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        context = text_encoder(batch_ids)[0]
        pred = unet(noisy, timesteps, context).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in unet.state_dict().items():
                ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1 or steps < 50:
            log(f"unet step {step}/{steps} loss {np.mean(losses[-100:]):.5f} ({time.time() - t0:.0f} s)")
    unet.load_state_dict(ema)
    return unet, text_encoder, float(np.mean(losses[-200:])), time.time() - t0


# the VAE in bf16 autocast where the CPU computes bf16 natively (AVX512-BF16, AMX): 1.4x faster there; fp32 weights and
# optimizer. The UNet's small products ran slower in bf16 (1.7 s a step against 1.0 s), so it trains in fp32.
BF16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def cpu_name():
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def write_tokenizer(folder):
    folder.mkdir(parents=True, exist_ok=True)
    source = ROOT / "tests" / "data" / "clip_tokenizer"
    for name in ("vocab.json", "merges.txt"):  # inside the repository a link, not a second copy of 1.5 MB
        target = os.path.relpath(source / name, folder.resolve())
        if folder.resolve().is_relative_to(ROOT):
            os.symlink(target, folder / name)
        else:
            shutil.copyfile(source / name, folder / name)
    special = {"content": None, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": dict(special, content="<|startoftext|>"), "eos_token": dict(special, content="<|endoftext|>"),
        "pad_token": "<|endoftext|>", "unk_token": dict(special, content="<|endoftext|>")}, indent=2) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "model_max_length": 77, "clean_up_tokenization_spaces": False,
        "errors": "replace", "tokenizer_class": "CLIPTokenizer"}, indent=2) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "examples" / "demo-model")
    parser.add_argument("--images", type=int, default=16000)
    parser.add_argument("--vae-steps", type=int, default=2400)
    parser.add_argument("--unet-steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=pathlib.Path, default=ROOT / "out" / "demo-model-work",
                        help="where the pictures and the trained VAE are kept, so that a rerun skips them")
    parser.add_argument("--vae-only", action="store_true", help="train the VAE, show its reconstructions, stop")
    parser.add_argument("--quick", action="store_true", help="a few steps of each stage, to check the script runs")
    args = parser.parse_args()
    if args.quick:
        args.images, args.vae_steps, args.unet_steps = 512, 10, 10
    torch.set_num_threads(args.threads)
    log_lines = []

    def log(line):
        print(line, flush=True)
        log_lines.append(line)

    start = time.time()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    pictures = work / f"pictures-{args.images}.npz"
    pictures_cached = pictures.exists()
    if pictures.exists():  # a stage a previous run of the same settings finished
        saved = np.load(pictures)
        images, captions, draw_seconds = saved["images"], [str(c) for c in saved["captions"]], float(saved["seconds"]) if "seconds" in saved else 0.0
    else:
        images, captions = shapes_dataset.draw_set(SEED, args.images, SIZE)
        draw_seconds = time.time() - start
        np.savez(pictures, images=images, captions=np.array(captions), seconds=draw_seconds)
    log(f"drew {len(images)} pictures in {draw_seconds:.0f} s, e.g. '{captions[0]}', '{captions[1]}'")
    vae_dir = work / f"vae-{args.images}-{args.vae_steps}"
    vae_cached = (vae_dir / "config.json").exists()
    if (vae_dir / "config.json").exists():
        vae = AutoencoderKL.from_pretrained(vae_dir)
        vae_mse, vae_seconds = json.loads((vae_dir / "stats.json").read_text()).values()
        log(f"vae from {vae_dir} (mse {vae_mse:.5f})")
    else:
        vae, vae_mse, vae_seconds = train_vae(images, args.vae_steps, 32, log)
        vae.save_pretrained(vae_dir)
        (vae_dir / "stats.json").write_text(json.dumps({"mse": vae_mse, "seconds": vae_seconds}))
    if args.vae_only:  # originals over reconstructions, for a look
        with torch.no_grad():
            x = to_tensor(images[:8])
            recon = vae.decode(vae.encode(x).latent_dist.sample()).sample
        rows = [np.concatenate(list(images[:8]), axis=1),
                np.concatenate(list(((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()), axis=1)]
        from PIL import Image
        Image.fromarray(np.concatenate(rows, axis=0)).save(work / "vae_reconstructions.png")
        log(f"full-size mse {F.mse_loss(recon, x).item():.5f}; wrote {work / 'vae_reconstructions.png'}")
        return
    vae.eval()
    means, stds = encode_all(vae, images)
    scaling_factor = float(1.0 / (means + stds * torch.randn_like(means)).std())
    vae.register_to_config(scaling_factor=scaling_factor)
    log(f"latents {tuple(means.shape)}, scaling_factor {scaling_factor:.5f}")
    tokenizer = CLIPTokenizer(str(ROOT / "tests/data/clip_tokenizer/vocab.json"),
                              str(ROOT / "tests/data/clip_tokenizer/merges.txt"))
    unet, text_encoder, unet_loss, unet_seconds = train_unet(means, stds, scaling_factor, captions, tokenizer, args.unet_steps,
                                                             args.batch, log)
    unet.eval()
    text_encoder.eval()

    out = args.out
    if out.exists():
        shutil.rmtree(out)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=PNDMScheduler(**SCHEDULER_CONFIG), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out)
    for name, model in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
        model.to(torch.float16).save_pretrained(out / name)
        model.to(torch.float32)
    shutil.rmtree(out / "tokenizer")
    write_tokenizer(out / "tokenizer")

    # a preview grid from diffusers' own pipeline on the saved (fp16-rounded) weights
    pipe = StableDiffusionPipeline.from_pretrained(out, torch_dtype=torch.float32, safety_checker=None)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for prompt in PREVIEW_PROMPTS:
        result = pipe(prompt, height=SIZE, width=SIZE, num_inference_steps=20, guidance_scale=4.0,
                      num_images_per_prompt=4, generator=generator, output_type="np").images
        rows.append(np.concatenate(list(result), axis=1))
    grid = (np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)
    from PIL import Image
    Image.fromarray(grid).save(out / "samples.png", optimize=True)

    # the time from scratch: this run's, plus the stages an earlier run did for it
    total = time.time() - start + (draw_seconds if pictures_cached else 0) + (vae_seconds if vae_cached else 0)
    parameters = {name: sum(p.numel() for p in m.parameters()) for name, m in
                  (("unet", unet), ("vae", vae), ("text_encoder", text_encoder))}
    card = f"""# demo-model: a small Stable Diffusion-architecture pipeline that draws toy objects

The pretrained model the DreamBooth demo (`tools/run.sh`) fine-tunes. Made by `tools/reference/make_demo_model.py`
(diffusers, transformers and PyTorch on the CPU, seed {SEED}), from scratch, in {total / 60:.0f} minutes on
{args.threads} CPU threads of an {cpu_name()} (the VAE in {"bf16 autocast" if BF16 else "fp32"}, the UNet and text encoder in fp32; fp32
weights and optimizer state). Weights saved in fp16.

- **Architecture**: diffusers' `UNet2DConditionModel` ({parameters['unet'] / 1e6:.2f} M parameters, 16x16x4 latents),
  `AutoencoderKL` ({parameters['vae'] / 1e6:.2f} M, 64x64 pictures, downsampling 4, scaling_factor
  {scaling_factor:.5f}), transformers' `CLIPTextModel` ({parameters['text_encoder'] / 1e6:.2f} M, 3 layers of
  width 64) with the real CLIP vocabulary, SD 1.5's PNDM scheduler.
- **Training data**: {args.images} procedurally drawn 64x64 pictures (`tools/reference/shapes_dataset.py`): a ball, box,
  star, ring or kite in one of ten colours, plain, striped or dotted, at a random size and position on a floor of one
  of eight colours, captioned as drawn ("a photo of a red ball on a grey floor", "a photo of a kite", ...).
- **Training**: VAE {args.vae_steps} steps of 32 random 32x32 crops (L1 + 1e-6 KL, final MSE {vae_mse:.5f} on [-1, 1] pixels,
  {vae_seconds / 60:.1f} min); UNet and text encoder together {args.unet_steps} steps of {args.batch} (epsilon
  prediction, captions dropped 10 %, AdamW 1e-3 with cosine decay, EMA 0.999 of the UNet; final loss
  {unet_loss:.4f}, {unet_seconds / 60:.1f} min).
- **What it can do**: "a photo of a <class>" with a colour, pattern and floor draws that object; `samples.png` shows
  diffusers' sampling of the prompts {PREVIEW_PROMPTS} (20 PNDM steps, guidance 4, four each).
- **What it has never seen**: the demo's subject, an orange ball with one white band and a dark eye.
- **Licence**: the weights are made from procedurally generated pictures only, and are released with this project's
  code; the CLIP vocabulary files are OpenAI's (MIT licence, tests/data/clip_tokenizer/LICENSE).
"""
    (out / "README.md").write_text(card)
    (out / "training_log.txt").write_text("\n".join(log_lines) + "\n")
    log(f"wrote {out} in {total:.0f} s")


if __name__ == "__main__":
    main()
