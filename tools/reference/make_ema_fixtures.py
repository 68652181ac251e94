#!/usr/bin/env python3
"""The exponential moving average of the trained weights beside its two references: diffusers' EMAModel
(diffusers.training_utils, as train_text_to_image.py uses it: constructed from the weights before training, step() after
every optimizer step) and NeMo's EMA (nemo/collections/common/callbacks/ema.py: EMAOptimizer copies the weights before
the first optimizer step and, after optimizer step k (0-based) with k % every_n_steps == 0, computes
ema = decay * ema + (1 - decay) * weights with torch._foreach_mul_ / _foreach_add_; written out here because NeMo is not
installed).

The training is make_training_fixtures.py's run "frozen_text_encoder" (the same tiny models, inputs and 5 steps; this
script checks that its final weights equal that fixture's to float rounding: torch's kernels may round differently on another CPU), with three averages of the UNet's parameters beside it:
  diffusers    EMAModel(decay=0.9999): decays 0, 2/11, 3/12, 4/13, 5/14 ((1 + s) / (10 + s) below the decay)
  power        EMAModel(decay=0.999, min_decay=0.5, update_after_step=1, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
  nemo         NeMo's EMA, decay 0.9, every_n_steps 2 (updates after steps 0, 2 and 4)
Writes tests/data/training/ema/fixture.safetensors: ema.<average>.<name> for every UNet parameter, decays.<average> (the
decay of each update, float64).
"""
import pathlib
import sys
import tempfile

import diffusers
import torch
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_training_fixtures import OUT, tiny_models, train_steps, training_inputs  # noqa: E402

NEMO_DECAY, NEMO_EVERY_N_STEPS = 0.9, 2


def main():
    with tempfile.TemporaryDirectory() as tmp:
        unet, text_encoder = tiny_models(pathlib.Path(tmp))
    scheduler, g, ids, latents, tensors = training_inputs()
    unet.train()
    text_encoder.eval()
    text_encoder.requires_grad_(False)
    params = list(unet.parameters())
    averages = {
        "diffusers": EMAModel(params, decay=0.9999),
        "power": EMAModel(params, decay=0.999, min_decay=0.5, update_after_step=1, use_ema_warmup=True, inv_gamma=1.0, power=0.75),
    }
    nemo = tuple(p.detach().clone() for p in params)  # EMAOptimizer.step: the copy before the first optimizer step
    decays = {name: [] for name in list(averages) + ["nemo"]}

    def after_step(step):
        for name, ema in averages.items():
            ema.step(params)
            decays[name].append(ema.cur_decay_value)
        if step % NEMO_EVERY_N_STEPS == 0:
            with torch.no_grad():
                torch._foreach_mul_(nemo, NEMO_DECAY)
                torch._foreach_add_(nemo, tuple(p.data for p in params), alpha=1.0 - NEMO_DECAY)
            decays["nemo"].append(NEMO_DECAY)

    train_steps(unet, text_encoder, scheduler, ids, latents, g, params, tensors, "ema", after_step=after_step)
    reference = load_file(str(OUT / "frozen_text_encoder" / "fixture.safetensors"))
    ours = torch.cat([v.detach().flatten() for _, v in unet.named_parameters()])
    theirs = torch.cat([reference["final.unet." + k].flatten() for k, _ in unet.named_parameters()])
    error = ((ours - theirs).norm() / theirs.norm()).item()
    print(f"final weights beside frozen_text_encoder's: relative L2 {error:.2e}")
    assert error < 1e-5, "the training is not frozen_text_encoder's"
    out = {}
    names = [k for k, _ in unet.named_parameters()]
    for name, ema in averages.items():
        for k, shadow in zip(names, ema.shadow_params):
            out[f"ema.{name}.{k}"] = shadow.detach().clone()
    for k, shadow in zip(names, nemo):
        out[f"ema.nemo.{k}"] = shadow.clone()
    for name, values in decays.items():
        out[f"decays.{name}"] = torch.tensor(values, dtype=torch.float64)
        print(f"{name}: decays {values}")
    meta = {"producer": "tools/reference/make_ema_fixtures.py", "torch": torch.__version__, "diffusers": diffusers.__version__,
            "training": "frozen_text_encoder", "nemo_decay": str(NEMO_DECAY), "nemo_every_n_steps": str(NEMO_EVERY_N_STEPS)}
    (OUT / "ema").mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(OUT / "ema" / "fixture.safetensors"), metadata=meta)


if __name__ == "__main__":
    main()
