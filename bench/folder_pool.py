"""When a process pool pays for itself in the download stage's folder reading (mnist_cnn/image_folders.py).

    python -m bench.folder_pool [--rounds 3]

Runs the download stage, a fresh process each time as a user's `dvc repro` does, on generated folders with
`data.folder.workers` 1 (read in the stage's process) and 2 (a pool of 2 processes), one after the other in each
round (shared machines are noisy): small images (28x28 grayscale PNGs, the size of an MNIST-like folder) and large
ones (1600x1200 RGB JPEGs, a phone photo's size). From the medians it fits what one image costs in the stage's
process (per file, and per megabyte of file), what starting the pool costs the stage, and the pool's speedup, and
prints the estimated reading time in one process from which the pool is faster. Writes
bench/results/folder_pool.json.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import yaml
from PIL import Image

from tools.project import REPO

# (kind, count): the small folders show the pool's start cost and the per-file cost, the large ones the per-MB cost
CASES = [("small", 8), ("small", 1000), ("small", 8000), ("large", 8), ("large", 64)]


def make_images(root, kind, count, rng):
    """count distinct files of one kind in root; their paths."""
    os.makedirs(root, exist_ok=True)
    paths = []
    for i in range(count):
        if kind == "small":
            pixels = np.zeros((28, 28), np.uint8)
            pixels[6:22, 10 + i % 4:14 + i % 4] = 255
            pixels = np.clip(pixels.astype(int) + rng.integers(0, 40, pixels.shape), 0, 255).astype(np.uint8)
            path, options = os.path.join(root, f"{i:05d}.png"), {}
        else:
            pixels = rng.integers(0, 255, (1200, 1600, 3), dtype=np.uint8)
            path, options = os.path.join(root, f"{i:05d}.jpg"), {"quality": 90}
        Image.fromarray(pixels).save(path, **options)
        paths.append(path)
    return paths


def seconds(folder, workers, work):
    """Wall seconds of the download stage reading folder (one class per subfolder) on `workers` processes."""
    with open(os.path.join(REPO, "params.yaml")) as f:
        params = yaml.safe_load(f)
    params["data"].update({"dataset": "folder", "path": folder})
    params["data"]["folder"].update({"workers": workers, "test_split": 0.5})  # 2 images a class is enough
    with open(os.path.join(work, "params.yaml"), "w") as f:
        yaml.safe_dump(params, f)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "stages.download", "raw.npz"], cwd=work, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": REPO})
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args(argv).rounds
    rng = np.random.default_rng(0)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, count in CASES:
            folder = os.path.join(tmp, f"{kind}-{count}")
            paths = [path for name in ("a", "b") for path in make_images(os.path.join(folder, name), kind, count // 2,
                                                                         rng)]
            megabytes = sum(os.path.getsize(path) for path in paths) / 1e6
            times = {1: [], 2: []}
            for _ in range(rounds):
                for workers in times:
                    times[workers].append(seconds(folder, workers, tmp))
            serial, pool = statistics.median(times[1]), statistics.median(times[2])
            results.append({"kind": kind, "images": count, "megabytes": round(megabytes, 3),
                            "serial_s": round(serial, 4), "pool_s": round(pool, 4),
                            "pool_over_serial": round(pool / serial, 3)})
            print(json.dumps(results[-1]))
    by = {(r["kind"], r["images"]): r for r in results}
    # the stage without reading (imports, writing the dataset): the smallest folder read in its own process
    base = by["small", 8]["serial_s"]
    start = by["small", 8]["pool_s"] - base  # what the first pool costs the stage: the forkserver, the workers
    small_a, small_b, large = by["small", 1000], by["small", 8000], by["large", 64]
    per_file = (small_b["serial_s"] - small_a["serial_s"]) / (small_b["images"] - small_a["images"])
    per_mb = (large["serial_s"] - base - per_file * large["images"]) / large["megabytes"]
    # reading time in one process over reading time on the pool, on the largest folders
    speedup = statistics.mean([(c["serial_s"] - base) / (c["pool_s"] - base - start) for c in (small_b, large)])
    summary = {"stage_without_reading_s": round(base, 3), "per_file_s": round(per_file, 6),
               "per_megabyte_s": round(per_mb, 4), "pool_start_s": round(start, 3), "pool_speedup": round(speedup, 2),
               # the pool is faster once reading in one process takes start + reading / speedup
               "pool_faster_from_s": round(start / (1 - 1 / speedup), 2), "rounds": rounds, "cpus": os.cpu_count()}
    print(json.dumps(summary, indent=2))
    with open(os.path.join(REPO, "bench", "results", "folder_pool.json"), "w") as f:
        json.dump({"cases": results, "summary": summary}, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
