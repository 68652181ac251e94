#!/usr/bin/env python3
"""Compares two runs' metrics.jsonl step by step (the demo on the CPU and on the GPU): prints JSON with the largest
relative difference of loss, instance_loss and prior_loss, and exits 1 when it exceeds the tolerance.
Usage: demo_parity.py CPU/metrics.jsonl CUDA/metrics.jsonl [tolerance]"""
import json
import sys


def read(path):
    with open(path) as f:
        return {row["step"]: row for row in map(json.loads, f) if "loss" in row}


cpu, gpu = read(sys.argv[1]), read(sys.argv[2])
tolerance = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-4
steps = sorted(set(cpu) & set(gpu))
if not steps or len(steps) != len(cpu) or len(steps) != len(gpu):
    print(json.dumps({"error": "the runs logged different steps", "cpu_steps": len(cpu), "gpu_steps": len(gpu)}))
    sys.exit(1)
worst = {}
for key in ("loss", "instance_loss", "prior_loss"):
    diffs = [abs(gpu[s][key] - cpu[s][key]) / max(abs(cpu[s][key]), 1e-12) for s in steps]
    worst[key] = max(diffs)
    worst[key + "_at_step"] = steps[diffs.index(max(diffs))]
worst["steps"] = len(steps)
worst["tolerance"] = tolerance
print(json.dumps(worst))
sys.exit(0 if all(worst[k] <= tolerance for k in ("loss", "instance_loss", "prior_loss")) else 1)
