"""What each candidate's training costs relative to the default's, measured step by step: a stand-in for a CPU
the bench cannot run on.

    python -m bench.step_cost [--only NAME ...] [--precision auto] [--rounds 5] [--images 32768] [--results FILE]

A preset's training time on a CPU that is not here (an AVX2 CPU without bfloat16, when the bench runs on one
with it) is estimated as its cost relative to the default's times the default's measured time there. Whole
training runs give that ratio badly on a shared machine: a run takes minutes, and the host's speed changes
within them. This measures it in one process, alternating round by round: each candidate's network (with its
augmentation, batch size and precision, as the train stage builds it) fits the same number of random images,
and its fastest round's milliseconds per 1,000 images, times its epochs, is compared with the default's.
The fastest, not the median: on a shared host most rounds' times fall on a few values two and four times
apart, whatever the network (the host taking the cores away), and which rounds they hit is chance; the
fastest is the least disturbed. Validation, tracing and reading the data are left out: a run's fixed cost,
which a long run's ratio hardly feels but which is a large share of a short run's time, so estimate a
short run from a measured one of about its length instead. The augmentation runs in every epoch
(`off_last_epochs` is ignored): an upper bound.

Hold oneDNN to AVX2 to stand in for a CPU without AVX512 (`ONEDNN_MAX_CPU_ISA=AVX2`, with
`--precision float32`, what `auto` picks there). Prints a markdown table; writes --results
(bench/results/step_cost.json by default).
"""
import argparse
import os
import time

import numpy as np
import yaml

from bench.presets import CANDIDATES
from mnist_cnn import network  # first: imports TensorFlow without its log lines
from mnist_cnn.files import write_json
from mnist_cnn.machine import describe
from mnist_cnn.params import load_params, set_dotted
from stages import train
from tools import preset
from tools.project import REPO

import keras  # noqa: E402  # isort: skip (after network, which quiets TensorFlow)


def candidate_params(overrides):
    params = load_params(os.path.join(REPO, "params.yaml"))
    set_dotted(params, overrides)
    return params


def fitter(params, precision, x, y):
    """A function that fits the candidate's network on the len(x) images, its model built and traced beforehand."""
    batch = params["train"]["batch_size"]
    steps = len(x) // batch
    model = network.build_model(params["model"], x.shape[1:], y.shape[1], precision,
                                steps=params["train"]["epochs"] * steps)
    model.compile(keras.optimizers.Adam(1e-4), "categorical_crossentropy",
                  steps_per_execution=params["train"]["steps_per_execution"])
    batches = network.tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).cache().repeat()
    model.fit(batches, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)  # builds and traces: not timed
    return lambda: model.fit(batches, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", default=CANDIDATES)
    parser.add_argument("--only", nargs="+", default=["default", "fast", "best"],
                        help="candidate names, or fast and best for the presets (default: default fast best)")
    parser.add_argument("--precision", default="auto", help="as train.precision, for every candidate (default: auto)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=32768,
                        help="images a round, a multiple of each batch_size x steps_per_execution (default: 32768)")
    parser.add_argument("--results", default=os.path.join(REPO, "bench", "results", "step_cost.json"))
    args = parser.parse_args()
    with open(args.candidates) as f:
        candidates = yaml.safe_load(f)
    candidates.update({name: preset.load(name) for name in preset.names()})
    unknown = [name for name in args.only if name not in candidates]
    if unknown:
        parser.error(f"no candidate {', '.join(unknown)} in {args.candidates}")
    names = ["default"] + [name for name in args.only if name != "default"]  # the baseline, in the same run
    params = {name: candidate_params(candidates[name]) for name in names}
    # whole calls into TensorFlow: a last call of fewer steps is traced again in every round, which would swamp
    # a small round's time (a round of 4 steps of `fast` took 4.2 times as long per image as one of 16)
    uneven = [name for name in names
              if args.images % (params[name]["train"]["batch_size"] * params[name]["train"]["steps_per_execution"])]
    if uneven:
        parser.error(f"--images {args.images} is not a multiple of batch_size x steps_per_execution of "
                     f"{', '.join(uneven)}")

    train.set_threads(params["default"]["train"]["threads"])
    train.seed_everything(params["default"]["seed"])
    precision = train.resolve_precision(args.precision)
    rng = np.random.default_rng(0)
    x = rng.random((args.images, 28, 28, 1), dtype=np.float32)
    y = keras.utils.to_categorical(rng.integers(0, 10, args.images), 10)
    fits = {name: fitter(params[name], precision, x, y) for name in names}

    runs = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            start = time.perf_counter()
            fits[name]()
            runs[name].append(round((time.perf_counter() - start) / args.images * 1e6, 1))  # ms per 1,000 images
    per_image = {name: min(runs[name]) for name in names}
    cost = {name: per_image[name] * params[name]["train"]["epochs"] for name in names}
    result = {"machine": describe(), "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
              "precision": precision, "rounds": args.rounds, "date": time.strftime("%Y-%m-%d"),
              "candidates": {name: {"ms_per_1000_images": per_image[name], "runs": runs[name],
                                    "epochs": params[name]["train"]["epochs"],
                                    "batch_size": params[name]["train"]["batch_size"],
                                    "training_cost_over_default": round(cost[name] / cost["default"], 2)}
                             for name in names}}
    write_json(args.results, result)
    print(f"precision {precision}, oneDNN held to {result['onednn_max_cpu_isa'] or 'nothing'}, "
          f"{args.rounds} alternating rounds of {args.images} images")
    print("| candidate | ms per 1,000 images | epochs | training cost / default's |\n|---|---:|---:|---:|")
    for name in names:
        entry = result["candidates"][name]
        print(f"| {name} | {entry['ms_per_1000_images']} | {entry['epochs']} | "
              f"{entry['training_cost_over_default']} |")


if __name__ == "__main__":
    main()
