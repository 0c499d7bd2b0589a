"""What batch normalisation costs per training step: Keras' own layer against the train stage's fused one.

    python -m bench.batch_norm [--rounds 4] [--precision auto]

Trains three versions of the notebook's network on random 28x28 images, batch 128, in one process,
alternating them round by round (shared machines are noisy) and quoting each one's median: no batch
normalisation, `model.batch_norm: true` with Keras' BatchNormalization, and the same with the train
stage's FusedBatchNormalization (TensorFlow's fused kernel). Writes bench/results/batch_norm.json
(docs/presets.md).
"""
import argparse
import json
import os
import statistics
import time

import numpy as np

from mnist_cnn import network  # first: imports TensorFlow without its log lines
from mnist_cnn.params import load_params
from stages import train
from tools.project import REPO

import keras  # noqa: E402  # isort: skip (after network, which quiets TensorFlow)

STEPS, BATCH = 32, 128


def model_for(variant, model_params, precision):
    """The network with no BN, the train stage's fused BN, or Keras' own: inference_model's swap of the
    fused layers for Keras' ones, cloned so that it trains weights of its own."""
    model = network.build_model({**model_params, "batch_norm": variant != "none"}, (28, 28, 1), 10, precision)
    return keras.models.clone_model(network.inference_model(model)) if variant == "keras" else model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--precision", default="auto", help="as train.precision (default: auto)")
    args = parser.parse_args()
    params = load_params(os.path.join(REPO, "params.yaml"))
    train.set_threads(params["train"]["threads"])
    train.seed_everything(params["seed"])
    precision = train.resolve_precision(args.precision)
    rng = np.random.default_rng(0)
    x = rng.random((STEPS * BATCH, 28, 28, 1), dtype=np.float32)
    y = keras.utils.to_categorical(rng.integers(0, 10, len(x)), 10)
    models = {}
    for variant in ("none", "keras", "fused"):
        model = model_for(variant, params["model"], precision)
        model.compile("adam", "categorical_crossentropy", steps_per_execution=16)
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)  # builds and traces: not timed
        models[variant] = model
    times = {variant: [] for variant in models}
    for _ in range(args.rounds):
        for variant, model in models.items():
            start = time.perf_counter()
            model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
            times[variant].append(round((time.perf_counter() - start) / STEPS * 1000, 2))
    ms = {variant: round(statistics.median(runs), 2) for variant, runs in times.items()}
    result = {"precision": precision, "batch_size": BATCH, "rounds": args.rounds, "ms_per_step": ms,
              "runs_ms_per_step": times, "keras_bn_extra_ms": round(ms["keras"] - ms["none"], 2),
              "fused_bn_extra_ms": round(ms["fused"] - ms["none"], 2),
              "keras_over_fused": round(ms["keras"] / ms["fused"], 2), "date": time.strftime("%Y-%m-%d")}
    os.makedirs(os.path.join(REPO, "bench", "results"), exist_ok=True)
    with open(os.path.join(REPO, "bench", "results", "batch_norm.json"), "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
