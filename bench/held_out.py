"""Accuracy on digits that are not MNIST's: low-resolution handwriting by other writers, and printed digits.

    python -m bench.held_out [--model LABEL=PATH ...] [--images DIR]

Two held-out sets, built deterministically and written as image files, as a user would bring them:

- handwriting: scikit-learn's bundled digits (UCI optdigits: 1797 images of 43 writers, 8x8 pixels
  of 0-16, offline), each dark ink on white, enlarged 4x to 32x32 pixel by pixel (nearest neighbour:
  a scan at low resolution, its pixels kept as blocks);
- printed: the digits 0-9 drawn with every font fc-list shows, dark on light, at three sizes and
  positions.

Each set is classified by the predict command (`python -m mnist_cnn.predict --json`, one process
per set and model), so each image goes through the project's own normalisation (mnist_cnn/images.py).
Prints a markdown table and writes bench/results/held_out.json: per model, the accuracy on each set
and per class. Default model: models/model.keras.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tools.project import REPO

HANDWRITING_SCALE = 4  # 8x8 -> 32x32
# (font size in pixels, canvas side, top-left of the text as a fraction of the canvas): small, medium and
# large, placed in different corners; the normalisation crops to the ink, so what changes is the resampling
PRINTED_LAYOUTS = ((16, 40, (0.15, 0.1)), (40, 96, (0.3, 0.2)), (96, 200, (0.1, 0.25)))


def handwriting_images():
    """(label, uint8 image) for each of scikit-learn's 1797 8x8 digits: dark ink on white, enlarged 4x in blocks."""
    from sklearn.datasets import load_digits  # imported here: the printed set and the tests of it need none
    digits = load_digits()
    for image, label in zip(digits.images, digits.target):
        pixels = np.round(255 - image * (255 / 16)).astype(np.uint8)  # 0-16 ink -> dark on light, as scanned
        side = 8 * HANDWRITING_SCALE
        yield int(label), np.asarray(Image.fromarray(pixels).resize((side, side), Image.Resampling.NEAREST))


def system_fonts():
    """The font files fc-list shows, sorted; without fontconfig, the TrueType/OpenType files under /usr/share/fonts."""
    try:
        listed = subprocess.run(["fc-list", ":", "file"], capture_output=True, text=True, check=True).stdout
        files = {line.split(":")[0].strip() for line in listed.splitlines() if line.strip()}
    except (OSError, subprocess.CalledProcessError):
        files = set(glob.glob("/usr/share/fonts/**/*.[ot]tf", recursive=True))
    return sorted(path for path in files if path.lower().endswith((".ttf", ".otf")))


def printed_images(fonts):
    """(label, font name, uint8 image) for each digit, font and PRINTED_LAYOUTS entry: dark on light."""
    for font_path in fonts:
        name = os.path.splitext(os.path.basename(font_path))[0]
        for size, side, (left, top) in PRINTED_LAYOUTS:
            font = ImageFont.truetype(font_path, size)
            for label in range(10):
                image = Image.new("L", (side, side), 255)
                ImageDraw.Draw(image).text((left * side, top * side), str(label), fill=0, font=font)
                yield label, f"{name}-{size}", np.asarray(image)


def write_set(folder, items):
    """Write (label, name, image) items as folder/<label>/<name>.png; return how many per label."""
    counts = [0] * 10
    for label, name, image in items:
        os.makedirs(os.path.join(folder, str(label)), exist_ok=True)
        Image.fromarray(image).save(os.path.join(folder, str(label), f"{name}.png"))
        counts[label] += 1
    return counts


def build_sets(root, fonts):
    """Both held-out sets as image files under root/handwriting and root/printed; {set: images per label}."""
    handwriting = ((label, f"{i:04d}", image) for i, (label, image) in enumerate(handwriting_images()))
    return {"handwriting": write_set(os.path.join(root, "handwriting"), handwriting),
            "printed": write_set(os.path.join(root, "printed"), printed_images(fonts))}


def classify(model, folder):
    """(true labels, predicted labels) of a set's images, by one run of the predict command."""
    result = subprocess.run([sys.executable, "-m", "mnist_cnn.predict", "--json", "--model", model, folder],
                            cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"held_out: predict failed on {folder} with {model}:\n{result.stderr}")
    predictions = json.loads(result.stdout)
    truth = np.array([int(os.path.basename(os.path.dirname(p["path"]))) for p in predictions])
    return truth, np.array([int(p["label"]) for p in predictions])


def scores(truth, predicted):
    """Accuracy overall and per class (None for a class with no images), and the number of images."""
    per_class = {str(c): round(float(np.mean(predicted[truth == c] == c)), 4) if np.any(truth == c) else None
                 for c in range(10)}
    return {"images": len(truth), "accuracy": round(float(np.mean(predicted == truth)), 4), "per_class": per_class}


def markdown(results):
    """The results as markdown: accuracy per set, then the handwriting's accuracy per class."""
    lines = ["| model | handwriting (8x8, 43 writers) | printed (fonts) |", "|---|---|---|"]
    lines += [f"| {r['model']} | {r['handwriting']['accuracy']:.4f} | {r['printed']['accuracy']:.4f} |"
              for r in results]
    lines += ["", "| model | " + " | ".join(str(c) for c in range(10)) + " |", "|---" * 11 + "|"]
    lines += [f"| {r['model']} | " + " | ".join(f"{r['handwriting']['per_class'][str(c)]:.2f}" for c in range(10))
              + " |" for r in results]
    return "\n".join(lines)


def parse_models(specs):
    """--model LABEL=PATH (or a bare PATH, labelled by itself) as [(label, path)]."""
    models = [spec.split("=", 1) if "=" in spec else (spec, spec) for spec in specs]
    return models or [("default", os.path.join(REPO, "models", "model.keras"))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], metavar="LABEL=PATH",
                        help="a model to measure (repeatable); default: default=models/model.keras")
    parser.add_argument("--images", metavar="DIR", help="write the sets here and keep them (default: a temp folder)")
    parser.add_argument("--output", default=os.path.join(REPO, "bench", "results", "held_out.json"))
    args = parser.parse_args()
    fonts = system_fonts()
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        root = os.path.abspath(args.images or scratch)
        counts = build_sets(root, fonts)
        for label, path in parse_models(args.model):
            result = {"model": label, "path": path}
            for name in counts:
                result[name] = scores(*classify(os.path.abspath(path), os.path.join(root, name)))
            results.append(result)
            print(f"{label}: handwriting {result['handwriting']['accuracy']:.4f}, "
                  f"printed {result['printed']['accuracy']:.4f}", flush=True)
    sets = {"handwriting": f"sklearn.datasets.load_digits: 8x8 (0-16) dark on white, enlarged {HANDWRITING_SCALE}x "
                           f"(nearest)", "printed": f"{len(fonts)} fonts x {len(PRINTED_LAYOUTS)} sizes x 10 digits",
            "images_per_class": counts}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"sets": sets, "models": results}, f, indent=2)
        f.write("\n")
    print("\n" + markdown(results))


if __name__ == "__main__":
    main()
