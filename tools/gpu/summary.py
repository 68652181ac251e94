#!/usr/bin/env python3
"""The CUDA issue's figures side by side, from the folder tools/gpu/run.sh fills: the gpu tests' verdicts, our
train_step_bench steps beside diffusers' (torch_train_step.py) with the ratio of steps per second, the effective TFLOP/s
against the measured bf16 peak, the peak memory against the 16 GB goal, the op kinds that took the most time, and the
demo's CPU / GPU loss parity. Prints one JSON object. Usage: summary.py FOLDER"""
import json
import pathlib
import re
import sys

BF16_PEAK_TFLOPS = 790.0  # the CUDA issue's figure: an 8192^3 bf16 matrix product through PyTorch on this workplace's H200
GOAL_RATIO, GOAL_PEAK_SHARE, GOAL_MEMORY_GB = 1.5, 0.5, 16.0


def load(path):
    """A report, or its error with the last lines of the program's log (NAME.log beside NAME.json)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        log = path.with_suffix(".log")
        tail = log.read_text(errors="replace").strip().splitlines()[-2:] if log.exists() else []
        return {"error": f"{path.name}: {e}", "log_tail": tail}


def test_verdict(log):
    text = log.read_text(errors="replace")
    for pattern in (r"All tests passed \(.*\)", r"test cases:.*", r"No tests ran"):
        found = re.findall(pattern, text)
        if found:
            return found[-1].strip()
    return "no Catch2 summary: " + " | ".join(text.strip().splitlines()[-2:])


def ours(report):
    if "error" in report or "step_seconds" not in report:
        return report
    result = {k: report.get(k) for k in ("step_seconds", "effective_tflops", "device_peak_gib", "device_peak_reserved_gib", "loss")}
    if report.get("effective_tflops"):
        result["peak_share"] = round(report["effective_tflops"] / BF16_PEAK_TFLOPS, 4)
    ops = report.get("profile", {}).get("ops", [])
    if ops:
        by_kind = {}
        for op in ops:
            by_kind[op["kind"]] = by_kind.get(op["kind"], 0.0) + op["seconds"]
        result["profiled_seconds_by_kind"] = {k: round(v, 4) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])}
        result["profiled_top_ops"] = {op["op"]: op["seconds"] for op in ops[:8]}
        # the matrix arithmetic's rate of the top ops that have products (train_step_bench counts it per call)
        result["profiled_top_ops_tflops"] = {op["op"]: round(op["gflop_per_second"] / 1000, 1) for op in ops[:8] if "gflop_per_second" in op}
        result["profiled_seconds_outside_ops"] = report.get("seconds_outside_ops")
    return result


def peer(report):
    if "error" in report or "step_seconds" not in report:
        return report
    keys = ("step_seconds", "effective_tflops", "peak_allocated_gib", "peak_reserved_gib", "torch", "diffusers")
    result = {k: report.get(k) for k in keys}
    if "profile_top_ops_seconds" in report:
        result["profiled_top_ops"] = dict(list(report["profile_top_ops_seconds"].items())[:8])
    return result


def main():
    folder = pathlib.Path(sys.argv[1])
    summary = {"device": (folder / "device.txt").read_text().strip() if (folder / "device.txt").exists() else None}
    summary["tests"] = {log.stem: test_verdict(log) for log in sorted(folder.glob("test_cuda_*.log"))}
    steps = {}
    for name in ("bf16", "bf16_checkpointing", "bf16_lora4", "bf16_lora32", "bf16_lora4_checkpointing"):
        mine, theirs = folder / f"ours_{name}.json", folder / f"peer_{name}.json"
        row = {}
        if mine.exists():
            row["ours"] = ours(load(mine))
        if theirs.exists():
            row["diffusers"] = peer(load(theirs))
        a, b = row.get("ours", {}).get("step_seconds"), row.get("diffusers", {}).get("step_seconds")
        if a and b:
            row["our_steps_per_second_over_diffusers"] = round(b / a, 3)
        if row:
            steps[name] = row
    summary["train_step"] = steps
    full = steps.get("bf16", {}).get("ours", {})
    if "peak_share" in full and "device_peak_reserved_gib" in full:
        summary["goals"] = {
            "ratio_at_least_1.5": steps["bf16"].get("our_steps_per_second_over_diffusers", 0) >= GOAL_RATIO,
            "half_the_bf16_peak": full["peak_share"] >= GOAL_PEAK_SHARE,
            "peak_memory_at_most_16_GB": full["device_peak_reserved_gib"] * 2**30 / 1e9 <= GOAL_MEMORY_GB,
        }
    # the LoRA issue's figures: each LoRA step against the full step of the same gradient checkpointing setting, and the
    # LoRA step's peak memory with checkpointing (goals: at most 60 % of the full step, at most 6 GiB)
    lora = {}
    for name, base in (("bf16_lora4", "bf16"), ("bf16_lora32", "bf16"), ("bf16_lora4_checkpointing", "bf16_checkpointing")):
        a, b = steps.get(name, {}).get("ours", {}).get("step_seconds"), steps.get(base, {}).get("ours", {}).get("step_seconds")
        if a and b:
            lora[name + "_over_full_step"] = round(a / b, 3)
    peak = steps.get("bf16_lora4_checkpointing", {}).get("ours", {}).get("device_peak_gib")
    if peak is not None:
        lora["bf16_lora4_checkpointing_peak_gib"] = peak
    if lora:
        summary["lora"] = lora
    parity = folder / "demo_parity.json"
    if parity.exists():
        summary["demo_parity"] = load(parity)
    summary["run_log"] = (folder / "run.log").read_text().splitlines() if (folder / "run.log").exists() else []
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
