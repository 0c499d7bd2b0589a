"""Stage preprocess: check the raw arrays, hold out a validation split, give the images a channel axis.

Writes the folders train/, val/ and test/ into the output folder, each a split as shards of at most
data.shard_mb MiB of images (mnist_cnn/shards.py): part-00000.npz, ... with x, uint8 (N, H, W, C)
with C = 1 for grayscale and 3 for RGB (scaled when train and evaluate read it); y, integer labels;
class_names; and manifest.json, which lists them (their images, bytes and SHA-256) for the readers to check.
MNIST's splits are one shard each. The validation split comes from the training set
only; the test set is kept apart for the evaluate stage.
"""
import argparse
import math
import os
import sys

import numpy as np

from mnist_cnn.errors import UserError
from mnist_cnn.files import load_npz
from mnist_cnn.params import PUBLISHED_DATASETS, load_params
from mnist_cnn.prepare import with_channel_axis
from mnist_cnn.runner import run
from mnist_cnn.shards import rows_per_shard, write_split


def check_raw(arrays, source):
    """Stop with one line if the raw arrays are not N x H x W (x 3) uint8 images with labels 0..K-1."""
    for name in ("x_train", "y_train", "x_test", "y_test", "class_names"):  # the layout of keras.datasets
        if name not in arrays:
            raise UserError(f"{source} lacks the array '{name}': run `dvc repro download` again")
    num_classes = len(arrays["class_names"])
    image_shape = arrays["x_train"].shape[1:]
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim not in (3, 4) or x.shape[0] == 0 or min(x.shape[1:3]) < 8 or (x.ndim == 4 and x.shape[3] != 3):
            raise UserError(f"{source}: x_{split} has shape {x.shape}; expected (N, H, W) grayscale or "
                                   f"(N, H, W, 3) RGB images, e.g. (N, 28, 28)")
        if x.shape[1:] != image_shape:
            raise UserError(f"{source}: x_{split} images are {x.shape[1:]} but x_train's are {image_shape}")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            bad = int(np.flatnonzero(~np.isfinite(x).reshape(len(x), -1).all(axis=1))[0])
            raise UserError(f"{source}: x_{split} holds NaN or infinite values (first in image {bad}); "
                                   f"expected uint8 pixels 0-255")
        if x.dtype != np.uint8:
            raise UserError(f"{source}: x_{split} has dtype {x.dtype}; expected uint8 pixels 0-255")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise UserError(f"{source}: y_{split} has dtype {y.dtype} and shape {y.shape}; "
                                   f"expected a 1-D array of integer labels")
        if len(y) != len(x):
            raise UserError(f"{source}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels")
        if y.min() < 0 or y.max() >= num_classes:
            raise UserError(f"{source}: y_{split} holds labels {y.min()}..{y.max()}; "
                                   f"expected 0..{num_classes - 1} (one per class name)")


def split_method(split, dataset):
    """data.split: auto is the notebook's tail for the published datasets, whose order is already mixed,
    and stratified for your own data, which is often stored class by class (a folder's always is)."""
    if split != "auto":
        return split
    return "tail" if dataset in PUBLISHED_DATASETS else "stratified"


def check_every_class_is_split(y, y_fit, y_val, class_names, method):
    """No class may be missing from training; one missing from validation is said in one line."""
    present = set(np.unique(y).tolist())
    for part, labels in (("training", y_fit), ("validation", y_val)):
        missing = sorted(present - set(np.unique(labels).tolist()))
        if not missing:
            continue
        names = ", ".join(str(class_names[c]) for c in missing[:10]) + (" ..." if len(missing) > 10 else "")
        fix = "set data.split: stratified" if method == "tail" else "add images of those classes"
        if part == "training":
            raise UserError(f"data.split = {method} leaves {len(missing)} class(es) out of the training set ({names}); "
                            f"{fix}")
        print(f"preprocess: warning: data.split = {method} leaves {len(missing)} class(es) out of the validation set "
              f"({names}), so validation accuracy does not measure them; {fix}", file=sys.stderr)


def split_train_val(x, y, val_split, method, seed):
    """Hold out val_split of the training data: its tail (as Keras' validation_split) or a stratified sample."""
    if method == "tail":
        split_at = int(math.floor(len(x) * (1.0 - val_split)))  # the formula Keras' fit() uses
        return (x[:split_at], y[:split_at]), (x[split_at:], y[split_at:])
    from sklearn.model_selection import train_test_split  # here: scikit-learn's import is most of a tail run's time

    index = np.arange(len(x))
    try:
        train_idx, val_idx = train_test_split(index, test_size=val_split, random_state=seed, stratify=y)
    except ValueError as e:
        raise UserError(f"data.split = stratified is impossible here ({e}); "
                               f"use more data or data.split: tail")
    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    return (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])


def mix_for_streaming(x, y, shard_mb, seed):
    """A training split of several shards is streamed through a shuffle buffer, which mixes only the images of
    nearby shards: put it in a seeded random order first, so each shard holds every class (a folder is stored
    class by class). A split of one shard keeps its order: it is shuffled whole each epoch."""
    if len(x) <= rows_per_shard(x.shape[1:], shard_mb):
        return x, y
    order = np.random.default_rng(seed).permutation(len(x))
    return x[order], y[order]


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", help="the download stage's .npz")
    parser.add_argument("output_dir", help="folder for the train/, val/ and test/ shard folders")
    args = parser.parse_args(argv)
    params = load_params()
    data = params["data"]

    raw = load_npz(args.raw, "dvc repro download")
    check_raw(raw, args.raw)
    x_train, y_train = raw["x_train"], raw["y_train"]
    if data["limit"] is not None:
        x_train, y_train = x_train[: data["limit"]], y_train[: data["limit"]]
    method = split_method(data["split"], data["dataset"])
    (x_fit, y_fit), (x_val, y_val) = split_train_val(x_train, y_train, data["val_split"], method, params["seed"])
    if len(x_fit) == 0 or len(x_val) == 0:
        raise UserError(f"data.limit = {data['limit']} with data.val_split = {data['val_split']} "
                        f"leaves an empty split; raise data.limit")
    class_names = raw["class_names"]
    check_every_class_is_split(y_train, y_fit, y_val, class_names, method)

    x_fit, y_fit = mix_for_streaming(x_fit, y_fit, data["shard_mb"], params["seed"])
    for name, x, y in (("train", x_fit, y_fit), ("val", x_val, y_val), ("test", raw["x_test"], raw["y_test"])):
        shards = write_split(os.path.join(args.output_dir, name), with_channel_axis(x), y.astype(np.int64),
                             class_names, data["shard_mb"])
        print(f"preprocess: {name}: {len(x)} images in {shards} shard(s)")


if __name__ == "__main__":
    run(main)
