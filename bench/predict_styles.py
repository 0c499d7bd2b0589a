"""Accuracy and speed of the predict command (mnist_cnn/predict.py) on the MNIST test set written out as image files.

    python -m bench.predict_styles     # needs data/raw/dataset.npz and models/model.keras (dvc repro)

Writes the 10,000 test images as PNG files in several styles, classifies each folder with the
predict command (one process per style, as a user would run it), and writes
bench/results/predict_styles.json and a markdown table.
"""
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

from tools.project import REPO


def off_centre(image, rng):
    canvas = np.zeros((64, 64), np.uint8)
    top, left = rng.integers(0, 64 - 28, size=2)
    canvas[top: top + 28, left: left + 28] = image
    return canvas


STYLES = {  # name -> how to draw one test image (uint8 28 x 28, light ink on black)
    "as in MNIST (light on dark, 28x28)": lambda image, rng: image,
    "dark on light": lambda image, rng: 255 - image,
    "enlarged to 200x200": lambda image, rng: np.asarray(
        Image.fromarray(image).resize((200, 200), Image.Resampling.BILINEAR)),
    "shifted off-centre in 64x64": off_centre,
    "dark on light, 200x200, off-centre": lambda image, rng: 255 - np.asarray(
        Image.fromarray(off_centre(image, rng)).resize((200, 200), Image.Resampling.BILINEAR)),
}


def main():
    with np.load(os.path.join(REPO, "data", "raw", "dataset.npz")) as raw:
        images, labels = raw["x_test"], raw["y_test"]
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for number, (style, draw) in enumerate(STYLES.items()):
            folder = os.path.join(scratch, f"style{number}")
            os.makedirs(folder)
            for i, image in enumerate(images):
                Image.fromarray(draw(image, rng)).save(os.path.join(folder, f"{i:05d}.png"))
            result = subprocess.run(
                [sys.executable, "-m", "mnist_cnn.predict", "--json",
                 "--model", os.path.join(REPO, "models", "model.keras"), folder],
                cwd=REPO, capture_output=True, text=True, check=True)
            predictions = json.loads(result.stdout)
            predicted = np.array([int(p["label"]) for p in predictions])
            rate = float(re.search(r"([\d.]+) images/s", result.stderr).group(1))
            rows.append({"style": style, "images": len(predictions), "accuracy": float(np.mean(predicted == labels)),
                         "images_per_second": rate})
            print(f"{style:<40} accuracy {rows[-1]['accuracy']:.4f}  {rate:.0f} images/s", flush=True)
    with open(os.path.join(REPO, "bench", "results", "predict_styles.json"), "w") as f:
        json.dump({"model": "models/model.keras of the committed run", "styles": rows}, f, indent=2)
        f.write("\n")
    print("\n| style | test accuracy | images/s |\n|---|---|---|")
    for row in rows:
        print(f"| {row['style']} | {row['accuracy']:.4f} | {row['images_per_second']:.0f} |")


if __name__ == "__main__":
    main()
