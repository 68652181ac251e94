#!/usr/bin/env python3
"""UNet2DConditionModel reference fixtures from diffusers.

For each configuration below, with a fixed seed, writes under tests/data/unet/<name>/:
  diffusers/config.json + diffusers/diffusion_pytorch_model.safetensors   a diffusers model folder
  single_file.safetensors   the same weights as an original (CompVis / LDM) checkpoint, model.diffusion_model.*
                            (not for sd15_layout, to keep the committed fixtures small: its weights alone are 4 MB)
  fixture.safetensors       inputs (sample, timesteps, encoder_hidden_states), R, the output, and the gradient of
                            sum(output * R) with respect to every parameter (grad.<name>) and to the inputs
                            (grad_input.<name>); library versions and the seed in its metadata.

The weights are perturbed (every tensor plus seeded noise) so that no tensor is zero and every path carries
gradient. The computation runs in float64 and is stored in float32, so the reference is exact to float32
rounding and the C++ float32 result is compared against the true value.

pip install -r tools/reference/requirements.txt
"""
import json
import pathlib
import shutil

import diffusers
import safetensors
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "data" / "unet"

CONFIGS = {
    # diffusers' own test UNet (tests/pipelines/stable_diffusion get_dummy_components)
    "tiny": dict(
        config=dict(block_out_channels=(4, 8), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8, norm_num_groups=2),
        sample=(2, 4, 16, 16), context=(2, 7, 8), timesteps=[10, 981], seed=0),
    # the SD 1.5 block layout at small width: 4 levels, 3 cross-attention down blocks and a plain one, cross-attention
    # mid block, mirrored up blocks, 2 layers per block, 8 heads, groups of 32, batch 2, non-square latents
    "sd15_layout": dict(
        config=dict(block_out_channels=(32, 32, 32, 32), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
                    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                    cross_attention_dim=16, attention_head_dim=8, norm_num_groups=32),
        sample=(2, 4, 16, 24), context=(2, 5, 16), timesteps=[999, 37], seed=1, single_file=False),
    # SD 2.x options: linear projections, attention_head_dim as a list, upcast_attention
    "sd2_options": dict(
        config=dict(block_out_channels=(16, 32), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=12,
                    attention_head_dim=[2, 4], use_linear_projection=True, upcast_attention=True, norm_num_groups=8),
        sample=(1, 4, 8, 8), context=(1, 3, 12), timesteps=[500], seed=2),
}


def original_name(name, config):
    """diffusers UNet parameter name -> original LDM checkpoint name (without the model.diffusion_model. prefix)."""
    layers = config["layers_per_block"]
    resnet_map = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                  ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
    parts = name.split(".")

    def resnet(rest):
        for a, b in resnet_map:
            if rest.startswith(a + "."):
                return b + rest[len(a):]
        raise KeyError(name)

    if name.startswith("time_embedding.linear_1."):
        return "time_embed.0." + parts[-1]
    if name.startswith("time_embedding.linear_2."):
        return "time_embed.2." + parts[-1]
    if name.startswith("conv_in."):
        return "input_blocks.0.0." + parts[-1]
    if name.startswith("conv_norm_out."):
        return "out.0." + parts[-1]
    if name.startswith("conv_out."):
        return "out.2." + parts[-1]
    def block_layer(block, kind, rest):  # a resnet (slot 0) or attention (slot 1) of an input / output block
        return f"{block}.0." + resnet(rest) if kind == "resnets" else f"{block}.1." + rest

    if parts[0] == "down_blocks":
        i = int(parts[1])
        kind, rest = parts[2], ".".join(parts[4:])
        if kind in ("resnets", "attentions"):
            return "input_blocks." + block_layer((layers + 1) * i + int(parts[3]) + 1, kind, rest)
        if kind == "downsamplers":
            return f"input_blocks.{(layers + 1) * (i + 1)}.0.op." + ".".join(parts[5:])
    if parts[0] == "mid_block":
        kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "resnets":
            return f"middle_block.{2 * j}." + resnet(rest)
        return "middle_block.1." + rest
    if parts[0] == "up_blocks":
        i = int(parts[1])
        kind, rest = parts[2], ".".join(parts[4:])
        if kind in ("resnets", "attentions"):
            return "output_blocks." + block_layer((layers + 1) * i + int(parts[3]), kind, rest)
        if kind == "upsamplers":
            has_attention = config["up_block_types"][i].startswith("CrossAttn")
            return f"output_blocks.{(layers + 1) * i + layers}.{2 if has_attention else 1}.conv." + ".".join(parts[5:])
    raise KeyError(name)


def make(name, spec):
    out_dir = ROOT / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    torch.manual_seed(spec["seed"])
    model = UNet2DConditionModel(**spec["config"])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out_dir / "diffusers", safe_serialization=True)
    model = model.double()

    generator = torch.Generator().manual_seed(spec["seed"] + 100)
    sample = torch.randn(spec["sample"], generator=generator, dtype=torch.float64).requires_grad_(True)
    context = torch.randn(spec["context"], generator=generator, dtype=torch.float64).requires_grad_(True)
    timesteps = torch.tensor(spec["timesteps"], dtype=torch.int64)
    # round the inputs to float32 first, so that the C++ side gets the very same values
    with torch.no_grad():
        sample.copy_(sample.float().double())
        context.copy_(context.float().double())
    out = model(sample, timesteps, encoder_hidden_states=context).sample
    R = torch.randn(out.shape, generator=generator, dtype=torch.float64).float().double()
    (out * R).sum().backward()

    tensors = {"input.sample": sample.detach().float(), "input.timesteps": timesteps,
               "input.encoder_hidden_states": context.detach().float(), "R": R.float(), "output": out.detach().float(),
               "grad_input.sample": sample.grad.float(), "grad_input.encoder_hidden_states": context.grad.float()}
    for pname, p in model.named_parameters():
        tensors["grad." + pname] = p.grad.float()
    metadata = {"producer": "tools/reference/make_unet_fixtures.py", "config": name, "seed": str(spec["seed"]),
                "torch": torch.__version__, "diffusers": diffusers.__version__, "safetensors": safetensors.__version__,
                "precision": "computed in float64, stored in float32", "loss": "sum(output * R)"}
    save_file(tensors, str(out_dir / "fixture.safetensors"), metadata=metadata)

    if not spec.get("single_file", True):
        print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters, output {tuple(out.shape)}")
        return
    state = {"model.diffusion_model." + original_name(k, model.config): v.float().contiguous()
             for k, v in model.state_dict().items()}
    assert len(state) == len(model.state_dict()), "name map is not one-to-one"
    save_file(state, str(out_dir / "single_file.safetensors"), metadata={"producer": "tools/reference/make_unet_fixtures.py"})
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{name}: {n_params} parameters, output {tuple(out.shape)}")


def main():
    for name, spec in CONFIGS.items():
        make(name, spec)


if __name__ == "__main__":
    main()
