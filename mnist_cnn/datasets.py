"""The dataset registry: each published dataset's names, sources, pinned digests and class names.

The download stage reads it to find and verify a dataset; nothing else needs it. The values of
data.dataset that are not in the registry (a user's folder or .npz) are named in params.py.
"""
import hashlib
from dataclasses import dataclass

import numpy as np

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
ARRAY_NAMES = tuple(IDX_FILES)


@dataclass(frozen=True)
class Dataset:
    """Where a dataset comes from and how to recognise the real thing."""

    name: str
    class_names: tuple
    digests: dict  # array name -> sha256 of the C-contiguous uint8 array bytes
    npz_name: str = ""  # file name of the Keras-layout .npz, if the dataset is published as one
    subdirs: tuple = ()  # folder names a mirror may keep the files under
    local_dirs: tuple = ()  # folders a system package installs the files to
    urls: tuple = ()  # official sources: full .npz URLs, or prefixes (ending in /) of the four IDX files


DATASETS = {
    "mnist": Dataset(
        name="mnist",
        class_names=tuple(str(d) for d in range(10)),
        digests={
            "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
            "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
            "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
            "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
        },
        npz_name="mnist.npz",
        subdirs=("mnist",),
        urls=(
            "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
        ),
    ),
    "fashion_mnist": Dataset(
        name="fashion_mnist",
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        digests={
            "x_train": "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
            "y_train": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
            "x_test": "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
            "y_test": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
        },
        subdirs=("fashion_mnist", "fashion-mnist"),
        local_dirs=("/usr/share/datasets/fashion-mnist",),
        urls=(
            "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        ),
    ),
}


def array_digest(array):
    """sha256 of an array's C-contiguous bytes: the content identity of a dataset array."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
