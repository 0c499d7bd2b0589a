"""The two paths of the predict command, in one run: the ONNX file on onnxruntime against the Keras model on
TensorFlow. Start-up time, the command's images/s, and the model's own images/s.

    python -m bench.predict_paths     # needs models/model.keras, models/model.onnx and data/processed (dvc repro)

- start-up: wall time of `python -m mnist_cnn.predict --model M one.png`, the median of ROUNDS runs, the two
  paths alternating so that a busy moment of the machine hits both alike;
- command: images/s the command reports for the 10,000 test images in one .npy (reading, normalising each
  image, classifying), the median of ROUNDS runs;
- model only: images/s of Classifier.predict on the test set as float32, batch 512, in this process, after
  one warm-up pass, the median of ROUNDS passes.

Writes bench/results/predict_paths.json; prints a markdown table with the ONNX / Keras ratios.
"""
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from mnist_cnn.files import write_json
from mnist_cnn.machine import describe
from mnist_cnn.prepare import read_split
from mnist_cnn.runtimes import open_model
from tools.project import REPO

ROUNDS = 5
MODELS = {"keras": os.path.join(REPO, "models", "model.keras"), "onnx": os.path.join(REPO, "models", "model.onnx")}
RESULTS = os.path.join(REPO, "bench", "results", "predict_paths.json")


def predict_command(model, *paths):
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "mnist_cnn.predict", "--model", model, *paths],
                            cwd=REPO, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, float(re.search(r"([\d.]+) images/s", result.stderr).group(1))


def main():
    x_test, _, _ = read_split(os.path.join(REPO, "data", "processed", "test"))
    pixels = np.round(x_test[..., 0] * 255).astype(np.uint8)
    timings = {name: {"startup_s": [], "command_images_per_s": [], "model_images_per_s": []} for name in MODELS}
    with tempfile.TemporaryDirectory() as scratch:
        one, many = os.path.join(scratch, "one.png"), os.path.join(scratch, "test.npy")
        Image.fromarray(pixels[0]).save(one)
        np.save(many, pixels)
        for _ in range(ROUNDS):
            for name, model in MODELS.items():
                timings[name]["startup_s"].append(predict_command(model, one)[0])
                timings[name]["command_images_per_s"].append(predict_command(model, many)[1])
    for name, model in MODELS.items():
        classifier = open_model(model)
        classifier.predict(x_test)  # warm-up: graph tracing, memory arenas
        for _ in range(ROUNDS):
            start = time.perf_counter()
            classifier.predict(x_test, batch_size=512)
            timings[name]["model_images_per_s"].append(len(x_test) / (time.perf_counter() - start))

    medians = {name: {key: statistics.median(values) for key, values in t.items()} for name, t in timings.items()}
    ratios = {key: medians["onnx"][key] / medians["keras"][key] for key in medians["onnx"]}
    results = {"machine": describe(), "images": len(x_test), "rounds": ROUNDS, "median": medians,
               "onnx_over_keras": ratios, "runs": timings}
    write_json(RESULTS, results)
    machine = results["machine"]
    print(f"{machine['cpu']}, {machine['cores']} cores ({', '.join(machine['cpu_flags'])}); "
          f"{len(x_test)} test images; medians of {ROUNDS} runs\n")
    print("| | Keras (TensorFlow) | ONNX (onnxruntime) | ONNX / Keras |")
    print("|---|---:|---:|---:|")
    for key, label, unit in (("startup_s", "start-up, one image", "s"),
                             ("command_images_per_s", "command, images/s", ""),
                             ("model_images_per_s", "model only, images/s", "")):
        k, o = medians["keras"][key], medians["onnx"][key]
        fmt = (lambda v: f"{v:.2f} s") if unit else (lambda v: f"{v:,.0f}")
        print(f"| {label} | {fmt(k)} | {fmt(o)} | {ratios[key]:.2f} |")


if __name__ == "__main__":
    main()
