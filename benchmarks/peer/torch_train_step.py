"""diffusers' side of train_step_bench: the SD 1.5 DreamBooth step as diffusers' train_dreambooth.py (and, with --lora,
train_dreambooth_lora.py) trains it, on the same batch as benchmarks/train_step_bench.cpp: SD 1.5's UNet2DConditionModel
and CLIP ViT-L/14 text encoder (seeded random weights), batch 2 with prior preservation (one instance, one class latent,
64x64 as from the cache), the frozen text encoder run every step, epsilon prediction, loss = mse(instance) + 1.0 *
mse(prior) in fp32, gradient clipping at 1.0, AdamW (5e-6, weight decay 1e-2; LoRA 1e-4), gradients zeroed, not freed
(the scripts' default). Prints one JSON object: the median seconds per step over the timed steps, the effective TFLOP/s
at 4.82 TFLOP per step (the count train_step_bench uses), and on a GPU the peak memory allocated and reserved.

  torch_train_step.py [--device cuda|cpu] [--precision bf16|fp32] [--checkpointing] [--lora RANK] [--warmup N]
                      [--steps N] [--profile] [--tiny]

--precision bf16 (the default): the UNet's forward under torch.autocast(bf16) with fp32 weights, the frozen text encoder
held in bf16, as the scripts do with mixed_precision=bf16 (LoRA: the frozen UNet held in bf16 too, the adapters fp32).
--lora RANK: peft adapters of rank RANK, alpha RANK, on to_q, to_k, to_v and to_out.0 (the LoRA script's default).
--profile: one more step under torch.profiler; the 15 op kinds that took the most device (or CPU) time.
--tiny: a small UNet and text encoder, for checking the script on a CPU (no FLOP figure).

Runs where PyTorch, transformers and diffusers are installed (on the GPU machine: diffusers carried as a wheel,
tools/gpu/pack.sh); never in CI."""
import argparse
import json
import statistics
import sys
import time

import diffusers
import torch
import transformers

from torch_unet_step import SD15

UNET_TFLOP_PER_STEP = 4.82
VIT_L14 = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)
TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                 cross_attention_dim=32, attention_head_dim=8, norm_num_groups=16)
TINY_CLIP = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=32)


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--checkpointing", action="store_true", help="UNet gradient checkpointing")
    p.add_argument("--lora", type=int, default=0, metavar="RANK", help="LoRA DreamBooth with adapters of this rank")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--tiny", action="store_true")
    return p.parse_args()


def build(args, device):
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**(TINY_UNET if args.tiny else SD15))
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(**(TINY_CLIP if args.tiny else VIT_L14)))
    weight_dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    text_encoder.requires_grad_(False)
    text_encoder.to(device, dtype=weight_dtype)
    if args.lora:
        import peft
        from diffusers.training_utils import cast_training_params

        unet.requires_grad_(False)
        unet.to(device, dtype=weight_dtype)
        unet.add_adapter(peft.LoraConfig(r=args.lora, lora_alpha=args.lora, init_lora_weights="gaussian",
                                         target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
        cast_training_params(unet, dtype=torch.float32)  # the adapters in fp32, as the LoRA script keeps them
        lr = 1e-4
    else:
        unet.to(device)
        lr = 5e-6
    if args.checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    return unet, text_encoder, params, optimizer


def main():
    args = parse()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("torch_train_step.py: --device cuda, but PyTorch sees no GPU")
    unet, text_encoder, params, optimizer = build(args, device)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                        beta_schedule="scaled_linear")
    side = unet.config.sample_size
    generator = torch.Generator().manual_seed(3)
    latents = (torch.randn(2, 4, side, side, generator=generator) * 0.18215).to(device)
    ids = torch.full((2, 77), 49407, dtype=torch.long)
    ids[:, 0] = 49406
    ids = ids.to(device)
    autocast = args.precision == "bf16"

    def step(s):
        noise = torch.randn(2, 4, side, side, generator=torch.Generator().manual_seed(100 + s)).to(device)
        timesteps = torch.tensor([(100 + 300 * s) % 1000, (900 - 200 * s) % 1000], device=device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        with torch.no_grad():
            context = text_encoder(ids)[0]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            prediction = unet(noisy, timesteps, context).sample
        instance, prior = prediction.float().chunk(2)
        target_instance, target_prior = noise.float().chunk(2)
        loss = torch.nn.functional.mse_loss(instance, target_instance) + 1.0 * torch.nn.functional.mse_loss(prior, target_prior)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        return loss

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, loss = [], None
    for s in range(args.warmup + args.steps):
        synchronize()
        start = time.perf_counter()
        loss = step(s).item()  # .item() waits for the step's kernels
        synchronize()
        times.append(time.perf_counter() - start)
        print(f"step {s}{' (warm-up)' if s < args.warmup else ''}: {times[-1]:.4f} s, loss {loss:.4f}", file=sys.stderr)
    timed = times[args.warmup:]
    median = statistics.median(timed)
    result = {"peer": "PyTorch + diffusers", "torch": torch.__version__, "diffusers": diffusers.__version__,
              "transformers": transformers.__version__, "device": args.device,
              "device_description": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "model": ("tiny UNet + CLIP" if args.tiny else "SD 1.5 UNet + CLIP ViT-L/14 (random weights)") +
                       (f", LoRA rank {args.lora} on the attention projections" if args.lora else ", the UNet trained"),
              "precision": "bf16 autocast" if autocast else "fp32", "gradient_checkpointing": args.checkpointing,
              "batch": 2, "latent_size": side, "trained_parameters": sum(p.numel() for p in params),
              "warmup_steps": args.warmup, "timed_steps": args.steps, "first_step_seconds": round(times[0], 4),
              "step_seconds": round(median, 4), "step_seconds_each": [round(t, 4) for t in timed], "loss": loss}
    if not args.tiny:
        result["unet_tflop_per_step"] = UNET_TFLOP_PER_STEP
        result["effective_tflops"] = round(UNET_TFLOP_PER_STEP / median, 2)
    if device.type == "cuda":
        result["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        result["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            step(args.warmup + args.steps)
            synchronize()
        key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)[:15]
        result["profile_top_ops_seconds"] = {e.key: round(getattr(e, key, 0) / 1e6, 4) for e in events}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
