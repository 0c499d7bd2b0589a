"""Stage download: fetch the dataset named by data.dataset, verify its content, write data/raw/dataset.npz.

mnist and fashion_mnist come from the first good source (mnist_cnn/sources.py: DATASET_MIRRORS,
Keras' cache, system folders, the official URLs), verified against pinned digests. folder: the images
under data.path, one subfolder per class, normalised to data.folder.* (mnist_cnn/image_folders.py).
npz: the user's own Keras-layout arrays at data.path, as they are.
"""
import argparse
import os

import numpy as np

from mnist_cnn.datasets import DATASETS
from mnist_cnn.errors import UserError
from mnist_cnn.files import write_npz
from mnist_cnn.image_folders import load_folder
from mnist_cnn.params import CUSTOM_NPZ, FOLDER, load_params
from mnist_cnn.runner import run
from mnist_cnn.sources import SourceError, download, keras_cache_dir, parse_mirrors, read_npz


def load_custom(path):
    """The user's own Keras-layout .npz (data.path): copied as it is; preprocess checks its content."""
    if not os.path.isfile(path):
        raise UserError(f"data.path = {path!r} is not a file: point it at your .npz "
                               f"with x_train, y_train, x_test, y_test")
    try:
        arrays = read_npz(path, optional=("class_names",))  # one read of the file, names included
    except SourceError as e:
        raise UserError(f"data.path: {e}; it needs the arrays x_train, y_train, x_test, y_test")
    if "class_names" in arrays:
        arrays["class_names"] = arrays["class_names"].astype(str)
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
        labels = np.concatenate([arrays["y_train"].ravel(), arrays["y_test"].ravel()])
        if "class_names" not in arrays and labels.size and np.issubdtype(labels.dtype, np.integer):
            arrays["class_names"] = np.array([str(c) for c in range(int(labels.max()) + 1)])
    else:
        spec = DATASETS[params["dataset"]]
        roots = parse_mirrors(os.environ.get("DATASET_MIRRORS")) + [keras_cache_dir(), *spec.local_dirs]
        arrays = download(spec, roots)
        arrays["class_names"] = np.array(spec.class_names)
    write_npz(args.output, arrays)


if __name__ == "__main__":
    run(main)
