#!/usr/bin/env python3
"""Checkpoint-format fixtures: the files other tools write, made by those tools, for the readers and writers to match.

Writes tests/data/checkpoints/:
  sd1/              a tiny pipeline with Stable Diffusion 1.x's structure (model/, a diffusers folder) and diffusers' own
                    diffusers->original conversion of it (scripts/convert_diffusers_to_original_stable_diffusion.py of
                    diffusers v0.31.0, which assumes that structure):
                      original.ckpt              torch.save({"state_dict": ...}) in torch's zip format
                      original.safetensors       --use_safetensors
                      original_fp16.safetensors  --half --use_safetensors
                      original_legacy.ckpt       the same state dict, torch's legacy (pre-1.6) format
                      original_ema.ckpt          the .ckpt plus a UNet EMA copy named as CompVis' LitEma names it
                                                 (model_ema.<name without dots>, values = 0.5 x the weights; synthetic)
  sd2/              the same with SD 2.x's options (linear projections, an OpenCLIP-shaped 23-layer gelu text encoder) and
                    its conversion by the same script (original.ckpt, OpenCLIP names with fused in_proj weights)
  nemo/             a tiny pipeline NeMo's own classes can build (GroupNorm of 32), as a diffusers folder (model/) and as NeMo
                    writes it:
                      dreambooth.nemo   MegatronDreamBooth's state dict (model.unet / model.vae / model.text_encoder with a
                                        Megatron CLIP whose q, k, v are stacked [3, heads, head_dim], megatron_legacy) and a
                                        model_config.yaml as in NeMo's dreambooth.yaml, tar with "./" members
                      sd.nemo           MegatronLatentDiffusion's state dict (model.model.diffusion_model / ...first_stage_model /
                                        ...cond_stage_model.model, q, k, v interleaved per head, the CLIP config embedded)
                      clip.nemo         the Megatron CLIP model itself, its tokenizer files as nemo: artifacts
                      lightning_legacy_norms.ckpt   a Lightning checkpoint of the DreamBooth model's UNet with NeMo's pre-2024
                                        transformer-block names (norm1/2/3), its hyper_parameters holding an OmegaConf DictConfig
                    The UNet and VAE names and values come from NeMo's own UNetModel and AutoencoderKL (their from_pretrained
                    mappings, NeMo 2.2.1); the Megatron CLIP names follow NeMo's CLIP converter.
  nemo/images/ + nemo/images_cached/   three 32x32 images and their latents as NeMo's DreamBoothDataset.cache_latents
                    writes them: torch.save of the VAE's moments [8, h, w] per image, instance_image_cache_<i>.pt
  torch/            what torch.save writes beside plain state dicts, each with its expected values as safetensors:
                      features.pt / features_legacy.pt   F32 / F16 / BF16 / F64 / I64 / U8 / BOOL tensors, a transposed view, a
                                        slice of a shared storage, an nn.Parameter, nested dicts, non-tensor values
                      bare.pt           a tensor saved alone
  lr_schedules.json NeMo's learning-rate schedulers (nemo.core.optim.lr_scheduler, NeMo 2.2.1) evaluated per step on a
                    table of settings, as Lightning steps them (the lr of optimizer step k uses last_epoch = k)

Run (from the repository root), with tools/reference/requirements.txt and requirements-nemo.txt installed (nemo_toolkit
2.2.1 with --no-deps, see that file) and the
conversion script taken from a diffusers checkout:
  git -C <diffusers> show v0.31.0:scripts/convert_diffusers_to_original_stable_diffusion.py > /tmp/convert_sd.py
  python tools/reference/make_checkpoint_fixtures.py --convert-script /tmp/convert_sd.py
"""
import argparse
import collections
import json
import pathlib
import shutil
import subprocess
import sys
import tarfile
import types

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
OUT = DATA / "checkpoints"
PIPELINE = DATA / "pipeline" / "model"


# ---------------------------------------------------------------------------------------------------------------------
# NeMo's classes, imported without apex / taming (not on PyPI for this torch): a torch GroupNorm with NeMo's fused SiLU
# stands in for apex's, so NeMo's modules build and their own name mappings run.
def import_nemo():
    import lightning.pytorch  # noqa: F401  (imported before the stand-ins, which have no module spec)
    import transformers  # noqa: F401
    import torchmetrics  # noqa: F401

    class GroupNorm(torch.nn.GroupNorm):
        def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, act=""):
            super().__init__(num_groups, num_channels, eps, affine)
            self.act = act

        def forward(self, x):
            y = super().forward(x)
            return torch.nn.functional.silu(y) if self.act == "silu" else y

    for name in ["apex", "apex.contrib", "apex.contrib.group_norm", "taming", "taming.modules", "taming.modules.vqvae",
                 "taming.modules.vqvae.quantize"]:
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["apex.contrib.group_norm"].GroupNorm = GroupNorm
    sys.modules["taming.modules.vqvae.quantize"].VectorQuantizer = object
    from nemo.collections.multimodal.models.text_to_image.stable_diffusion.ldm.autoencoder import AutoencoderKL
    from nemo.collections.multimodal.modules.stable_diffusion.diffusionmodules.openaimodel import UNetModel
    import nemo
    return UNetModel, AutoencoderKL, nemo.__version__


def tar_nemo(path, config_yaml, weights, artifacts=None):
    """A .nemo as SaveRestoreConnector._make_nemo_file_from_folder writes it: tar "w:" of a folder added as "."."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        d = pathlib.Path(d)
        (d / "model_config.yaml").write_text(config_yaml)
        torch.save(weights, d / "model_weights.ckpt")
        for name, data in (artifacts or {}).items():
            (d / name).write_bytes(data)
        with tarfile.open(path, "w:") as tar:
            tar.add(d, arcname=".")


# ---------------------------------------------------------------------------------------------------------------------
def convert(script, model, out, *flags):
    subprocess.run([sys.executable, script, "--model_path", str(model), "--checkpoint_path", str(out), *flags], check=True)


def perturb(*models, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in models:
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.1)


def sd_shaped_pipeline(folder, seed, sd2):
    """A tiny pipeline with Stable Diffusion's structure (4 UNet levels of 2 ResNets, attention on the first three; a 4-level
    VAE), which diffusers' conversion script assumes. sd2: linear projections, heads of 4 channels and a 23-layer gelu text
    encoder (the script treats a text encoder with a layer 22 as SD 2.x's OpenCLIP)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(seed)
    context = 8
    unet = UNet2DConditionModel(block_out_channels=(4, 4, 8, 8), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=context,
                                norm_num_groups=2, attention_head_dim=(1, 1, 2, 2) if sd2 else 2, use_linear_projection=sd2)
    vae = AutoencoderKL(block_out_channels=[4, 4, 8, 8], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, norm_num_groups=2, layers_per_block=2)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=context, intermediate_size=2 * context, num_attention_heads=2,
                                        num_hidden_layers=23 if sd2 else 2, vocab_size=1000, hidden_act="gelu" if sd2 else "quick_gelu",
                                        layer_norm_eps=1e-5))
    perturb(unet, vae, text, seed=seed + 1)
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text.save_pretrained(folder / "text_encoder")


def make_sd1(script):
    out = OUT / "sd1"
    sd_shaped_pipeline(out / "model", 30, sd2=False)
    convert(script, out / "model", out / "original.ckpt")
    convert(script, out / "model", out / "original.safetensors", "--use_safetensors")
    convert(script, out / "model", out / "original_fp16.safetensors", "--half", "--use_safetensors")
    sd = torch.load(out / "original.ckpt", weights_only=True)["state_dict"]
    torch.save({"state_dict": sd}, out / "original_legacy.ckpt", _use_new_zipfile_serialization=False)
    ema = dict(sd)
    for k, v in sd.items():  # LitEma: model_ema.<name in self.model (DiffusionWrapper) with the dots removed>
        if k.startswith("model.diffusion_model."):
            ema["model_ema." + k[len("model."):].replace(".", "")] = v * 0.5
    ema["model_ema.decay"] = torch.tensor(0.9999)
    ema["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    torch.save({"state_dict": ema, "global_step": 1000}, out / "original_ema.ckpt")


def make_sd2(script):
    out = OUT / "sd2"
    sd_shaped_pipeline(out / "model", 40, sd2=True)
    convert(script, out / "model", out / "original.ckpt")


# ---------------------------------------------------------------------------------------------------------------------
# The smallest models NeMo's classes build: GroupNorm(32) in the transformer and VAE norms needs 32 channels, and NeMo's
# diffusers -> NeMo UNet mapping assumes SD's two ResNets per level (num_res_blocks 2). Stored in fp16 to stay small.
NEMO_UNET = dict(image_size=16, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[2], num_res_blocks=2,
                 channel_mult=[1, 1], num_heads=4, use_spatial_transformer=True, transformer_depth=1, context_dim=32,
                 legacy=False, resblock_gn_groups=32)
NEMO_DDCONFIG = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 1], num_res_blocks=1,
                     attn_resolutions=[], dropout=0.0)
CLIP_TEXT = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2, vocab_size=1024,
                 max_position_embeddings=77)


def megatron_clip(text_state, heads, interleaved):
    """transformers CLIPTextModel -> NeMo's legacy Megatron CLIP text tower (convert_external_clip_to_nemo.py's rules)."""
    out = collections.OrderedDict()
    out["language_model.embedding.position_embeddings"] = text_state["text_model.embeddings.position_embedding.weight"]
    out["language_model.embedding.word_embeddings.weight"] = text_state["text_model.embeddings.token_embedding.weight"]
    layers = sorted({int(k.split(".")[3]) for k in text_state if k.startswith("text_model.encoder.layers.")})
    rename = {"layer_norm1": "input_layernorm", "self_attn.out_proj": "self_attention.dense", "layer_norm2": "post_attention_layernorm",
              "mlp.fc1": "mlp.dense_h_to_4h", "mlp.fc2": "mlp.dense_4h_to_h"}
    for i in layers:
        src = f"text_model.encoder.layers.{i}."
        dst = f"language_model.encoder.layers.{i}."
        for a, b in rename.items():
            for leaf in ("weight", "bias"):
                out[dst + b + "." + leaf] = text_state[src + a + "." + leaf]
        for leaf in ("weight", "bias"):
            q, k, v = (text_state[src + f"self_attn.{p}_proj.{leaf}"] for p in "qkv")
            if interleaved:  # [heads, 3, head_dim, ...]: Megatron's layout without megatron_legacy
                parts = [t.reshape(heads, -1, *t.shape[1:]) for t in (q, k, v)]
                fused = torch.stack(parts, dim=1).reshape(-1, *q.shape[1:])
            else:  # [3, heads, head_dim, ...]: megatron_legacy (what the CLIP converter writes)
                fused = torch.cat((q, k, v), dim=0)
            out[dst + "self_attention.query_key_value." + leaf] = fused
    out["language_model.encoder.final_layernorm.weight"] = text_state["text_model.final_layer_norm.weight"]
    out["language_model.encoder.final_layernorm.bias"] = text_state["text_model.final_layer_norm.bias"]
    out["head.weight"] = torch.randn(16, text_state["text_model.final_layer_norm.weight"].shape[0]).half()  # the projection: unused
    return out


def schedule_buffers():
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    return {"betas": torch.tensor(betas, dtype=torch.float32), "alphas_cumprod": torch.tensor(alphas_cumprod, dtype=torch.float32)}


def make_nemo(model_yaml_base):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    UNetModel, NemoAutoencoderKL, nemo_version = import_nemo()
    out = OUT / "nemo"
    model = out / "model"
    torch.manual_seed(50)
    unet = UNet2DConditionModel(block_out_channels=(32, 32), layers_per_block=2, sample_size=16, in_channels=4, out_channels=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, norm_num_groups=32,
                                attention_head_dim=4)
    vae = AutoencoderKL(block_out_channels=[32, 32], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=32, layers_per_block=1)
    text = CLIPTextModel(CLIPTextConfig(**CLIP_TEXT, hidden_act="quick_gelu", layer_norm_eps=1e-5))
    perturb(unet, vae, text, seed=51)
    for m in (unet, vae, text):
        m.half()
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text, tokenizer=CLIPTokenizer.from_pretrained(PIPELINE / "tokenizer"),
                                   scheduler=DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(model, safe_serialization=True)

    # NeMo's UNet, loaded by its own diffusers -> NeMo mapping
    nemo_unet = UNetModel(**NEMO_UNET, from_pretrained=str(model / "unet" / "diffusion_pytorch_model.safetensors"), from_NeMo=False)
    unet_state = {k: v.half() for k, v in nemo_unet.state_dict().items()}
    # NeMo's VAE mapping knows diffusers' older attention names (query / key / value / proj_attn) only, and reshapes their
    # Linear weights to 1x1 convolutions only at 512 channels: give it those names and the [C, C, 1, 1] shape
    vae_state = {}
    for k, v in vae.state_dict().items():
        for new, old in (("to_q.", "query."), ("to_k.", "key."), ("to_v.", "value."), ("to_out.0.", "proj_attn.")):
            if "attentions.0." + new in k:
                k = k.replace("attentions.0." + new, "attentions.0." + old)
                if k.endswith("weight"):
                    v = v.reshape(*v.shape, 1, 1)
        vae_state[k] = v
    vae_file = out / "vae_old_names.bin"
    torch.save(vae_state, vae_file)
    nemo_vae = NemoAutoencoderKL(ddconfig=NEMO_DDCONFIG, embed_dim=4, lossconfig={"target": "torch.nn.Identity"},
                                 from_pretrained=str(vae_file))
    vae_file.unlink()
    vae_nemo_state = {k: v.half() for k, v in nemo_vae.state_dict().items()}
    text_state = text.state_dict()
    check_loaded(unet, unet_state, vae, vae_nemo_state)

    buffers = schedule_buffers()
    import yaml
    base = yaml.safe_load(model_yaml_base)

    # DreamBooth: model.text_encoder (Megatron, legacy q/k/v), model.vae, model.unet, model.noise_scheduler buffers
    db = collections.OrderedDict()
    for k, v in megatron_clip(text_state, CLIP_TEXT["num_attention_heads"], interleaved=False).items():
        db["model.text_encoder.model." + k] = v
    for k, v in vae_nemo_state.items():
        db["model.vae." + k] = v
    for k, v in unet_state.items():
        db["model.unet." + k] = v
    for k, v in buffers.items():
        db["model.noise_scheduler." + k] = v
    cfg = dict(base["model"])
    cfg["unet_config"] = dict(cfg["unet_config"], **NEMO_UNET, from_pretrained=None, from_NeMo=True)
    cfg["first_stage_config"] = dict(cfg["first_stage_config"], from_pretrained=None, ddconfig=NEMO_DDCONFIG)
    cfg["cond_stage_config"] = dict(cfg["cond_stage_config"], restore_from_path="clip.nemo")
    cfg["precision"] = "bf16-mixed"
    cfg["target"] = "nemo.collections.multimodal.models.text_to_image.dreambooth.dreambooth.MegatronDreamBooth"
    cfg["nemo_version"] = nemo_version
    tar_nemo(out / "dreambooth.nemo", yaml.safe_dump(cfg, sort_keys=False), db)

    # Stable Diffusion: model.model.diffusion_model, model.first_stage_model, model.cond_stage_model.model (interleaved)
    sd = collections.OrderedDict((("model." + k, v) for k, v in buffers.items()))
    for k, v in unet_state.items():
        sd["model.model.diffusion_model." + k] = v
    for k, v in vae_nemo_state.items():
        sd["model.first_stage_model." + k] = v
    for k, v in megatron_clip(text_state, CLIP_TEXT["num_attention_heads"], interleaved=True).items():
        sd["model.cond_stage_model.model." + k] = v
    sd_cfg = dict(cfg)
    sd_cfg["target"] = "nemo.collections.multimodal.models.text_to_image.stable_diffusion.ldm.ddpm.MegatronLatentDiffusion"
    sd_cfg["cond_stage_config"] = dict(cfg["cond_stage_config"], restore_from_path=None, cfg=clip_cfg(megatron_legacy=False))
    tar_nemo(out / "sd.nemo", yaml.safe_dump(sd_cfg, sort_keys=False), sd)

    # The CLIP model's own .nemo, its tokenizer files as artifacts
    clip = collections.OrderedDict()
    for k, v in megatron_clip(text_state, CLIP_TEXT["num_attention_heads"], interleaved=False).items():
        clip["model.text_encoder." + k] = v
    vocab, merges = "0a1b2c_vocab.json", "3d4e5f_merges.txt"
    clip_cfg_full = clip_cfg(megatron_legacy=True)
    clip_cfg_full["tokenizer"].update(vocab_file="nemo:" + vocab, merge_file="nemo:" + merges)
    clip_cfg_full["target"] = "nemo.collections.multimodal.models.vision_language_foundation.clip.megatron_clip_models.MegatronCLIPModel"
    tar_nemo(out / "clip.nemo", yaml.safe_dump(clip_cfg_full, sort_keys=False), clip,
             {vocab: (PIPELINE / "tokenizer" / "vocab.json").read_bytes(), merges: (PIPELINE / "tokenizer" / "merges.txt").read_bytes()})

    # A Lightning checkpoint of the DreamBooth model, UNet with NeMo's pre-2024 transformer-block names
    from omegaconf import OmegaConf
    legacy = collections.OrderedDict()  # the UNet alone keeps the file small
    for k, v in ((k, v) for k, v in db.items() if k.startswith("model.unet.")):
        for new, old in ((".attn1.norm.", ".norm1."), (".attn2.norm.", ".norm2."), (".ff.net.0.", ".norm3."),
                         (".ff.net.1.proj.", ".ff.net.0.proj."), (".ff.net.3.", ".ff.net.2.")):
            if k.startswith("model.unet.") and new in k:
                k = k.replace(new, old)
                break
        legacy[k] = v
    torch.save({"epoch": 0, "global_step": 200, "pytorch-lightning_version": "2.4.0", "state_dict": legacy,
                "hyper_parameters": {"cfg": OmegaConf.create(cfg)}}, out / "lightning_legacy_norms.ckpt")
    make_nemo_latents(vae, out)
    return nemo_version


def clip_cfg(megatron_legacy):
    t = CLIP_TEXT
    return {"output_dim": 16, "text": {"num_layers": t["num_hidden_layers"], "hidden_size": t["hidden_size"],
                                       "ffn_hidden_size": t["intermediate_size"], "num_attention_heads": t["num_attention_heads"],
                                       "max_position_embeddings": t["max_position_embeddings"], "encoder_seq_length": 77,
                                       "position_embedding_type": "learned_parameters", "activation": "approx-gelu",
                                       "openai_gelu": False, "layernorm_epsilon": 1e-5, "normalization": "layernorm",
                                       "megatron_legacy": megatron_legacy, "pre_process": True, "post_process": True},
            "tokenizer": {"library": "huggingface", "type": "openai/clip-vit-large-patch14", "model": None, "vocab_file": None,
                          "merge_file": None, "sentencepiece_legacy": False},
            "make_vocab_size_divisible_by": 128}


def check_loaded(unet, unet_state, vae, vae_state):
    """NeMo's loaders are not strict: every NeMo tensor must hold a value that came from the diffusers model."""
    ours = {tuple(v.flatten()[:4].tolist()) for v in list(unet.state_dict().values()) + list(vae.state_dict().values())}
    for name, v in list(unet_state.items()) + list(vae_state.items()):
        if tuple(v.flatten()[:4].tolist()) not in ours:
            raise SystemExit(f"NeMo left {name} at its initial value: the mapping did not cover it")


def make_nemo_latents(vae, out):
    """NeMo's cache_latents: moments = vae.encode(x).parameters.squeeze(0), torch.save per image, instance_image_cache_<i>.pt."""
    from PIL import Image
    images, cached = out / "images", out / "images_cached"
    images.mkdir()
    cached.mkdir()
    rng = np.random.default_rng(60)
    for i in range(3):
        y, x = np.mgrid[0:32, 0:32]
        rgb = np.stack([(x * 8 + 40 * i) % 256, (y * 8) % 256, ((x + y) * 4 + 90 * i) % 256], -1) + rng.integers(0, 20, (32, 32, 3))
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(images / f"image-{i}.png")
    for i, path in enumerate(sorted(images.iterdir())):
        px = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0  # 32x32: Resize and CenterCrop are identities
        x = torch.from_numpy(px).permute(2, 0, 1).unsqueeze(0) * 2 - 1  # ToTensor, Normalize([0.5], [0.5])
        with torch.no_grad():
            moments = vae.float().encode(x).latent_dist.parameters.squeeze(0)
        torch.save(moments, cached / f"instance_image_cache_{i}.pt")


# ---------------------------------------------------------------------------------------------------------------------
SCHEDULES = [
    ("WarmupPolicy", dict(warmup_steps=2, max_steps=6)),
    ("WarmupHoldPolicy", dict(warmup_steps=2, hold_steps=3, max_steps=10, min_lr=0.0)),
    ("WarmupHoldPolicy", dict(warmup_steps=1, hold_steps=10000000000000, max_steps=12)),  # NeMo's dreambooth.yaml
    ("WarmupHoldPolicy", dict(warmup_ratio=0.2, hold_ratio=0.3, max_steps=10, min_lr=0.1)),
    ("SquareAnnealing", dict(warmup_steps=2, max_steps=10, min_lr=1e-5)),
    ("SquareRootAnnealing", dict(warmup_steps=2, max_steps=10, min_lr=0.0)),
    ("CosineAnnealing", dict(warmup_steps=2, max_steps=10, min_lr=0.1)),
    ("CosineAnnealing", dict(warmup_steps=2, constant_steps=2, max_steps=10, min_lr=0.1)),
    ("CosineAnnealing", dict(max_steps=10, min_lr=0.0)),
    ("NoamAnnealing", dict(d_model=64, warmup_steps=3, max_steps=10, min_lr=0.0)),
    ("NoamHoldAnnealing", dict(warmup_steps=2, hold_steps=2, max_steps=10, min_lr=0.01, decay_rate=0.5)),
    ("WarmupAnnealing", dict(warmup_steps=2, max_steps=10, min_lr=0.0)),
    ("InverseSquareRootAnnealing", dict(warmup_steps=2, max_steps=10, min_lr=0.0)),
    ("T5InverseSquareRootAnnealing", dict(constant_steps=3, max_steps=10, min_lr=0.0)),
    ("PolynomialDecayAnnealing", dict(warmup_steps=2, max_steps=10, min_lr=0.0, power=2.0, cycle=False)),
    ("PolynomialDecayAnnealing", dict(warmup_steps=1, max_steps=5, min_lr=0.0, power=1.0, cycle=True)),
    ("PolynomialHoldDecayAnnealing", dict(warmup_steps=2, hold_steps=2, max_steps=10, min_lr=0.0, power=1.0, cycle=False)),
]


def make_torch_features():
    from safetensors.torch import save_file
    out = OUT / "torch"
    out.mkdir()
    g = torch.Generator().manual_seed(70)
    base = torch.randn(20, generator=g)
    matrix = torch.randn(3, 5, generator=g)
    features = collections.OrderedDict()
    features["f32"] = torch.randn(2, 3, 4, generator=g)
    features["f16"] = torch.randn(7, generator=g).half()
    features["bf16"] = torch.randn(2, 5, generator=g).bfloat16()
    features["f64"] = torch.randn(3, generator=g).double()
    features["i64"] = torch.arange(-3, 9)
    features["u8"] = torch.arange(0, 250, 7, dtype=torch.uint8)
    features["bool"] = torch.tensor([True, False, True])
    features["transposed"] = matrix.t()  # stride (1, 5)
    features["slice"] = base[5:17].view(3, 4)  # offset 5 into a storage shared with "whole"
    features["whole"] = base
    features["parameter"] = torch.nn.Parameter(torch.randn(2, 2, generator=g))
    features["nested"] = {"inner": {"leaf": torch.randn(4, generator=g)}, "count": 3}
    features["empty"] = torch.zeros(0, 4)
    features["scalar"] = torch.tensor(2.5)
    obj = {"state_dict": features, "epoch": 7, "name": "features", "lr": 0.5}
    torch.save(obj, out / "features.pt")
    torch.save(obj, out / "features_legacy.pt", _use_new_zipfile_serialization=False)
    flat = {}
    for k, v in features.items():
        if isinstance(v, dict):
            flat["nested.inner.leaf"] = v["inner"]["leaf"]
        else:
            flat[k] = v.detach().contiguous().clone()
    save_file(flat, out / "features.safetensors")
    bare = torch.randn(8, 4, 4, generator=g)
    torch.save(bare, out / "bare.pt")
    save_file({"": bare}, out / "bare.safetensors")


def make_lr_schedules():
    import nemo.core.optim.lr_scheduler as nl
    table = []
    for name, kwargs in SCHEDULES:
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=2.0)
        sched = getattr(nl, name)(opt, **kwargs)
        lrs = []
        for _ in range(16):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        table.append({"name": name, "lr": 2.0, "args": kwargs, "values": lrs})
    (OUT / "lr_schedules.json").write_text(json.dumps(table, indent=1) + "\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--convert-script", required=True, help="diffusers v0.31.0 scripts/convert_diffusers_to_original_stable_diffusion.py")
    parser.add_argument("--nemo-yaml", default=None, help="NeMo's stock dreambooth.yaml (default: examples/nemo_dreambooth.yaml)")
    args = parser.parse_args()
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    make_sd1(args.convert_script)
    make_sd2(args.convert_script)
    nemo_yaml = pathlib.Path(args.nemo_yaml or ROOT / "examples" / "nemo_dreambooth.yaml").read_text()
    nemo_version = make_nemo(nemo_yaml)
    make_lr_schedules()
    make_torch_features()
    import diffusers
    import transformers
    (OUT / "VERSIONS.json").write_text(json.dumps({
        "producer": "tools/reference/make_checkpoint_fixtures.py", "torch": torch.__version__, "diffusers": diffusers.__version__,
        "transformers": transformers.__version__, "nemo_toolkit": nemo_version,
        "conversion_script": "diffusers v0.31.0 scripts/convert_diffusers_to_original_stable_diffusion.py"}, indent=1) + "\n")


if __name__ == "__main__":
    main()
