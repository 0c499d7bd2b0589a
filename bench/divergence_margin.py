"""How far healthy runs stay from the train stage's divergence bound (a training loss over 3 ln K).

    python -m bench.divergence_margin DATA [--epochs-cap 2] [--precisions float32 mixed_bfloat16]

DATA is a folder of preprocessed splits (train/ and val/, what `dvc repro preprocess` writes to
data/processed). Trains the default params and each preset with the train stage's own code, one
subprocess per run and precision, and records each epoch's mean training and validation loss. A run
stops after --epochs-cap epochs (its learning-rate schedule still that of the whole run): the loss is
highest in the first epochs, before the network has learnt, and while a one-cycle schedule warms up.
Writes bench/results/divergence_margin.json and prints a table.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import yaml

from mnist_cnn.params import set_dotted
from tools import preset
from tools.project import REPO

# The train stage, its divergence callback also reporting each epoch and stopping the run after `cap` epochs
PROBE = """
import json, sys
from mnist_cnn.runner import run
from stages import train

cap = int(sys.argv[1])
check = train.StopOnDivergence.on_epoch_end


def on_epoch_end(self, epoch, logs=None):
    check(self, epoch, logs)  # the bound itself: a healthy run must pass it
    print("EPOCH", json.dumps({"epoch": epoch + 1, "loss": logs["loss"], "val_loss": logs.get("val_loss")}), flush=True)
    if epoch + 1 >= cap:
        self.model.stop_training = True


train.StopOnDivergence.on_epoch_end = on_epoch_end
run(lambda argv: train.main(argv[1:]))
"""


def epoch_losses(data, overrides, precision, cap):
    """[{epoch, loss, val_loss}] of one run of the train stage with these params, in a scratch folder."""
    with tempfile.TemporaryDirectory() as scratch:
        with open(os.path.join(REPO, "params.yaml")) as f:
            params = set_dotted(yaml.safe_load(f), {**overrides, "train.precision": precision})
        with open(os.path.join(scratch, "params.yaml"), "w") as f:
            yaml.safe_dump(params, f)
        result = subprocess.run([sys.executable, "-c", PROBE, str(cap), os.path.join(data, "train"),
                                 os.path.join(data, "val"), "m.keras", "log"], cwd=scratch, capture_output=True,
                                text=True, env={**os.environ, "PYTHONPATH": REPO})
        if result.returncode != 0:
            raise SystemExit(f"{overrides or 'default'} in {precision}: {result.stderr.strip()}")
        return [json.loads(line.split(" ", 1)[1]) for line in result.stdout.splitlines() if line.startswith("EPOCH ")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="a folder holding train/ and val/ from the preprocess stage")
    parser.add_argument("--epochs-cap", type=int, default=2)
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    args = parser.parse_args()
    bound = 3 * math.log(10)
    runs = []
    for name, overrides in [("default", {}), ("fast", preset.load("fast")), ("best", preset.load("best"))]:
        for precision in args.precisions:
            epochs = epoch_losses(args.data, overrides, precision, args.epochs_cap)
            worst = max(epoch["loss"] for epoch in epochs)
            runs.append({"params": name, "precision": precision, "epochs": epochs, "max_loss": worst,
                         "margin": bound / worst})
            print(f"| {name} | {precision} | {len(epochs)} | {worst:.4f} | {bound / worst:.0f}x |", flush=True)
    from mnist_cnn.machine import describe
    result = {"bound": bound, "epochs_cap": args.epochs_cap, "machine": describe(), "runs": runs}
    with open(os.path.join(REPO, "bench", "results", "divergence_margin.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
