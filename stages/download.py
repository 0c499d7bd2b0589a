"""Stage download: fetch the dataset named by data.dataset, verify its content, write data/raw/dataset.npz.

mnist and fashion_mnist come from the first good source (mnist_cnn/sources.py: DATASET_MIRRORS,
Keras' cache, system folders, the official URLs), verified against pinned digests. folder: the images
under data.path, one subfolder per class, normalised to data.folder.* (mnist_cnn/image_folders.py).
npz: the user's own Keras-layout arrays at data.path, as they are.
"""
import argparse
import collections
import os

import numpy as np

from mnist_cnn.datasets import DATASETS
from mnist_cnn.errors import UserError
from mnist_cnn.files import write_npz
from mnist_cnn.image_folders import load_folder
from mnist_cnn.params import CUSTOM_NPZ, FOLDER, load_params
from mnist_cnn.runner import run
from mnist_cnn.sources import SourceError, download, keras_cache_dir, parse_mirrors, read_npz

MAX_CLASSES = 1000  # a user's .npz may label up to this many classes (docs/data.md)


def class_names_for_labels(arrays, source):
    """The class names of a user's labels: its own class_names array, checked, or "0".."K-1".

    Every check runs before anything the size of the largest label is allocated: one stray label of
    ten million would otherwise ask for ten million classes.
    """
    labels = {split: np.asarray(arrays[f"y_{split}"]) for split in ("train", "test")}
    for split, y in labels.items():
        if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_)):
            raise UserError(f"{source}: y_{split} has dtype {y.dtype} and shape {y.shape}; expected a 1-D array of "
                            f"integer class labels 0..K-1 (convert text labels to integers and add class_names)")
        if y.size and (int(y.min()) < 0 or int(y.max()) >= MAX_CLASSES):
            raise UserError(f"{source}: y_{split} holds labels {int(y.min())}..{int(y.max())}; expected 0..K-1 with "
                            f"K at most {MAX_CLASSES}")
    present = np.unique(np.concatenate([y.astype(np.int64) for y in labels.values()]))
    if len(present) < 2:
        raise UserError(f"{source}: every label is {present.tolist()}; a classifier needs two classes or more")
    if "class_names" not in arrays:
        return np.array([str(c) for c in range(int(present.max()) + 1)])
    names = np.asarray(arrays["class_names"])
    if names.ndim != 1 or names.dtype.kind not in "UST":
        raise UserError(f"{source}: class_names has shape {names.shape} and dtype {names.dtype}; expected a 1-D "
                        f"array of names")
    names = names.astype(str)
    if len(names) <= present.max():
        raise UserError(f"{source}: class_names has {len(names)} names but the labels go up to {int(present.max())}; "
                        f"give one name per class 0..{int(present.max())}")
    duplicated = sorted(name for name, count in collections.Counter(names.tolist()).items() if count > 1)
    if duplicated:
        raise UserError(f"{source}: class_names repeats {', '.join(map(repr, duplicated))}; "
                        f"give each class its own name")
    return names


def load_custom(path):
    """The user's own Keras-layout .npz (data.path): its arrays, labels and class names checked."""
    if not os.path.isfile(path):
        raise UserError(f"data.path = {path!r} is not a file: point it at your .npz "
                               f"with x_train, y_train, x_test, y_test")
    try:
        arrays = read_npz(path, optional=("class_names",))  # one read of the file, names included
    except SourceError as e:
        raise UserError(f"data.path: {e}; it needs the arrays x_train, y_train, x_test, y_test")
    arrays["class_names"] = class_names_for_labels(arrays, path)
    return arrays


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="where to write the verified arrays (.npz)")
    args = parser.parse_args(argv)
    all_params = load_params()
    params = all_params["data"]

    if params["dataset"] == FOLDER:
        arrays = load_folder(params["path"], params["folder"], all_params["seed"])
    elif params["dataset"] == CUSTOM_NPZ:
        arrays = load_custom(params["path"])
    else:
        spec = DATASETS[params["dataset"]]
        roots = parse_mirrors(os.environ.get("DATASET_MIRRORS")) + [keras_cache_dir(), *spec.local_dirs]
        arrays = download(spec, roots)
        arrays["class_names"] = np.array(spec.class_names)
    write_npz(args.output, arrays)


if __name__ == "__main__":
    run(main)
