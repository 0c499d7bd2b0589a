"""What a stage pays to start: importing TensorFlow and Keras plainly against runner.quiet_tensorflow's import.

    python -m bench.startup [--rounds 7]

Each round starts a fresh Python for each way, one after the other (shared machines are noisy), and
times it from outside: `import tensorflow, keras`, and the stages' `quiet_tensorflow(); import keras`,
which keeps scikit-learn and matplotlib out of Keras' import (mnist_cnn/runner.py, UNUSED_BY_KERAS).
Prints and writes bench/results/startup.json: each way's median wall and CPU seconds, and their ratio.
Every stage that uses TensorFlow (train, evaluate, robustness, export) and predict pay this once a run;
the test suite pays it in every stage it starts.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from tools.project import REPO

WAYS = {"plain": "import tensorflow, keras",
        "quiet_tensorflow": "from mnist_cnn.runner import quiet_tensorflow; quiet_tensorflow(); import keras"}


def timed(code):
    """Wall and CPU seconds of a fresh Python running code."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, capture_output=True,
                   env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args(argv).rounds
    times = {way: [] for way in WAYS}
    for _ in range(rounds):
        for way, code in WAYS.items():
            times[way].append(timed(code))
    result = {way: {"wall_s": round(statistics.median(w for w, _ in runs), 2),
                    "cpu_s": round(statistics.median(c for _, c in runs), 2)} for way, runs in times.items()}
    result["ratio_wall"] = round(result["quiet_tensorflow"]["wall_s"] / result["plain"]["wall_s"], 3)
    result["ratio_cpu"] = round(result["quiet_tensorflow"]["cpu_s"] / result["plain"]["cpu_s"], 3)
    result["rounds"] = rounds
    print(json.dumps(result, indent=2))
    with open(os.path.join(REPO, "bench", "results", "startup.json"), "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
