#!/usr/bin/env python3
"""CLIPTextModel (transformers) and AutoencoderKL (diffusers) reference fixtures.

tests/data/clip/<name>/: text_encoder/ (config.json + model.safetensors), single_file.safetensors
(cond_stage_model.transformer.* keys), fixture.safetensors: input.ids, R, last_hidden_state, hidden_state.<i> for
every layer (output_hidden_states), grad.<parameter> of sum(last_hidden_state * R).

tests/data/vae/<name>/: vae/ (config.json + diffusion_pytorch_model.safetensors), single_file.safetensors
(first_stage_model.* keys, attention projections as 1x1 convolutions; tiny only), fixture.safetensors: input.image,
encoder.moments ([mean, logvar] after quant_conv, logvar clamped as diffusers does), input.latents, decoder.output.

Weights perturbed with seeded noise; everything computed in float64 and stored in float32.
pip install -r tools/reference/requirements.txt
"""
import pathlib
import shutil

import diffusers
import safetensors
import torch
import transformers
from diffusers import AutoencoderKL
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "data"
VERSIONS = {"torch": torch.__version__, "transformers": transformers.__version__, "diffusers": diffusers.__version__,
            "safetensors": safetensors.__version__, "precision": "computed in float64, stored in float32"}

CLIP_CONFIGS = {
    # diffusers' test text encoder (tests/pipelines/stable_diffusion get_dummy_components)
    "tiny": dict(config=dict(bos_token_id=0, eos_token_id=2, hidden_size=8, intermediate_size=16, layer_norm_eps=1e-05,
                             num_attention_heads=2, num_hidden_layers=2, pad_token_id=1, vocab_size=1000),
                 batch=2, seq=77, seed=10),
    # the older, larger test variant, with exact gelu as OpenCLIP-based encoders use
    "gelu": dict(config=dict(bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
                             num_attention_heads=4, num_hidden_layers=5, pad_token_id=1, vocab_size=1000, hidden_act="gelu"),
                 batch=2, seq=77, seed=11),
}

VAE_CONFIGS = {
    # diffusers' test VAE
    "tiny": dict(config=dict(block_out_channels=[4, 8], in_channels=3, out_channels=3,
                             down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                             up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], latent_channels=4, norm_num_groups=2,
                             sample_size=32),
                 image=(2, 3, 32, 32), seed=20),
    # SD's layout (4 levels, 2 layers per block, groups of 32) at small width, non-square
    "sd_layout": dict(config=dict(block_out_channels=[32, 32, 32, 32], in_channels=3, out_channels=3,
                                  down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                                  latent_channels=4, layers_per_block=2, norm_num_groups=32, sample_size=64),
                      image=(1, 3, 32, 48), seed=21, single_file=False),
}


def perturb(model, scale=0.1):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)


def make_clip(name, spec):
    out = ROOT / "clip" / name
    if out.exists():
        shutil.rmtree(out)
    torch.manual_seed(spec["seed"])
    model = CLIPTextModel(CLIPTextConfig(**spec["config"]))
    perturb(model)
    model.save_pretrained(out / "text_encoder", safe_serialization=True)
    model = model.double()
    g = torch.Generator().manual_seed(spec["seed"] + 100)
    ids = torch.randint(0, spec["config"]["vocab_size"], (spec["batch"], spec["seq"]), generator=g)
    torch.set_default_dtype(torch.float64)  # transformers builds the causal mask in the default dtype
    result = model(ids, output_hidden_states=True)
    torch.set_default_dtype(torch.float32)
    last = result.last_hidden_state
    R = torch.randn(last.shape, generator=g, dtype=torch.float64).float().double()
    (last * R).sum().backward()
    tensors = {"input.ids": ids.to(torch.int64), "R": R.float(), "last_hidden_state": last.detach().float()}
    for i, h in enumerate(result.hidden_states):
        tensors[f"hidden_state.{i}"] = h.detach().float()
    for pname, p in model.named_parameters():
        tensors["grad." + pname] = p.grad.float()
    save_file(tensors, str(out / "fixture.safetensors"), metadata=dict(VERSIONS, producer="tools/reference/make_clip_vae_fixtures.py",
                                                                       seed=str(spec["seed"]), loss="sum(last_hidden_state * R)"))
    state = {"cond_stage_model.transformer." + k: v.float().contiguous() for k, v in model.state_dict().items()
             if not k.endswith("position_ids")}
    save_file(state, str(out / "single_file.safetensors"))
    print(f"clip {name}: {sum(p.numel() for p in model.parameters())} parameters")


def vae_original_name(name):
    """diffusers AutoencoderKL name -> original first_stage_model name (without the prefix)."""
    p = name.split(".")
    repl = {"conv_shortcut": "nin_shortcut", "conv_norm_out": "norm_out"}
    if p[0] in ("encoder", "decoder"):
        side = p[0]
        if p[1] in ("down_blocks", "up_blocks"):
            # the encoder's down.I, the decoder's up.I counted from the lowest resolution
            stage, i = ("down", p[2]) if p[1] == "down_blocks" else ("up", len(vae_config["block_out_channels"]) - 1 - int(p[2]))
            if p[3] == "resnets":
                return f"{side}.{stage}.{i}.block.{p[4]}." + ".".join(repl.get(x, x) for x in p[5:])
            if p[3] in ("downsamplers", "upsamplers"):
                return f"{side}.{stage}.{i}.{stage}sample.{'.'.join(p[5:])}"
        if p[1] == "mid_block":
            if p[2] == "resnets":
                return f"{side}.mid.block_{int(p[3]) + 1}.{'.'.join(p[4:])}"
            if p[2] == "attentions":
                attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
                rest = p[4:]
                if rest[0] == "to_out":
                    rest = ["to_out"] + rest[2:]
                return f"{side}.mid.attn_1.{attn[rest[0]]}.{'.'.join(rest[1:])}"
        return side + "." + ".".join(repl.get(x, x) for x in p[1:])
    return name  # quant_conv, post_quant_conv


vae_config = None


def make_vae(name, spec):
    global vae_config
    vae_config = spec["config"]
    out = ROOT / "vae" / name
    if out.exists():
        shutil.rmtree(out)
    torch.manual_seed(spec["seed"])
    model = AutoencoderKL(**spec["config"])
    perturb(model, 0.05)
    model.save_pretrained(out / "vae", safe_serialization=True)
    model = model.double()
    g = torch.Generator().manual_seed(spec["seed"] + 100)
    image = (torch.rand(spec["image"], generator=g, dtype=torch.float64) * 2 - 1).float().double()
    with torch.no_grad():
        dist = model.encode(image).latent_dist
        moments = torch.cat([dist.mean, dist.logvar], dim=1)  # logvar clamped to [-30, 20] by DiagonalGaussianDistribution
        latents = torch.randn(dist.mean.shape, generator=g, dtype=torch.float64).float().double()
        decoded = model.decode(latents).sample
    tensors = {"input.image": image.float(), "encoder.moments": moments.float().contiguous(), "input.latents": latents.float(),
               "decoder.output": decoded.float()}
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(out / "fixture.safetensors"), metadata=dict(VERSIONS, producer="tools/reference/make_clip_vae_fixtures.py",
                                                                       seed=str(spec["seed"])))
    if not spec.get("single_file", True):  # keep the committed fixtures small; tiny covers the single-file layout
        print(f"vae {name}: {sum(p.numel() for p in model.parameters())} parameters, latents {tuple(dist.mean.shape)}")
        return
    state = {}
    for k, v in model.state_dict().items():
        v = v.float().contiguous()
        if ".mid_block.attentions." in k and any(s in k for s in ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")):
            v = v.reshape(*v.shape, 1, 1)  # the original stores them as 1x1 convolutions
        state["first_stage_model." + vae_original_name(k)] = v
    assert len(state) == len(model.state_dict())
    save_file(state, str(out / "single_file.safetensors"))
    print(f"vae {name}: {sum(p.numel() for p in model.parameters())} parameters, latents {tuple(dist.mean.shape)}")


def main():
    for name, spec in CLIP_CONFIGS.items():
        make_clip(name, spec)
    for name, spec in VAE_CONFIGS.items():
        make_vae(name, spec)


if __name__ == "__main__":
    main()
