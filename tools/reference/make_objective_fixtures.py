#!/usr/bin/env python3
"""Training objectives beside diffusers' train_dreambooth.py: min-SNR weighting and v-prediction.

make_training_fixtures.py's step (tiny models, prior preservation batch [instance, class], AdamW lr 1e-3, clipping 1.0,
5 steps, the text encoder frozen) with the loss of train_dreambooth.py's --snr_gamma branch:
  snr_timesteps = the instance half of the timesteps; snr = compute_snr(scheduler, snr_timesteps) (diffusers.training_utils);
  weight = min(snr, gamma) / snr (+ 1 with v_prediction); instance loss = mean over the instance samples of
  weight * mse(pred_i, target_i) (reduction "none", then the per-sample mean); loss = instance + prior_loss_weight * prior
  (the prior loss unweighted); with v_prediction the target is scheduler.get_velocity(latents, noise, t).
Timesteps are drawn in [0, 200) so that SNR > gamma on most steps and the weighting is not 1.

Writes tests/data/training/objectives/<run>/ (unet/, text_encoder/, fixture.safetensors as make_training_fixtures.py's,
metadata prediction_type and snr_gamma) for three runs:
  min_snr_epsilon      SD 1.x-style tiny UNet, epsilon, snr_gamma 5
  v_prediction_sd2     SD 2.x-style tiny UNet (use_linear_projection, per-level attention heads), v_prediction, unweighted
  v_prediction_min_snr the same SD 2.x-style UNet, v_prediction, snr_gamma 5
and, for batches larger than one pair, batch2_accumulate2: train_dreambooth.py with --train_batch_size 2 and
--gradient_accumulation_steps 2 (each micro-batch [instance 1, instance 2, class 1, class 2] as its collate_fn stacks
them; accelerate divides each micro-batch's loss by 2 before backward; clipping and AdamW after the second): per micro-batch
m its latents input.latents.<m>, noise.<k>.<m> and timesteps.<k>.<m>; loss.<k> the mean of the two micro-batches'.
"""
import pathlib
import shutil
import sys

import diffusers
import torch
import torch.nn.functional as F
import transformers
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr
from safetensors.torch import save_file

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_training_fixtures import tiny_models  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "data" / "training" / "objectives"
STEPS, LR, PRIOR_LOSS_WEIGHT, MAX_GRAD_NORM, GAMMA = 5, 1e-3, 1.0, 1.0, 5.0


def run(name, sd2, prediction_type, snr_gamma):
    out = OUT / name
    if out.exists():
        shutil.rmtree(out)
    unet, text_encoder = tiny_models(out, **({"attention_head_dim": (2, 4), "use_linear_projection": True} if sd2 else {}))
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                              prediction_type=prediction_type)
    g = torch.Generator().manual_seed(51)
    ids = torch.randint(0, 1000, (2, 77), generator=g)
    latents = torch.randn((2, 4, 16, 16), generator=g) * 0.8
    tensors = {"input.ids": ids, "input.latents": latents}
    unet.train()
    text_encoder.eval()
    text_encoder.requires_grad_(False)
    params = list(unet.parameters())
    optimizer = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    for step in range(STEPS):
        noise = torch.randn(latents.shape, generator=g)
        timesteps = torch.randint(0, 200, (2,), generator=g)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        target = scheduler.get_velocity(latents, noise, timesteps) if prediction_type == "v_prediction" else noise
        pred = unet(noisy, timesteps, text_encoder(ids)[0]).sample
        pred, pred_prior = torch.chunk(pred, 2, dim=0)
        target, target_prior = torch.chunk(target, 2, dim=0)
        prior_loss = F.mse_loss(pred_prior.float(), target_prior.float(), reduction="mean")
        if snr_gamma is None:
            instance_loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
        else:
            snr_timesteps, _ = torch.chunk(timesteps, 2, dim=0)
            snr = compute_snr(scheduler, snr_timesteps)
            base_weight = torch.stack([snr, snr_gamma * torch.ones_like(snr_timesteps)], dim=1).min(dim=1)[0] / snr
            weights = base_weight + 1 if prediction_type == "v_prediction" else base_weight
            instance_loss = F.mse_loss(pred.float(), target.float(), reduction="none")
            instance_loss = (instance_loss.mean(dim=list(range(1, len(instance_loss.shape)))) * weights).mean()
            print(f"{name} step {step}: timesteps {timesteps.tolist()}, instance weight {weights.tolist()}")
        loss = instance_loss + PRIOR_LOSS_WEIGHT * prior_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad()
        tensors[f"noise.{step}"] = noise
        tensors[f"timesteps.{step}"] = timesteps
        tensors[f"loss.{step}"] = torch.tensor([loss.item(), instance_loss.item(), prior_loss.item()])
        print(f"{name} step {step}: loss {loss.item():.6f} (instance {instance_loss.item():.6f}, prior {prior_loss.item():.6f})")
    for k, v in unet.named_parameters():
        tensors["final.unet." + k] = v.detach()
    meta = {"producer": "tools/reference/make_objective_fixtures.py", "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "train_text_encoder": "False", "steps": str(STEPS), "lr": str(LR),
            "prior_loss_weight": str(PRIOR_LOSS_WEIGHT), "max_grad_norm": str(MAX_GRAD_NORM), "prediction_type": prediction_type,
            "snr_gamma": "" if snr_gamma is None else str(snr_gamma)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "fixture.safetensors"), metadata=meta)


def run_batches(name, accumulate=2, micro_batch=2):
    out = OUT / name
    if out.exists():
        shutil.rmtree(out)
    unet, text_encoder = tiny_models(out)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    g = torch.Generator().manual_seed(52)
    prompts = torch.randint(0, 1000, (2, 77), generator=g)  # [instance prompt, class prompt]
    ids = prompts.repeat_interleave(micro_batch, dim=0)  # [instance x micro_batch, class x micro_batch]
    latents = [torch.randn((2 * micro_batch, 4, 16, 16), generator=g) * 0.8 for _ in range(accumulate)]
    tensors = {"input.ids": ids}
    for m, x in enumerate(latents):
        tensors[f"input.latents.{m}"] = x
    unet.train()
    text_encoder.eval()
    text_encoder.requires_grad_(False)
    params = list(unet.parameters())
    optimizer = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    for step in range(STEPS):
        losses = torch.zeros(3)
        for m in range(accumulate):
            noise = torch.randn(latents[m].shape, generator=g)
            timesteps = torch.randint(0, 1000, (2 * micro_batch,), generator=g)
            pred = unet(scheduler.add_noise(latents[m], noise, timesteps), timesteps, text_encoder(ids)[0]).sample
            pred, pred_prior = torch.chunk(pred, 2, dim=0)
            target, target_prior = torch.chunk(noise, 2, dim=0)
            instance_loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
            prior_loss = F.mse_loss(pred_prior.float(), target_prior.float(), reduction="mean")
            loss = instance_loss + PRIOR_LOSS_WEIGHT * prior_loss
            (loss / accumulate).backward()  # accelerate's backward under gradient accumulation
            losses += torch.tensor([loss.item(), instance_loss.item(), prior_loss.item()]) / accumulate
            tensors[f"noise.{step}.{m}"] = noise
            tensors[f"timesteps.{step}.{m}"] = timesteps
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad()
        tensors[f"loss.{step}"] = losses
        print(f"{name} step {step}: loss {losses[0].item():.6f}")
    for k, v in unet.named_parameters():
        tensors["final.unet." + k] = v.detach()
    meta = {"producer": "tools/reference/make_objective_fixtures.py", "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "train_text_encoder": "False", "steps": str(STEPS), "lr": str(LR),
            "prior_loss_weight": str(PRIOR_LOSS_WEIGHT), "max_grad_norm": str(MAX_GRAD_NORM), "accumulate": str(accumulate),
            "micro_batch": str(micro_batch)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "fixture.safetensors"), metadata=meta)


if __name__ == "__main__":
    run("min_snr_epsilon", False, "epsilon", GAMMA)
    run("v_prediction_sd2", True, "v_prediction", None)
    run("v_prediction_min_snr", True, "v_prediction", GAMMA)
    run_batches("batch2_accumulate2")
