"""What the training-only augmentation layer costs per batch, beside a training step of the network it feeds.

    python -m bench.augmentation [--rounds 5] [--preset fast] [--precision auto]

In one process, alternating round by round (shared machines are noisy) and quoting each one's median:
RandomAffine (mnist_cnn/network.py) on a batch of the preset's size with the rotation, shift and zoom alone,
then with each of the preset's other transforms added on its own, then as the preset has it; and a full
training step of the preset's network without augmentation, the work the layer's time is a share of. The
layer is timed 20 times in a row inside one tf.function, as fit runs it (no Python between calls).
Writes bench/results/augmentation.json (docs/presets.md: why `fast` does not train in 15 s).
"""
import argparse
import json
import os
import statistics
import time

import numpy as np
import yaml

from mnist_cnn import network  # first: imports TensorFlow without its log lines
from mnist_cnn.files import write_json
from mnist_cnn.params import load_params, set_dotted
from stages import train
from tools.project import REPO

import keras  # noqa: E402  # isort: skip (after network, which quiets TensorFlow)

tf = network.tf
CALLS, STEPS = 20, 32
TRANSFORMS = ("stroke", "solarize", "noise", "erase")  # beyond the affine map, in the layer's order


def layer_timer(augment, batch):
    """A tf.function that runs a RandomAffine of these settings CALLS times on a batch, and its input."""
    layer = network.augmentation(augment)[0]
    x = tf.constant(np.random.default_rng(0).random((batch, 28, 28, 1), dtype=np.float32))

    @tf.function
    def run(images):
        for _ in range(CALLS):
            images = layer(images, training=True)
        return tf.reduce_sum(images)

    run(x)  # traced here, not timed
    return lambda: run(x).numpy()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--preset", default="fast", help="a file of presets/ (default: fast)")
    parser.add_argument("--precision", default="auto", help="as train.precision (default: auto)")
    args = parser.parse_args()
    params = load_params(os.path.join(REPO, "params.yaml"))
    with open(os.path.join(REPO, "presets", f"{args.preset}.yaml")) as f:
        set_dotted(params, yaml.safe_load(f))
    train.set_threads(params["train"]["threads"])
    train.seed_everything(params["seed"])
    precision = train.resolve_precision(args.precision)
    batch, augment = params["train"]["batch_size"], params["model"]["augment"]
    affine = {**augment, **dict.fromkeys(TRANSFORMS, 0)}
    variants = {"affine": affine}
    variants.update({f"affine+{name}": {**affine, name: augment[name]} for name in TRANSFORMS if augment[name]})
    variants["preset"] = augment
    timers = {name: layer_timer(settings, batch) for name, settings in variants.items()}

    plain = {**params["model"], "augment": dict.fromkeys(augment, 0)}
    model = network.build_model(plain, (28, 28, 1), 10, precision)
    model.compile("adam", "categorical_crossentropy", steps_per_execution=16)
    rng = np.random.default_rng(0)
    x = rng.random((STEPS * batch, 28, 28, 1), dtype=np.float32)
    y = keras.utils.to_categorical(rng.integers(0, 10, len(x)), 10)
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)  # builds and traces: not timed
    timers["training step without augmentation"] = lambda: model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    calls = {name: CALLS for name in variants} | {"training step without augmentation": STEPS}

    times = {name: [] for name in timers}
    for _ in range(args.rounds):
        for name, timer in timers.items():
            start = time.perf_counter()
            timer()
            times[name].append(round((time.perf_counter() - start) / calls[name] * 1000, 2))
    ms = {name: round(statistics.median(runs), 2) for name, runs in times.items()}
    step = ms["training step without augmentation"]
    result = {"preset": args.preset, "precision": precision, "batch_size": batch, "rounds": args.rounds,
              "ms_per_batch": ms, "runs_ms_per_batch": times,
              "preset_layer_over_step": round(ms["preset"] / step, 2),
              "steps_per_epoch_48000": -(-48000 // batch), "date": time.strftime("%Y-%m-%d")}
    write_json(os.path.join(REPO, "bench", "results", "augmentation.json"), result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
