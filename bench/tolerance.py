"""How far do the test metrics move when what should not matter changes? Measures the tolerance
that tools/check_reproduction.py allows.

    python -m bench.tolerance            # needs data/processed from `dvc repro`; ~2 min per variant on 2 cores

Trains and evaluates the default configuration under each variant (the committed settings again,
another thread count, oneDNN off, other seeds), each in a fresh process, and writes
bench/results/tolerance.json and a markdown table.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

from mnist_cnn.machine import describe
from mnist_cnn.params import set_dotted
from tools.project import REPO

PROCESSED = os.path.join(REPO, "data", "processed")
VARIANTS = [  # name, params changes, environment changes
    ("committed settings, again", {}, {}),
    ("train.threads=1", {"train.threads": 1}, {}),
    ("TF_ENABLE_ONEDNN_OPTS=0", {}, {"TF_ENABLE_ONEDNN_OPTS": "0"}),
    ("seed=1", {"seed": 1}, {}),
    ("seed=2", {"seed": 2}, {}),
    ("seed=3", {"seed": 3}, {}),
]


def machine():
    """The CPU, cores and library versions: what the figures hold for."""
    versions = subprocess.run([sys.executable, "-c", "import tensorflow as tf, keras, numpy; "
                               "print(tf.__version__, keras.__version__, numpy.__version__)"],
                              capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    tf_version, keras_version, numpy_version = versions.stdout.split()
    return {**describe(), "tensorflow": tf_version, "keras": keras_version, "numpy": numpy_version}


def run_variant(changes, env):
    """Train and evaluate in a scratch folder; return test accuracy, loss and wall seconds."""
    with open(os.path.join(REPO, "params.yaml")) as f:
        params = set_dotted(yaml.safe_load(f), changes)
    with tempfile.TemporaryDirectory() as scratch:
        with open(os.path.join(scratch, "params.yaml"), "w") as f:
            yaml.safe_dump(params, f)
        start = time.perf_counter()
        for stage, *args in (
            ("stages.train", f"{PROCESSED}/train", f"{PROCESSED}/val", "model.keras", "log"),
            ("stages.evaluate", "model.keras", f"{PROCESSED}/test", "evaluate.json", "predictions.csv"),
        ):
            subprocess.run([sys.executable, "-m", stage, *args], cwd=scratch,
                           env={**os.environ, "PYTHONPATH": REPO, **env}, check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(scratch, "evaluate.json")) as f:
            metrics = json.load(f)
    return {"accuracy": metrics["accuracy"], "loss": metrics["loss"], "seconds": round(time.perf_counter() - start)}


def main():
    with open(os.path.join(REPO, "metrics", "evaluate.json")) as f:
        committed = json.load(f)
    rows = []
    for name, changes, env in VARIANTS:
        result = run_variant(changes, env)
        result.update(variant=name, accuracy_change=result["accuracy"] - committed["accuracy"],
                      loss_change=result["loss"] - committed["loss"])
        rows.append(result)
        print(f"{name:<28} accuracy {result['accuracy']:.4f} ({result['accuracy_change']:+.4f})  "
              f"loss {result['loss']:.4f} ({result['loss_change']:+.4f})  {result['seconds']} s", flush=True)
    moved = rows[1:]
    summary = {
        "committed": {"accuracy": committed["accuracy"], "loss": committed["loss"]},
        "max_abs_accuracy_change": max(abs(r["accuracy_change"]) for r in moved),
        "max_abs_loss_change": max(abs(r["loss_change"]) for r in moved),
        "accuracy_stdev_over_variants": statistics.stdev(r["accuracy"] for r in rows),
    }
    result = {"machine": machine(), "variants": rows, "summary": summary}
    with open(os.path.join(REPO, "bench", "results", "tolerance.json"), "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print("\n| variant | test accuracy | change | test loss | change |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['accuracy']:.4f} | {r['accuracy_change']:+.4f} | {r['loss']:.4f} | "
              f"{r['loss_change']:+.4f} |")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
