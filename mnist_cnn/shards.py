"""A split on disk: a folder of shards, part-00000.npz, part-00001.npz, ..., each at most data.shard_mb MiB of images.

Each shard holds x (uint8 images, N x H x W x C), y (integer labels) and class_names. Preprocess
writes a split with write_split, byte-deterministically and atomically (the whole folder or nothing).
A split of one shard is read whole (prepare.read_split): MNIST's splits fit in one at the default
64 MiB, so its training keeps the notebook's full shuffle. A larger one is streamed shard by shard
(mnist_cnn/streaming.py), so memory is bounded by the shards in flight, not by the dataset.
"""
import math
import os
import re
from dataclasses import dataclass

import numpy as np

from mnist_cnn.errors import UserError
from mnist_cnn.files import array_shapes, atomic_dir, load_npz, read_arrays, write_npz

SHARD_NAME = "part-{:05d}.npz"
SHARD_PATTERN = re.compile(r"part-\d{5}\.npz")
REREAD = "dvc repro preprocess"


def rows_per_shard(image_shape, shard_mb):
    """How many images of image_shape (uint8) fit in shard_mb MiB; at least one."""
    return max(1, int(shard_mb * 2**20) // int(np.prod(image_shape)))


def write_split(folder, x, y, class_names, shard_mb):
    """Write images x and labels y as shards of at most shard_mb MiB of images; returns the shard count."""
    rows = rows_per_shard(x.shape[1:], shard_mb)
    count = max(1, math.ceil(len(x) / rows))
    with atomic_dir(folder) as tmp:
        for index in range(count):
            part = slice(index * rows, (index + 1) * rows)
            write_npz(os.path.join(tmp, SHARD_NAME.format(index)),
                      {"x": x[part], "y": y[part], "class_names": class_names})
    return count


@dataclass(frozen=True)
class Split:
    """What the file headers say about a split: no image is loaded."""
    folder: str
    files: tuple        # the shards' paths, in order
    sizes: tuple        # images per shard
    image_shape: tuple  # (H, W, C)
    class_names: tuple

    @property
    def images(self):
        return sum(self.sizes)

    def part(self, index, count):
        """The shards worker `index` of `count` reads: every count-th, from the index-th."""
        return self.files[index::count], sum(self.sizes[index::count])


def open_split(folder):
    """The shards of a split written by preprocess, checked from their headers; one line for anything amiss."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder} is not a folder of shards: run `{REREAD}` to create it")
    names = sorted(name for name in os.listdir(folder) if SHARD_PATTERN.fullmatch(name))
    if not names:
        raise UserError(f"{folder} holds no shards (part-00000.npz, ...): run `{REREAD}` to write them")
    files, sizes, shapes, class_names = [], [], set(), None
    for name in names:
        path = os.path.join(folder, name)
        try:
            headers = array_shapes(path)
        except ValueError as e:
            raise UserError(f"{path} is not a readable .npz file ({e}): delete {folder} and run `{REREAD}`")
        x, y = headers.get("x"), headers.get("y")
        if (x is None or y is None or "class_names" not in headers or len(x[0]) != 4 or x[1] != np.uint8
                or y[0] != x[0][:1]):
            raise UserError(f"{path} is not a shard of uint8 images with their labels: delete {folder} and run "
                            f"`{REREAD}`")
        if class_names is None:  # preprocess writes the same names into every shard; the images stay unread
            class_names = tuple(str(c) for c in read_arrays(path, ("class_names",))["class_names"])
        files.append(path)
        sizes.append(x[0][0])
        shapes.add(x[0][1:])
    if len(shapes) > 1:
        raise UserError(f"the shards of {folder} hold images of different shapes {sorted(shapes)}: delete it and "
                        f"run `{REREAD}`")
    return Split(folder, tuple(files), tuple(sizes), shapes.pop(), class_names)


def read_shard(path):
    """(x uint8, y int64) of one shard."""
    data = load_npz(path, REREAD)
    return data["x"], data["y"].astype(np.int64)


def read_all(split):
    """Every image and label of a split, in order, as (x uint8, y int64): for splits that fit in memory."""
    parts = [read_shard(path) for path in split.files]
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


def read_labels(split):
    """Every label of a split, in order, without loading its images."""
    labels = []
    for path in split.files:
        try:
            labels.append(read_arrays(path, ("y",))["y"].astype(np.int64))
        except ValueError as e:
            raise UserError(f"{path} is not a readable .npz file ({e}): delete {split.folder} and run `{REREAD}`")
    return np.concatenate(labels)
