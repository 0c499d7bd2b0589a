"""Classify your own images with the trained model.

    python stages/predict.py [--model models/model.keras] [--json] [--top-k K] PATH...

PATHs are image files (PNG, JPEG, BMP, GIF, TIFF, ...), folders (every image inside, sorted) or
.npy/.npz arrays of 28 x 28 images. Each image is brought to MNIST's form first (common.mnist_style),
whatever its size, colours or background. A file that can't be read is reported in one line on
stderr and the others are still classified; the exit status is then 1.
"""
import argparse
import json
import os
import sys
import time
import warnings
import zipfile

import numpy as np
from PIL import Image, UnidentifiedImageError

import common

MAX_PIXELS = 50_000_000  # larger images are refused (decompression bombs): 50 megapixels
BATCH_SIZE = 512
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm"}
ARRAY_SUFFIXES = {".npy", ".npz"}

Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class BadInput(Exception):
    """One input can't be classified; the others go on."""


def expand(paths):
    """Files to read, in order: folders become their image and array files, sorted by name."""
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES | ARRAY_SUFFIXES:
                        yield os.path.join(root, name)
        else:
            yield path


def grayscale(image):
    """A 2-D float array of the image's brightness; transparency is laid on white, 16-bit kept exact."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return np.asarray(image, dtype=np.float32)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("L"), dtype=np.float32)


def read_image(path):
    """The pixels of one image file as a 2-D float array, or BadInput saying what is wrong."""
    if os.path.getsize(path) == 0:
        raise BadInput("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below, in our words
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise BadInput(f"{width}x{height} pixels is over the limit of {MAX_PIXELS:,}; scale it down")
                if width < 2 or height < 2:
                    raise BadInput(f"{width}x{height} pixels is too small to hold a digit")
                image.load()
                return grayscale(image)
    except UnidentifiedImageError:
        raise BadInput("not an image file (or in a format Pillow can't read)")
    except Image.DecompressionBombError as e:  # over twice the limit: Pillow refuses to open it
        raise BadInput(f"over the limit of {MAX_PIXELS:,} pixels ({e}); scale it down")
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise BadInput(f"broken image data ({e})")


def read_arrays(path):
    """(name, 2-D image) pairs from a .npy or .npz file of 28 x 28 images."""
    try:
        data = np.load(path, allow_pickle=False)
        arrays = [(key, data[key]) for key in data.files] if isinstance(data, np.lib.npyio.NpzFile) else [(None, data)]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise BadInput(f"not a readable {os.path.splitext(path)[1]} file ({e})")
    for key, array in arrays:
        where = f"{path}[{key}]" if key else path
        if array.ndim == 4 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3 or not np.issubdtype(array.dtype, np.number):
            raise BadInput(f"{where} has shape {array.shape} and dtype {array.dtype}; expected (N, H, W) numbers")
        for i, image in enumerate(array):
            yield f"{where}[{i}]", image


def images(paths, problems):
    """(name, 28 x 28 array) for every readable image; unreadable ones are added to problems."""
    for path in expand(paths):
        try:
            if not os.path.exists(path):
                raise BadInput("no such file or folder")
            if os.path.splitext(path)[1].lower() in ARRAY_SUFFIXES:
                for name, pixels in read_arrays(path):
                    try:
                        yield name, common.mnist_style(pixels)
                    except ValueError as e:
                        problems.append((name, str(e)))
            else:
                yield path, common.mnist_style(read_image(path))
        except (BadInput, ValueError) as e:
            problems.append((path, str(e)))


def batches(items, size):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def class_names_for(model, model_path):
    """Class names the train stage saved beside the model (classes.json), else the class indices."""
    names_file = os.path.join(os.path.dirname(model_path), "classes.json")
    if os.path.exists(names_file):
        with open(names_file) as f:
            names = json.load(f)
        if len(names) == model.output_shape[-1]:
            return names
    return [str(i) for i in range(model.output_shape[-1])]


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders, or .npy/.npz arrays")
    parser.add_argument("--model", default="models/model.keras", help="trained model (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON array instead of lines")
    parser.add_argument("--top-k", type=int, default=1, metavar="K", help="also list the K most likely classes")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        raise common.UserError(f"--top-k {args.top_k}: K must be 1 or more")

    common.quiet_tensorflow()
    model = common.load_model(args.model)
    class_names = class_names_for(model, args.model)
    if model.input_shape[1:] != (common.IMAGE_SIZE, common.IMAGE_SIZE, 1):
        raise common.UserError(f"{args.model} takes inputs of shape {model.input_shape[1:]}, not 28x28x1 images")

    problems, results, start = [], [], time.perf_counter()
    for batch in batches(images(args.paths, problems), BATCH_SIZE):
        x = np.stack([pixels for _, pixels in batch])[..., None]
        probabilities = model.predict(x, batch_size=BATCH_SIZE, verbose=0)
        for (name, _), p in zip(batch, probabilities):
            ranked = np.argsort(-p, kind="stable")[: args.top_k]
            result = {"path": name, "label": class_names[ranked[0]], "probability": float(p[ranked[0]])}
            if args.top_k > 1:
                result["top_k"] = [{"label": class_names[k], "probability": float(p[k])} for k in ranked]
            results.append(result)
            if not args.json:
                extra = "  " + "  ".join(f"{r['label']}:{r['probability']:.3f}" for r in result["top_k"]) \
                    if args.top_k > 1 else ""
                print(f"{name}\t{result['label']}\t{result['probability']:.4f}{extra}")
    elapsed = time.perf_counter() - start
    if args.json:
        json.dump(results, sys.stdout, indent=1)
        print()
    for name, problem in problems:
        print(f"error: {name}: {problem}", file=sys.stderr)
    rate = len(results) / elapsed if elapsed > 0 else 0.0
    print(f"predict: {len(results)} images classified, {len(problems)} failed, {rate:.0f} images/s",
          file=sys.stderr)
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    common.run(main)
