#!/usr/bin/env python3
"""kohya's aspect-ratio buckets on a table of image sizes: the bucket resolutions (library/model_util.py's
make_bucket_resolutions) and, for each image size, the bucket, the resized size and the aspect-ratio error that
library/train_util.py's BucketManager.select_bucket gives, with and without bucket_no_upscale.

sd-scripts is not on PyPI: give a clone of https://github.com/kohya-ss/sd-scripts (a work tree or a bare repository).
The two functions are taken from commit COMMIT of that clone (git show) and run as they are, without the rest of
sd-scripts and its dependencies (they need only math, random and numpy).

Usage: make_bucket_fixtures.py SD_SCRIPTS_GIT_DIR
Writes tests/data/buckets/kohya_buckets.json.
"""
import ast
import json
import math
import pathlib
import random
import subprocess
import sys
import types
from typing import NamedTuple, Tuple

import numpy as np

COMMIT = "48d368fa557731ad0488c07304dfeba8c07910eb"  # sd-scripts main, 2026
OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "data" / "buckets" / "kohya_buckets.json"

# (name, resolution, min_bucket_reso, max_bucket_reso, bucket_reso_steps, bucket_no_upscale): kohya's defaults at SD 1.5's
# and SD 2's resolutions, a finer grid, and bucket_no_upscale
CONFIGS = [
    ("sd15_defaults", 512, 256, 1024, 64, False),
    ("sd2_768", 768, 256, 1536, 64, False),
    ("fine_steps", 512, 128, 768, 32, False),
    ("no_upscale", 512, 256, 1024, 64, True),
]


def image_sizes():
    sizes = [(512, 512), (640, 480), (480, 640), (1024, 768), (768, 1024), (4032, 3024), (3024, 4032), (1920, 1080),
             (1080, 1920), (800, 600), (300, 200), (200, 300), (1000, 100), (100, 1000), (2048, 512), (512, 2048),
             (513, 511), (768, 512), (512, 768), (1280, 720), (350, 350), (64, 64), (4000, 6000), (6000, 4000),
             (1200, 1600), (2560, 1440), (1536, 1024), (960, 512), (576, 1024), (448, 832)]
    rng = random.Random(20261203)
    while len(sizes) < 120:
        sizes.append((rng.randint(64, 6000), rng.randint(64, 6000)))
    return sizes


def load_kohya(git_dir):
    def source(path):
        return subprocess.run(["git", "-C", git_dir, "show", f"{COMMIT}:{path}"], check=True, capture_output=True, text=True).stdout

    def extract(text, kind, name):
        for node in ast.parse(text).body:
            if isinstance(node, kind) and node.name == name:
                return ast.get_source_segment(text, node)
        raise SystemExit(f"{name} not found at {COMMIT}")

    namespace = {"math": math, "random": random, "np": np, "Tuple": Tuple, "NamedTuple": NamedTuple}
    exec(extract(source("library/model_util.py"), ast.FunctionDef, "make_bucket_resolutions"), namespace)
    namespace["model_util"] = types.SimpleNamespace(make_bucket_resolutions=namespace["make_bucket_resolutions"])
    exec(extract(source("library/train_util.py"), ast.ClassDef, "BucketManager"), namespace)
    return namespace["make_bucket_resolutions"], namespace["BucketManager"]


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    make_bucket_resolutions, BucketManager = load_kohya(sys.argv[1])
    fixture = {"sd_scripts_commit": COMMIT, "configs": []}
    for name, resolution, min_size, max_size, steps, no_upscale in CONFIGS:
        manager = BucketManager(no_upscale, (resolution, resolution), min_size, max_size, steps)
        if not no_upscale:
            manager.make_buckets()  # as kohya's make_buckets: the predefined buckets only without bucket_no_upscale
        entry = {"name": name, "resolution": resolution, "min_bucket_reso": min_size, "max_bucket_reso": max_size,
                 "bucket_reso_steps": steps, "bucket_no_upscale": no_upscale,
                 "bucket_resolutions": [] if no_upscale else [list(r) for r in make_bucket_resolutions((resolution, resolution), min_size, max_size, steps)],
                 "images": []}
        for w, h in image_sizes():
            reso, resized, ar_error = manager.select_bucket(w, h)
            entry["images"].append({"size": [w, h], "bucket": [int(reso[0]), int(reso[1])], "resized": [int(resized[0]), int(resized[1])],
                                    "ar_error": float(ar_error)})
        fixture["configs"].append(entry)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixture, indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {OUT}: {sum(len(c['images']) for c in fixture['configs'])} assignments")


if __name__ == "__main__":
    main()
