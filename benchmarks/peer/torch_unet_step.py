"""PyTorch's side of the CPU UNet benchmark (benchmarks/peer/cpu_unet_peer.sh): the SD 1.5 UNet of diffusers
(UNet2DConditionModel with SD 1.5's configuration, seeded random weights) forward + backward at batch 2, 64x64 latents,
77x768 context, as unet_bench times it: fp32, and bf16 CPU autocast (torch.autocast("cpu", dtype=torch.bfloat16): bf16
GEMMs and convolutions through oneDNN, fp32 weights). Two steps each, the second reported. Prints one JSON object.
Arguments name the modes to run (fp32, bf16_autocast; default both): on a CPU without bf16 instructions only fp32 is
worth timing.

Its own environment, from PyPI, never run in CI: pip install torch==2.5.1 diffusers==0.31.0 (any versions run; the
versions are printed)."""
import json
import sys
import time

import diffusers
import torch

SD15 = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8)


def step_seconds(model, autocast):
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 64, 64, generator=generator)
    context = torch.randn(2, 77, 768, generator=generator)
    timesteps = torch.tensor([10, 500])
    times = []
    for _ in range(2):
        model.zero_grad(set_to_none=False)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(sample, timesteps, context).sample
        forward = time.perf_counter() - start
        out.float().square().mean().backward()
        times.append((forward, time.perf_counter() - start - forward))
    return times[-1]


def main():
    torch.manual_seed(0)
    model = diffusers.UNet2DConditionModel(**SD15)
    result = {"peer": "PyTorch + diffusers", "torch": torch.__version__, "diffusers": diffusers.__version__,
              "threads": torch.get_num_threads(), "onednn_isa": torch.backends.mkldnn.is_available(),
              "parameters": sum(p.numel() for p in model.parameters())}
    modes = sys.argv[1:] or ["fp32", "bf16_autocast"]
    for name in modes:
        if name not in ("fp32", "bf16_autocast"):
            sys.exit(f"torch_unet_step.py: unknown mode {name!r} (fp32, bf16_autocast)")
        autocast = name == "bf16_autocast"
        forward, backward = step_seconds(model, autocast)
        result[name] = {"forward_seconds": round(forward, 2), "backward_seconds": round(backward, 2),
                        "step_seconds": round(forward + backward, 2)}
        print(f"{name}: {forward + backward:.2f} s", file=sys.stderr)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
