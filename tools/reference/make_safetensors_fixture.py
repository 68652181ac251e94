#!/usr/bin/env python3
"""Writes tests/data/python_written.safetensors with the Python `safetensors` package (torch API).

The C++ test reads it back and compares with values it recomputes by the same formula,
value i = (i - 7) / 8, which is exact in F32, F16 and BF16.
"""
import pathlib

import safetensors
import torch
from safetensors.torch import save_file


def values(n, dtype):
    return ((torch.arange(n, dtype=torch.float64) - 7) / 8).to(dtype)


def main():
    out = pathlib.Path(__file__).resolve().parents[2] / "tests" / "data" / "python_written.safetensors"
    tensors = {
        "weights.f32": values(24, torch.float32).reshape(2, 3, 4),
        "weights.f16": values(6, torch.float16),
        "weights.bf16": values(6, torch.bfloat16).reshape(3, 2),
        "empty": torch.zeros(0, 4, dtype=torch.float32),
    }
    metadata = {"producer": "tools/reference/make_safetensors_fixture.py", "safetensors": safetensors.__version__,
                "torch": torch.__version__}
    save_file(tensors, str(out), metadata=metadata)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
