"""A split on disk: a folder of shards, part-00000.npz, part-00001.npz, ..., each at most data.shard_mb MiB of images.

Each shard holds x (uint8 images, N x H x W x C), y (integer labels) and class_names. Preprocess
writes a split with write_split, byte-deterministically and atomically (the whole folder or nothing),
with manifest.json: the class names, the image shape, and each shard's name, images, bytes and SHA-256.
What preprocess wrote is what the readers read: open_split checks every shard against the manifest from
its headers (none missing or extra, counts, shapes, class names, sizes: cheap), read_shard checks a
shard's digest and labels as it is read.
A split of one shard is read whole (prepare.read_split): MNIST's splits fit in one at the default
64 MiB, so its training keeps the notebook's full shuffle. A larger one is streamed shard by shard
(mnist_cnn/streaming.py), so memory is bounded by the shards in flight, not by the dataset.
"""
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass

import numpy as np

from mnist_cnn.errors import UserError
from mnist_cnn.files import array_shapes, atomic_dir, load_npz, read_arrays, write_json, write_npz

SHARD_NAME = "part-{:05d}.npz"
SHARD_PATTERN = re.compile(r"part-\d{5}\.npz")
MANIFEST = "manifest.json"
REREAD = "dvc repro preprocess"


def rows_per_shard(image_shape, shard_mb):
    """How many images of image_shape (uint8) fit in shard_mb MiB; at least one."""
    return max(1, int(shard_mb * 2**20) // int(np.prod(image_shape)))


def file_digest(path):
    """The SHA-256 of a file, hex, read in chunks (memory stays flat whatever the shard's size)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_split(folder, x, y, class_names, shard_mb):
    """Write images x and labels y as shards of at most shard_mb MiB of images, and their manifest; returns the
    shard count."""
    rows = rows_per_shard(x.shape[1:], shard_mb)
    count = max(1, math.ceil(len(x) / rows))
    shards = []
    with atomic_dir(folder) as tmp:
        for index in range(count):
            part, name = slice(index * rows, (index + 1) * rows), SHARD_NAME.format(index)
            path = os.path.join(tmp, name)
            write_npz(path, {"x": x[part], "y": y[part], "class_names": class_names})
            shards.append({"file": name, "images": len(x[part]), "bytes": os.path.getsize(path),
                           "sha256": file_digest(path)})
        write_json(os.path.join(tmp, MANIFEST), {"class_names": [str(c) for c in class_names],
                                                 "image_shape": [int(n) for n in x.shape[1:]], "shards": shards})
    return count


@dataclass(frozen=True)
class Split:
    """What the file headers say about a split: no image is loaded."""
    folder: str
    files: tuple        # the shards' paths, in order
    sizes: tuple        # images per shard
    image_shape: tuple  # (H, W, C)
    class_names: tuple
    digests: tuple = ()  # each shard's SHA-256, from the manifest

    @property
    def images(self):
        return sum(self.sizes)

    def part(self, index, count):
        """The shards worker `index` of `count` reads: every count-th, from the index-th."""
        return self.files[index::count], sum(self.sizes[index::count])


def read_manifest(folder):
    """The manifest preprocess wrote beside a split's shards, its structure checked; one line if it is amiss."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise UserError(f"{folder} has no {MANIFEST} (the list of its shards that preprocess writes): run `{REREAD}` "
                        f"to write the split again")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        shards = manifest["shards"]
        valid = (isinstance(manifest["class_names"], list) and len(manifest["image_shape"]) == 3 and shards
                 and all(isinstance(s["file"], str) and SHARD_PATTERN.fullmatch(s["file"])
                         and isinstance(s["images"], int) and isinstance(s["bytes"], int)
                         and isinstance(s["sha256"], str) for s in shards))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path} is not a manifest preprocess wrote ({e}): delete {folder} and run `{REREAD}`")
    if not valid:
        raise UserError(f"{path} is not a manifest preprocess wrote: delete {folder} and run `{REREAD}`")
    return manifest


def check_shard(path, entry, manifest, folder):
    """One line when a shard is not the one the manifest lists, from its headers and class names alone."""
    try:
        headers = array_shapes(path)
    except ValueError as e:
        raise UserError(f"{path} is not a readable .npz file ({e}): delete {folder} and run `{REREAD}`")
    x, y = headers.get("x"), headers.get("y")
    if (x is None or y is None or "class_names" not in headers or len(x[0]) != 4 or x[1] != np.uint8
            or y[0] != x[0][:1]):
        raise UserError(f"{path} is not a shard of uint8 images with their labels: delete {folder} and run "
                        f"`{REREAD}`")
    if x[0][0] != entry["images"] or list(x[0][1:]) != manifest["image_shape"]:
        raise UserError(f"{path} holds {x[0][0]} images of {x[0][1:]} but {MANIFEST} says {entry['images']} of "
                        f"{tuple(manifest['image_shape'])}: delete {folder} and run `{REREAD}`")
    try:
        names = [str(c) for c in read_arrays(path, ("class_names",))["class_names"]]
    except ValueError as e:
        raise UserError(f"{path} is not a readable .npz file ({e}): delete {folder} and run `{REREAD}`")
    if names != manifest["class_names"]:
        raise UserError(f"{path} names its classes {short(names)} but {MANIFEST} {short(manifest['class_names'])} "
                        f"(a shard of another dataset): delete {folder} and run `{REREAD}`")
    size = os.path.getsize(path)
    if size != entry["bytes"]:
        raise UserError(f"{path} is {size:,} bytes but preprocess wrote {entry['bytes']:,}: delete {folder} and run "
                        f"`{REREAD}`")


def short(names):
    """Class names for a message: the first few."""
    return "(" + ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") + ")"


def open_split(folder):
    """The shards of a split written by preprocess, checked against its manifest; one line for anything amiss."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder} is not a folder of shards: run `{REREAD}` to create it")
    manifest = read_manifest(folder)
    listed = [entry["file"] for entry in manifest["shards"]]
    present = {name for name in os.listdir(folder) if SHARD_PATTERN.fullmatch(name)}
    missing, extra = [n for n in listed if n not in present], sorted(present - set(listed))
    if missing:
        raise UserError(f"{folder} lacks {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} of the "
                        f"{len(listed)} shards its {MANIFEST} lists (deleted?): run `{REREAD}` to write the split "
                        f"again")
    if extra:
        raise UserError(f"{folder} holds {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}, which its "
                        f"{MANIFEST} does not list: delete {folder} and run `{REREAD}`")
    files = tuple(os.path.join(folder, name) for name in listed)
    for path, entry in zip(files, manifest["shards"]):
        check_shard(path, entry, manifest, folder)
    return Split(folder, files, tuple(entry["images"] for entry in manifest["shards"]),
                 tuple(manifest["image_shape"]), tuple(manifest["class_names"]),
                 tuple(entry["sha256"] for entry in manifest["shards"]))


def check_labels(split, path, y):
    """y as int64, or one line when a label names no class of the split."""
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= len(split.class_names)):
        raise UserError(f"{path} holds labels {y.min()}..{y.max()} but its split has {len(split.class_names)} "
                        f"classes (0..{len(split.class_names) - 1}): delete {split.folder} and run `{REREAD}`")
    return y


def read_shard(split, path):
    """(x uint8, y int64) of one of split's shards: refused unless its bytes are those the manifest names and
    its labels name classes of the split."""
    if file_digest(path) != dict(zip(split.files, split.digests))[path]:
        raise UserError(f"{path} has changed since preprocess wrote it (its SHA-256 is not the one in "
                        f"{MANIFEST}): delete {split.folder} and run `{REREAD}`")
    data = load_npz(path, REREAD)
    return data["x"], check_labels(split, path, data["y"])


def read_all(split):
    """Every image and label of a split, in order, as (x uint8, y int64): for splits that fit in memory."""
    parts = [read_shard(split, path) for path in split.files]
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


def read_labels(split):
    """Every label of a split, in order, without loading its images."""
    labels = []
    for path in split.files:
        try:
            labels.append(check_labels(split, path, read_arrays(path, ("y",))["y"]))
        except ValueError as e:
            raise UserError(f"{path} is not a readable .npz file ({e}): delete {split.folder} and run `{REREAD}`")
    return np.concatenate(labels)
