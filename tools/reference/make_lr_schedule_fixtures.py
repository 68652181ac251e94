#!/usr/bin/env python3
"""Learning rates of diffusers' get_scheduler (diffusers.optimization), the schedules train_dreambooth.py offers.

For each case (name, warmup steps, training steps, num_cycles, power, base lr) the rate torch's LambdaLR gives at every
step 0 .. training steps + 2 (optimizer.step() then scheduler.step(), reading the rate before each optimizer step, as the
training loop does). Writes tests/data/training/lr_schedules.json: {"producer", "diffusers", "cases": [{"name",
"warmup_steps", "total_steps", "num_cycles", "power", "lr", "rates": [...]}]}.
"""
import json
import pathlib

import diffusers
import torch
from diffusers.optimization import get_scheduler

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "data" / "training" / "lr_schedules.json"
CASES = [("constant", 0, 20, 1, 1.0, 1e-4), ("constant_with_warmup", 5, 20, 1, 1.0, 1e-4), ("linear", 4, 20, 1, 1.0, 5e-6),
         ("cosine", 3, 20, 1, 1.0, 1e-3), ("cosine_with_restarts", 2, 30, 3, 1.0, 1e-4), ("cosine_with_restarts", 0, 17, 1, 1.0, 2e-4),
         ("polynomial", 3, 20, 1, 1.0, 1e-4), ("polynomial", 0, 25, 1, 2.0, 5e-6), ("polynomial", 5, 12, 1, 0.5, 1e-3)]


def rates(name, warmup, total, cycles, power, lr):
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = get_scheduler(name, optimizer=optimizer, num_warmup_steps=warmup, num_training_steps=total, num_cycles=cycles,
                              power=power)
    out = []
    for _ in range(total + 3):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def main():
    cases = [{"name": n, "warmup_steps": w, "total_steps": t, "num_cycles": c, "power": p, "lr": lr, "rates": rates(n, w, t, c, p, lr)}
             for n, w, t, c, p, lr in CASES]
    OUT.write_text(json.dumps({"producer": "tools/reference/make_lr_schedule_fixtures.py", "diffusers": diffusers.__version__,
                               "cases": cases}, indent=1) + "\n")


if __name__ == "__main__":
    main()
