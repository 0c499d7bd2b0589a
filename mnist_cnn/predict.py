"""Classify your own images with the trained model.

    python -m mnist_cnn.predict [--model MODEL] [--trust-model] [--json] [--top-k K] PATH...

MODEL is models/model.onnx where the export stage wrote it (run by onnxruntime, without TensorFlow:
the faster path, docs/predict.md), else models/model.keras; or name any .keras, .onnx, .tflite file
or SavedModel folder. A SavedModel or .tflite file is a program: it runs only when it is the project's
own export (its digest in dvc.lock) or with --trust-model (docs/predict.md).

PATHs are image files (PNG, JPEG, BMP, GIF, TIFF, ...), folders (every image inside, sorted) or
.npy/.npz arrays of images. Each image is brought to the model's input first by the normalisation
folder datasets use too (images.to_model_image: MNIST's form for grayscale models), whatever its size,
colours or background. A file that can't be read is reported in one line on
stderr and the others are still classified; the exit status is then 1.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

from mnist_cnn.errors import UserError
from mnist_cnn.files import read_arrays
from mnist_cnn.images import IMAGE_SUFFIXES, BadImage, check_regular_file, printable, read_image, to_model_image
from mnist_cnn.runner import run
from mnist_cnn.runtimes import class_names_for, default_model, open_model, top_classes

BATCH_SIZE = 512
ARRAY_SUFFIXES = (".npy", ".npz")


def expand(paths, problems):
    """Files to read, in order: folders become their image and array files, sorted by name; a folder
    with none is added to problems."""
    for path in paths:
        if os.path.isdir(path):
            found = 0
            for root, dirs, files in os.walk(path):  # symbolic links to folders are not followed: no loops
                dirs.sort()
                for name in sorted(files):
                    if name.lower().endswith(IMAGE_SUFFIXES + ARRAY_SUFFIXES):
                        found += 1
                        yield os.path.join(root, name)
            if not found:
                problems.append((path, f"no image files in this folder (looked for {', '.join(IMAGE_SUFFIXES)}, "
                                       f"{', '.join(ARRAY_SUFFIXES)})"))
        else:
            yield path


def images_in_array_file(path):
    """(name, image) pairs from a .npy or .npz file of images: N x H x W, N x H x W x 1 or 3, one H x W
    image, or one H x W x 3 colour image."""
    check_regular_file(path)
    try:
        arrays = read_arrays(path).items()
    except ValueError as e:
        raise BadImage(f"not a readable {os.path.splitext(path)[1]} file ({e})")
    for key, array in arrays:
        where = f"{path}[{key}]" if key else path
        if array.ndim == 4 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3):  # one image, grayscale or colour
            array = array[None]
        if array.ndim not in (3, 4) or not np.issubdtype(array.dtype, np.number):
            raise BadImage(f"{where} has shape {array.shape} and dtype {array.dtype}; "
                                  f"expected (N, H, W) or (N, H, W, 3) numbers")
        for i, image in enumerate(array):
            yield f"{where}[{i}]", image


def images(paths, problems, size, colour):
    """(name, model-ready image) for every readable image; unreadable ones are added to problems."""
    for path in expand(paths, problems):
        try:
            if path.lower().endswith(ARRAY_SUFFIXES):
                for name, pixels in images_in_array_file(path):
                    try:
                        yield name, to_model_image(pixels, size, colour)
                    except BadImage as e:
                        problems.append((name, str(e)))
            else:
                yield path, to_model_image(read_image(path, colour), size, colour)
        except BadImage as e:
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


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders, or .npy/.npz arrays")
    parser.add_argument("--model", help="a .keras, .onnx or .tflite file or a SavedModel folder (default: "
                                         "models/model.onnx where it exists, else models/model.keras)")
    parser.add_argument("--trust-model", action="store_true",
                        help="run a SavedModel or .tflite file that is not this project's own export: they are "
                             "programs that can read and write files")
    parser.add_argument("--json", action="store_true", help="print one JSON array instead of lines")
    parser.add_argument("--top-k", type=int, default=1, metavar="K", help="also list the K most likely classes")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        raise UserError(f"--top-k {args.top_k}: K must be 1 or more")

    model = open_model(args.model or default_model(), trust=args.trust_model)
    height, width, channels = model.image_shape
    if height != width:
        raise UserError(f"{model.path} takes {height}x{width} images; predict brings images to a square")
    class_names = class_names_for(model)

    problems, results, start = [], [], time.perf_counter()
    for batch in batches(images(args.paths, problems, height, channels == 3), BATCH_SIZE):
        x = np.stack([pixels for _, pixels in batch]).reshape(-1, height, width, channels)
        probabilities = model.predict(x, batch_size=BATCH_SIZE)
        for (name, _), p in zip(batch, probabilities):
            top = top_classes(p, class_names, args.top_k)
            result = {"path": printable(name), **top[0]}
            if args.top_k > 1:
                result["top_k"] = top
            results.append(result)
            if not args.json:
                extra = "  " + "  ".join(f"{r['label']}:{r['probability']:.3f}" for r in result["top_k"]) \
                    if args.top_k > 1 else ""
                print(f"{printable(name)}\t{result['label']}\t{result['probability']:.4f}{extra}")
    elapsed = time.perf_counter() - start
    if args.json:
        json.dump(results, sys.stdout, indent=1)
        print()
    for name, problem in problems:
        print(f"error: {printable(name)}: {problem}", file=sys.stderr)
    rate = len(results) / elapsed if elapsed > 0 else 0.0
    print(f"predict: {len(results)} images classified, {len(problems)} failed, {rate:.0f} images/s "
          f"({model.path}, {model.format})", file=sys.stderr)
    if problems:
        sys.exit(1)
    if not results:
        raise UserError(f"no images found in {', '.join(map(printable, args.paths))}")


if __name__ == "__main__":
    run(main, command="predict")
