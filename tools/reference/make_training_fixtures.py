#!/usr/bin/env python3
"""DreamBooth training reference: diffusers' train_dreambooth.py computation on a tiny UNet and text encoder.

For each of two runs (text encoder frozen; text encoder trained), with prior preservation (batch = [instance, class]),
writes tests/data/training/<run>/: unet/ and text_encoder/ (the initial weights), and fixture.safetensors with the
instance and class token ids, the latents batch, and per step k the injected noise.<k> and timesteps.<k>, the loss.<k>
(total, instance, prior), and the final parameters final.unet.<name> / final.text_encoder.<name>.
The step follows train_dreambooth.py: noisy = add_noise(latents, noise, t); pred = unet(noisy, t, text_encoder(ids)[0]);
pred, pred_prior = chunk(2); loss = mse(pred, noise) + w * mse(pred_prior, noise_prior) in fp32; backward;
clip_grad_norm_(params, 1.0); AdamW (lr 1e-3, betas (0.9, 0.999), weight decay 1e-2, eps 1e-8); constant lr.
"""
import pathlib
import shutil

import diffusers
import torch
import transformers
from diffusers import DDPMScheduler, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "data" / "training"
STEPS, LR, PRIOR_LOSS_WEIGHT, MAX_GRAD_NORM = 5, 1e-3, 1.0, 1.0


def tiny_models(out, **unet_extra):
    """The tiny UNet and text encoder (seed 50, every parameter + 0.1 * randn), saved into out/unet and out/text_encoder;
    unet_extra: more UNet2DConditionModel arguments (an SD 2.x-style UNet)."""
    torch.manual_seed(50)
    unet = UNet2DConditionModel(block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8, norm_num_groups=2,
                                **unet_extra)
    text_encoder = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=2, hidden_size=8, intermediate_size=16, layer_norm_eps=1e-05,
                                                num_attention_heads=2, num_hidden_layers=2, pad_token_id=1, vocab_size=1000))
    with torch.no_grad():
        for m in (unet, text_encoder):
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    return unet, text_encoder


def train_steps(unet, text_encoder, scheduler, ids, latents, g, params, tensors, name, steps=STEPS, lr=LR, after_step=None):
    """train_dreambooth.py's steps with prior preservation over `params`; records noise.<k>, timesteps.<k>, loss.<k>;
    after_step(k), when given, runs after each optimizer step (make_ema_fixtures.py's EMA updates)."""
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    for step in range(steps):
        noise = torch.randn(latents.shape, generator=g)
        timesteps = torch.randint(0, 1000, (2,), generator=g)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        encoder_hidden_states = text_encoder(ids)[0]
        pred = unet(noisy, timesteps, encoder_hidden_states).sample
        pred, pred_prior = torch.chunk(pred, 2, dim=0)
        target, target_prior = torch.chunk(noise, 2, dim=0)
        prior_loss = torch.nn.functional.mse_loss(pred_prior.float(), target_prior.float(), reduction="mean")
        instance_loss = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="mean")
        loss = instance_loss + PRIOR_LOSS_WEIGHT * prior_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad()
        if after_step:
            after_step(step)
        tensors[f"noise.{step}"] = noise
        tensors[f"timesteps.{step}"] = timesteps
        tensors[f"loss.{step}"] = torch.tensor([loss.item(), instance_loss.item(), prior_loss.item()])
        print(f"{name} step {step}: loss {loss.item():.6f} (instance {instance_loss.item():.6f}, prior {prior_loss.item():.6f})")


def training_inputs():
    """SD 1.x's training schedule, the generator (seed 51) that then draws each step's noise and timesteps, the prompt ids
    [instance, class] and the latents batch; the fixture's tensors so far."""
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    g = torch.Generator().manual_seed(51)
    ids = torch.randint(0, 1000, (2, 77), generator=g)  # [instance prompt, class prompt]
    latents = torch.randn((2, 4, 16, 16), generator=g) * 0.8
    return scheduler, g, ids, latents, {"input.ids": ids, "input.latents": latents}


def run(name, train_text_encoder):
    out = OUT / name
    if out.exists():
        shutil.rmtree(out)
    unet, text_encoder = tiny_models(out)
    scheduler, g, ids, latents, tensors = training_inputs()
    unet.train()
    text_encoder.train() if train_text_encoder else text_encoder.eval()
    text_encoder.requires_grad_(train_text_encoder)
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if train_text_encoder else [])
    train_steps(unet, text_encoder, scheduler, ids, latents, g, params, tensors, name)
    for k, v in unet.named_parameters():
        tensors["final.unet." + k] = v.detach()
    for k, v in text_encoder.named_parameters():
        tensors["final.text_encoder." + k] = v.detach()
    meta = {"producer": "tools/reference/make_training_fixtures.py", "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "train_text_encoder": str(train_text_encoder), "steps": str(STEPS), "lr": str(LR),
            "prior_loss_weight": str(PRIOR_LOSS_WEIGHT), "max_grad_norm": str(MAX_GRAD_NORM)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "fixture.safetensors"), metadata=meta)


if __name__ == "__main__":
    run("frozen_text_encoder", False)
    run("trained_text_encoder", True)
