#!/usr/bin/env python3
"""LoRA references: diffusers' train_dreambooth_lora.py computation on a tiny UNet and text encoder, and sampling with a LoRA.

Adapters: peft LoraConfig(r=2, lora_alpha=4, init_lora_weights="gaussian") (scale alpha / r = 2) on the UNet's attention
to_q, to_k, to_v, to_out.0 and the text encoder's q_proj, k_proj, v_proj, out_proj. Kohya names: a module with path P gets the
stem lora_unet_<P> (UNet, diffusers path) or lora_te_<P> (text encoder, transformers path) with "." -> "_", and the tensors
<stem>.lora_down.weight [r, in] (peft lora_A), <stem>.lora_up.weight [out, r] (peft lora_B), <stem>.alpha (0-dim, 4.0).

Writes tests/data/lora/training/<run>/ for three runs, "unet" (text encoder frozen, LoRA on the UNet),
"unet_and_text_encoder" (LoRA on both; the text encoder's base weights frozen) and "unet_locon" (kohya's LoCon, conv_dim 3 and
conv_alpha 1.5: the UNet's attention projections as "unet", plus every layer of the resnet blocks, downsamplers and upsamplers as
kohya's networks/lora.py adapts them with conv_dim: the 3x3 convolutions conv1, conv2, downsamplers.0.conv, upsamplers.0.conv at
r 3, alpha 1.5 through peft's rank_pattern / alpha_pattern, and time_emb_proj and the 1x1 conv_shortcut at r 2, alpha 4; peft's
lora.Conv2d is kohya's: lora_A a convolution of the layer's kernel, stride and padding, lora_B a 1x1 convolution):
  unet/, text_encoder/           the base weights (make_training_fixtures.py's models: seed 50, +0.1 * randn)
  fixture.safetensors            input.ids, input.latents, per step k noise.<k>, timesteps.<k>, loss.<k> (total, instance,
                                 prior), and initial.<kohya key> / final.<kohya key> for every adapter tensor (lora_down,
                                 lora_up and alpha, so that each prefix stripped is a whole kohya state dict)
  pytorch_lora_weights.safetensors   the final adapters as train_dreambooth_lora.py saves them (save_lora_weights of
                                 convert_state_dict_to_diffusers(get_peft_model_state_dict(model))); this format has no
                                 alpha, so diffusers loads it with lora_alpha = r (scale 1, not the training scale 2)
The step is make_training_fixtures.py's (prior preservation batch [instance, class], fp32 mse, clip_grad_norm_ 1.0, AdamW lr
1e-3, betas (0.9, 0.999), weight decay 1e-2, eps 1e-8, 5 steps), optimizing only the adapters: the base models are
requires_grad_(False), the adapters are added after torch.manual_seed(52), and every lora_B (zero after peft's init) gets
+0.05 * randn (seed 53) so that the initial state is non-trivial.

Writes tests/data/lora/pipeline/ from the tiny pipeline tests/data/pipeline/model with adapters added (seed 60) whose every
lora_A and lora_B is then set to 0.3 * randn (seed 61):
  lora_kohya.safetensors         the adapters in kohya format (fp32, alpha 4.0, ss_* metadata)
  pytorch_lora_weights.safetensors   the same adapters as save_lora_weights writes them (no alpha: loaded at scale 1)
  fixture.safetensors            input.latents (make_pipeline_fixtures.py's), and the DDIM sampling of make_pipeline_fixtures.py
                                 (final latents before decoding) with load_lora_weights of
                                   latents.scale_1          lora_kohya.safetensors (scale alpha / r = 2)
                                   latents.scale_0_5        lora_kohya.safetensors, fuse_lora(lora_scale=0.5) (UNet and text encoder)
                                   latents.diffusers_file   pytorch_lora_weights.safetensors (alpha = r: the scale 0.5 result)
                                 and merged.unet.<name> / merged.text_encoder.<name>: every base weight the LoRA changes, after
                                 fuse_lora(lora_scale=1.0) of lora_kohya.safetensors (W + 2 * up @ down)
Checked: the DDIM sampling without a LoRA reproduces tests/data/pipeline's latents.ddim (to 1e-3: CPU float differences across
machines and thread counts, amplified by guidance, reach about 1.5e-4 there); the diffusers file with set_adapters weight 2.0
gives latents.scale_1 and the kohya file with weight 0.5 gives latents.diffusers_file (to 1e-5); fused sampling (scale 0.5,
scale 1) matches unfused sampling at the same scale to 1e-3 (rounding, amplified by guidance).
"""
import json
import pathlib
import shutil
import struct
import sys

import diffusers
import peft
import torch
import transformers
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_pipeline_fixtures import GUIDANCE, NOISE_SEED, PROMPT, SIZE, STEPS, use_philox_noise  # noqa: E402
from make_training_fixtures import tiny_models, train_steps, training_inputs  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "data"
OUT = ROOT / "lora"
MODEL = ROOT / "pipeline" / "model"
PRODUCER = "tools/reference/make_lora_fixtures.py"
RANK, ALPHA = 2, 4
UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
CONV_RANK, CONV_ALPHA = 3, 1.5
CONV3X3_TARGETS = ["conv1", "conv2", "downsamplers.0.conv", "upsamplers.0.conv"]
LOCON_TARGETS = UNET_TARGETS + CONV3X3_TARGETS + ["conv_shortcut", "time_emb_proj"]
STEPS_TRAIN, LR, PRIOR_LOSS_WEIGHT, MAX_GRAD_NORM = 5, 1e-3, 1.0, 1.0


def versions():
    return {"producer": PRODUCER, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__}


def save(tensors, path, metadata):
    """save_file, then the metadata object rewritten in sorted key order (safetensors writes it in hash order, which changes from
    run to run), so that a rerun writes the same bytes."""
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = data[8:8 + n].decode("ascii")
    start = len('{"__metadata__":')
    assert header.startswith('{"__metadata__":')
    meta, end = json.JSONDecoder().raw_decode(header, start)
    ordered = json.dumps(dict(sorted(meta.items())), separators=(",", ":"))
    assert json.loads(ordered) == metadata and len(ordered) == end - start
    path.write_bytes(data[:8] + (header[:start] + ordered + header[end:]).encode("ascii") + data[8 + n:])


def unet_config(locon=False):
    if locon:
        return LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian", target_modules=LOCON_TARGETS,
                          rank_pattern={k: CONV_RANK for k in CONV3X3_TARGETS}, alpha_pattern={k: CONV_ALPHA for k in CONV3X3_TARGETS})
    return LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian", target_modules=UNET_TARGETS)


def text_config():
    return LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian", target_modules=TEXT_TARGETS)


def kohya(model, prefix):
    """The model's adapters under kohya names (copies): peft's P.lora_A.weight -> lora_<prefix>_<P_>.lora_down.weight, and
    <stem>.alpha the layer's lora_alpha (scaling * r)."""
    alphas = {name: layer.scaling["default"] * layer.r["default"] for name, layer in model.named_modules() if hasattr(layer, "lora_A")}
    out = {}
    for k, v in get_peft_model_state_dict(model).items():
        module, kind = k.rsplit(".lora_", 1)
        assert kind in ("A.weight", "B.weight"), k
        stem = f"lora_{prefix}_" + module.replace(".", "_")
        out[f"{stem}.lora_{'down' if kind == 'A.weight' else 'up'}.weight"] = v.detach().float().clone()
        out[f"{stem}.alpha"] = torch.tensor(float(alphas[module]), dtype=torch.float32)
    return out


def save_diffusers_format(folder, unet, text_encoder=None):
    """The adapters as train_dreambooth_lora.py saves them: folder/pytorch_lora_weights.safetensors."""
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
        text_encoder_lora_layers=(convert_state_dict_to_diffusers(get_peft_model_state_dict(text_encoder))
                                  if text_encoder is not None else None),
        safe_serialization=True)


def train(name, train_text_encoder, locon=False):
    out = OUT / "training" / name
    if out.exists():
        shutil.rmtree(out)
    unet, text_encoder = tiny_models(out)
    scheduler, g, ids, latents, tensors = training_inputs()

    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    torch.manual_seed(52)
    unet.add_adapter(unet_config(locon))
    if train_text_encoder:
        text_encoder.add_adapter(text_config())
    models = [unet] + ([text_encoder] if train_text_encoder else [])
    torch.manual_seed(53)
    with torch.no_grad():
        for m in models:
            for k, p in m.named_parameters():
                if ".lora_B." in k:
                    p.add_(torch.randn_like(p) * 0.05)
    initial = kohya(unet, "unet") | (kohya(text_encoder, "te") if train_text_encoder else {})
    tensors |= {"initial." + k: v for k, v in initial.items()}

    unet.train()
    text_encoder.train() if train_text_encoder else text_encoder.eval()
    params = [p for m in models for p in m.parameters() if p.requires_grad]
    assert len(params) == sum(1 for m in models for k, _ in m.named_parameters() if ".lora_" in k)
    train_steps(unet, text_encoder, scheduler, ids, latents, g, params, tensors, name, steps=STEPS_TRAIN, lr=LR)
    final = kohya(unet, "unet") | (kohya(text_encoder, "te") if train_text_encoder else {})
    tensors |= {"final." + k: v for k, v in final.items()}
    save_diffusers_format(out, unet, text_encoder if train_text_encoder else None)
    meta = versions() | {"train_text_encoder": str(train_text_encoder), "rank": str(RANK), "alpha": str(ALPHA),
                         "steps": str(STEPS_TRAIN), "lr": str(LR), "prior_loss_weight": str(PRIOR_LOSS_WEIGHT),
                         "max_grad_norm": str(MAX_GRAD_NORM), "unet_targets": ",".join(UNET_TARGETS),
                         "text_encoder_targets": ",".join(TEXT_TARGETS) if train_text_encoder else ""}
    if locon:
        conv = [k for k in initial if k.endswith(".lora_down.weight") and initial[k].dim() == 4 and initial[k].shape[2] == 3]
        # conv1 and conv2 of 8 resnets (1 per down block, 2 in the mid block, 2 per up block) and the 2 resamplers
        assert len(conv) == 18, conv
        meta |= {"conv_rank": str(CONV_RANK), "conv_alpha": str(CONV_ALPHA), "unet_targets": ",".join(LOCON_TARGETS)}
    save(tensors, out / "fixture.safetensors", meta)


def load_pipeline():
    pipe = StableDiffusionPipeline.from_pretrained(MODEL, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, latents):
    """make_pipeline_fixtures.py's "ddim" run: DDIM from the saved scheduler config, Philox for any injected noise."""
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    calls = use_philox_noise(DDIMScheduler)
    with torch.no_grad():
        out = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=SIZE, width=SIZE, latents=latents.clone(),
                   output_type="latent")
    assert calls["n"] == 0
    return out.images.detach()


def max_diff(a, b):
    return (a - b).abs().max().item()


def sampling():
    out = OUT / "pipeline"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    pipe = load_pipeline()
    torch.manual_seed(60)
    pipe.unet.add_adapter(unet_config())
    pipe.text_encoder.add_adapter(text_config())
    torch.manual_seed(61)
    with torch.no_grad():
        for m in (pipe.unet, pipe.text_encoder):
            for k, p in m.named_parameters():
                if ".lora_A." in k or ".lora_B." in k:
                    p.copy_(torch.randn_like(p) * 0.3)
    adapters = kohya(pipe.unet, "unet") | kohya(pipe.text_encoder, "te")
    kohya_meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(RANK), "ss_network_alpha": str(float(ALPHA)),
                  "ss_base_model_version": "sd_v1", "ss_v2": "False"}
    kohya_file = out / "lora_kohya.safetensors"
    save(adapters, kohya_file, kohya_meta)
    save_diffusers_format(out, pipe.unet, pipe.text_encoder)
    diffusers_file = out / "pytorch_lora_weights.safetensors"
    del pipe

    g = torch.Generator().manual_seed(31)  # make_pipeline_fixtures.py's initial latents
    latents = torch.randn((1, 4, SIZE // 2, SIZE // 2), generator=g)
    reference = load_file(str(ROOT / "pipeline" / "fixture.safetensors"))
    assert torch.equal(latents, reference["input.latents"])
    plain = sample(load_pipeline(), latents)
    print(f"no LoRA vs tests/data/pipeline latents.ddim: max abs diff {max_diff(plain, reference['latents.ddim']):.3g}")
    assert max_diff(plain, reference["latents.ddim"]) < 1e-3  # CPU float differences (thread count), amplified by guidance

    tensors = {"input.latents": latents}
    pipe = load_pipeline()
    pipe.load_lora_weights(str(kohya_file))
    tensors["latents.scale_1"] = sample(pipe, latents)
    pipe.set_adapters(pipe.get_active_adapters(), adapter_weights=0.5)
    halved = sample(pipe, latents)
    pipe = load_pipeline()
    pipe.load_lora_weights(str(diffusers_file))
    tensors["latents.diffusers_file"] = sample(pipe, latents)
    pipe.set_adapters(pipe.get_active_adapters(), adapter_weights=float(ALPHA) / RANK)
    doubled = sample(pipe, latents)
    pipe = load_pipeline()
    pipe.load_lora_weights(str(kohya_file))
    pipe.fuse_lora(lora_scale=0.5)
    tensors["latents.scale_0_5"] = sample(pipe, latents)

    pipe = load_pipeline()
    base = {"unet": dict(pipe.unet.named_parameters()), "text_encoder": dict(pipe.text_encoder.named_parameters())}
    base = {c: {k: v.detach().clone() for k, v in d.items()} for c, d in base.items()}
    pipe.load_lora_weights(str(kohya_file))
    pipe.fuse_lora(lora_scale=1.0)
    fused = sample(pipe, latents)
    for component, model in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder)):
        count = 0
        for k, v in model.named_parameters():
            if ".lora_" in k:
                continue
            name = k.replace(".base_layer.", ".")
            changed = not torch.equal(v, base[component][name])
            assert changed == (".base_layer.weight" in k), k
            if changed:
                tensors[f"merged.{component}.{name}"] = v.detach().clone()
                count += 1
        print(f"merged {component}: {count} weights")

    # Unfused the two files agree exactly once the diffusers file's missing alpha is made up for; fused and unfused sampling
    # differ by float rounding that guidance amplifies (as across machines, see above), hence 1e-3 there.
    checks = [("LoRA scale 1 vs no LoRA", tensors["latents.scale_1"], plain, None),
              (f"kohya file vs diffusers file with adapter weight {ALPHA / RANK}", tensors["latents.scale_1"], doubled, 1e-5),
              ("kohya file with adapter weight 0.5 vs diffusers file", halved, tensors["latents.diffusers_file"], 1e-5),
              ("kohya file fused at 0.5 vs with adapter weight 0.5", tensors["latents.scale_0_5"], halved, 1e-3),
              ("kohya file fused at 1.0 vs unfused", fused, tensors["latents.scale_1"], 1e-3)]
    for what, a, b, tolerance in checks:
        print(f"{what}: max abs diff {max_diff(a, b):.3g}")
        assert max_diff(a, b) > 0.1 if tolerance is None else max_diff(a, b) < tolerance, what
    meta = versions() | {"prompt": PROMPT, "negative_prompt": "", "steps": str(STEPS), "guidance_scale": str(GUIDANCE),
                         "size": str(SIZE), "noise_seed": str(NOISE_SEED), "scheduler": "ddim", "rank": str(RANK),
                         "alpha": str(ALPHA), "unet_targets": ",".join(UNET_TARGETS),
                         "text_encoder_targets": ",".join(TEXT_TARGETS)}
    save(tensors, out / "fixture.safetensors", meta)


if __name__ == "__main__":
    train("unet", False)
    train("unet_and_text_encoder", True)
    train("unet_locon", False, locon=True)
    sampling()
