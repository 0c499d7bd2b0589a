"""Choose the presets on validation data: clean, under MNIST-C's corruptions, and at low resolution.

    python -m bench.presets [--candidates bench/preset_candidates.yaml] [--only NAME ...] [--data data/processed]
                            [--results bench/results/presets.json]

Each candidate in the candidates file (a name and its params.yaml keys over the defaults) is trained by
the train stage itself, alone on the machine, in a scratch folder on the processed splits (real MNIST:
run `dvc repro preprocess` first). Then its model is scored on

- the validation split as it is (`val`), and its expected calibration error (`val_ece`);
- the validation split under each of MNIST-C's 15 corruptions, as the robustness stage applies them to
  the test split (mnist_cnn/corruptions.py, seed 0): the mean is `val_corrupted`;
- the first 2000 validation digits rendered like a low-resolution scan (cropped to the ink, shrunk to
  8x8, written dark on white 4x in blocks, then the project's normalisation): `val_low_res`. It is the
  validation-side twin of bench/held_out.py's handwriting, which showed `best` failing there;

which is all the choice uses. For the record, and never for choosing, it also scores the test split
clean, its ECE (`test_ece`, as evaluate reports it) and under the corruptions (what the robustness
stage reports) and the two held-out sets of
bench/held_out.py (handwriting by other writers, printed digits), through the same normalisation as
the predict command. Training seconds are the stage's own `fit took` figure (validation included).

Writes bench/results/presets.json, or --results (one entry per candidate, merged with earlier runs of others,
with the machine it ran on: give each machine its own file) and prints a markdown table.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import yaml
from PIL import Image

from mnist_cnn.files import write_json
from mnist_cnn.machine import describe
from mnist_cnn.params import set_dotted
from tools.project import REPO

RESULTS = os.path.join(REPO, "bench", "results", "presets.json")
CANDIDATES = os.path.join(REPO, "bench", "preset_candidates.yaml")
LOW_RES_IMAGES = 2000
CORRUPTION_SEED = 0  # robustness.seed's default: the same draws as the stage's


def low_res(image):
    """A 28x28 MNIST digit as a low-resolution scan: cropped to its ink, shrunk to 8x8 (box filter), dark on
    white, enlarged 4x in blocks; then what the predict command does to any image (images.to_model_image)."""
    from bench.held_out import HANDWRITING_SCALE
    from mnist_cnn.images import to_model_image
    rows, cols = np.nonzero(image > 50)
    crop = image[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    small = np.asarray(Image.fromarray(crop).resize((8, 8), Image.Resampling.BOX))
    side = 8 * HANDWRITING_SCALE  # as bench/held_out.py enlarges the handwriting
    return to_model_image(np.asarray(Image.fromarray(255 - small).resize((side, side), Image.Resampling.NEAREST)))


def train(name, overrides, data, scratch):
    """Train one candidate with the train stage in scratch/name; returns (model path, fit seconds)."""
    folder = os.path.join(scratch, name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(REPO, "params.yaml")) as f:
        params = yaml.safe_load(f)
    set_dotted(params, overrides)
    with open(os.path.join(folder, "params.yaml"), "w") as f:
        yaml.safe_dump(params, f, sort_keys=False)
    model = os.path.join(folder, "model.keras")
    env = {**os.environ, "PYTHONPATH": REPO, "PYTHONHASHSEED": "0"}
    command = [sys.executable, "-m", "stages.train", os.path.join(data, "train"), os.path.join(data, "val"), model,
               os.path.join(folder, "log")]
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"bench: candidate {name} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return model, float(re.search(r"fit took ([\d.]+) s", result.stdout).group(1))


def held_out_sets():
    """The held-out sets of bench/held_out.py as normalised arrays: {set: (images, labels)}."""
    from bench.held_out import handwriting_images, printed_images, system_fonts
    from mnist_cnn.images import to_model_image
    handwriting = list(handwriting_images())
    printed = [(label, image) for label, _, image in printed_images(system_fonts())]
    return {name: (np.array([to_model_image(image) for _, image in pairs])[..., None],
                   np.array([label for label, _ in pairs]))
            for name, pairs in (("handwriting", handwriting), ("printed", printed))}


def score(model_path, data, sets):
    """The candidate's accuracies: on validation (used to choose) and on test and held-out (reported)."""
    from mnist_cnn.calibration import calibration
    from mnist_cnn.corruptions import accuracy_under_corruptions
    from mnist_cnn.model_files import load_model
    from mnist_cnn.params import load_params
    from mnist_cnn.shards import open_split, read_all
    from stages.robustness import batched

    predict = batched(load_model(model_path), 1000)

    def accuracy(images, labels):
        return round(float(np.mean(predict(images).argmax(axis=1) == labels)), 4)

    names = load_params(os.path.join(REPO, "params.yaml"))["robustness"]["corruptions"]
    scores = {}
    for split in ("val", "test"):
        accuracies, _, _ = accuracy_under_corruptions(predict, os.path.join(data, split), names, CORRUPTION_SEED)
        corrupted = [accuracies[name] for name in names]
        scores[split] = round(accuracies["clean"], 4)
        scores[f"{split}_corrupted"] = round(sum(corrupted) / len(corrupted), 4)
        scores[f"{split}_per_corruption"] = {name: round(accuracies[name], 4) for name in names}
        x, y = read_all(open_split(os.path.join(data, split)))
        scores[f"{split}_ece"] = round(calibration(predict(x.astype("float32") / 255), y)["ece"], 4)
    scores["val_low_res"] = accuracy(*sets["val_low_res"])
    for name in ("handwriting", "printed"):
        scores[name] = accuracy(*sets[name])
    return scores


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", default=CANDIDATES, help="YAML: {name: {dotted params key: value}}")
    parser.add_argument("--only", nargs="+", help="run only these candidates (the others' results are kept)")
    parser.add_argument("--keep", help="a folder to keep each candidate's model in, as NAME.keras")
    parser.add_argument("--data", default=os.path.join(REPO, "data", "processed"),
                        help="processed splits (train, val, test) of real MNIST")
    parser.add_argument("--results", default=RESULTS,
                        help="the JSON file to merge results into: one per machine, as it records one machine")
    args = parser.parse_args()
    with open(args.candidates) as f:
        candidates = yaml.safe_load(f)
    chosen = args.only or list(candidates)
    from mnist_cnn.shards import open_split, read_all  # after argparse: --help starts without NumPy's shards
    x_val, y_val = read_all(open_split(os.path.join(args.data, "val")))
    sets = held_out_sets()
    sets["val_low_res"] = (np.array([low_res(image[..., 0]) for image in x_val[:LOW_RES_IMAGES]])[..., None],
                           y_val[:LOW_RES_IMAGES])
    results = {}
    if os.path.exists(args.results):
        with open(args.results) as f:
            results = json.load(f)
    results["machine"] = describe()
    runs = results.setdefault("candidates", {})
    with tempfile.TemporaryDirectory() as scratch:
        for name in chosen:
            model, seconds = train(name, candidates[name], args.data, scratch)
            runs[name] = {"params": candidates[name], "train_seconds": seconds, **score(model, args.data, sets)}
            print(json.dumps({name: {k: v for k, v in runs[name].items() if "per_corruption" not in k}}), flush=True)
            if args.keep:
                os.makedirs(args.keep, exist_ok=True)
                os.replace(model, os.path.join(args.keep, f"{name}.keras"))
            shutil.rmtree(os.path.join(scratch, name))
            write_json(args.results, results)
    print("| candidate | training s | val | val corrupted | val low-res | test | test corrupted | handwriting "
          "| printed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, run in runs.items():
        figures = [run[key] for key in ("val", "val_corrupted", "val_low_res", "test", "test_corrupted", "handwriting",
                                        "printed")]
        print(f"| {name} | {run['train_seconds']:.0f} | " + " | ".join(f"{value:.4f}" for value in figures) + " |")


if __name__ == "__main__":
    main()
