"""Stage download: fetch the dataset named by data.dataset, verify its content, write data/raw/<dataset>.npz.

For mnist and fashion_mnist:
Sources, first good one wins: each entry of DATASET_MIRRORS (colon-separated local folders or
http(s) URL prefixes), Keras' cache ($KERAS_HOME/datasets or ~/.keras/datasets), folders a system
package installs, then the official URLs. In each folder or prefix it looks for <name>.npz and the
four IDX .gz files, also under a <dataset>/ subfolder. A candidate is accepted only when every
decoded uint8 array has the pinned sha256 digest, so any source yields the same bytes.
For folder: the images under data.path, one subfolder per class, normalised to data.folder.*.
For npz: the user's own Keras-layout arrays at data.path, as they are.
"""
import argparse
import gzip
import http.client
import os
import re
import socket
import struct
import sys
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np
from tqdm import tqdm

from mnist_cnn.datasets import ARRAY_NAMES, DATASETS, IDX_FILES, array_digest
from mnist_cnn.errors import UserError
from mnist_cnn.files import read_arrays, write_npz
from mnist_cnn.images import BadImage, read_image, to_model_image
from mnist_cnn.params import CUSTOM_NPZ, FOLDER, load_params
from mnist_cnn.runner import run

TIMEOUT_S = 30  # per socket operation: a stalled server fails after this long
RETRIES = 3
BACKOFF_S = 1.0  # waits 1 s, then 2 s, between tries


class SourceError(Exception):
    """One candidate source failed; the next one is tried."""


def parse_mirrors(value):
    """Split DATASET_MIRRORS on ':' without splitting the scheme or port of a URL."""
    return re.findall(r"https?://[^/:]+(?::\d+)?[^:]*|[^:]+", value or "")


def keras_cache_dir():
    """The folder where keras.datasets caches its downloads."""
    return os.path.join(os.environ.get("KERAS_HOME") or os.path.expanduser("~/.keras"), "datasets")


def is_url(location):
    return location.startswith(("http://", "https://"))


def join(root, *parts):
    if is_url(root):
        return "/".join([root.rstrip("/")] + [p for p in parts if p])
    return os.path.join(root, *parts)


def candidates(spec, roots):
    """(kind, location) pairs to try in order: kind 'npz' is a file, 'idx' a folder or URL prefix."""
    for root in roots:
        for sub in ("",) + spec.subdirs:
            base = join(root, sub)
            if spec.npz_name:
                yield "npz", join(base, spec.npz_name)
            yield "idx", base
    for url in spec.urls:
        yield ("idx", url) if url.endswith("/") else ("npz", url)


def fetch(url, dest, timeout=TIMEOUT_S, retries=RETRIES, backoff=BACKOFF_S):
    """Download url to dest with a timeout, retries with exponential backoff and a progress bar."""
    problem = "no attempt"
    for attempt in range(retries):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
                expected = response.headers.get("Content-Length")
                expected = int(expected) if expected else None
                with tqdm(total=expected, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1],
                          file=sys.stderr, disable=None, leave=False) as bar:
                    while chunk := response.read(1 << 16):
                        out.write(chunk)
                        bar.update(len(chunk))
                if expected is not None and out.tell() != expected:
                    raise http.client.IncompleteRead(b"", expected - out.tell())
            return
        except urllib.error.HTTPError as e:
            if e.code < 500:  # 404 and friends will not change on a retry
                raise SourceError(f"HTTP {e.code} {e.reason}")
            problem = f"HTTP {e.code} {e.reason}"
        except (TimeoutError, socket.timeout):
            problem = f"no data for {timeout:g} s (timed out)"
        except urllib.error.URLError as e:
            problem = f"cannot connect ({e.reason})"
        except (http.client.HTTPException, OSError) as e:
            problem = f"connection broke off ({type(e).__name__})"
        if attempt + 1 < retries:
            time.sleep(backoff * 2**attempt)
    raise SourceError(f"{problem}, after {retries} tries")


def parse_idx(data, name):
    """Decode an IDX file (big-endian magic and sizes, then raw uint8 data) into an array."""
    if len(data) < 8 or data[0:3] != b"\x00\x00\x08" or not 1 <= data[3] <= 3:
        raise SourceError(f"{name} is not a uint8 IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != int(np.prod(shape)):
        raise SourceError(f"{name} is truncated or padded: {len(data) - header} bytes for shape {shape}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def read_idx(paths):
    arrays = {}
    for name, path in paths.items():
        try:
            with gzip.open(path, "rb") as f:
                arrays[name] = parse_idx(f.read(), os.path.basename(path))
        except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
            raise SourceError(f"{os.path.basename(path)} is not a valid .gz file ({e})")
    return arrays


def read_npz(path, names=ARRAY_NAMES, optional=()):
    """The named arrays of an .npz file, plus those of `optional` that it holds."""
    try:
        arrays = read_arrays(path, (*names, *optional))
    except ValueError as e:
        raise SourceError(f"{os.path.basename(path)} is not a valid .npz file ({e})")
    missing = [n for n in names if n not in arrays]
    if missing:
        raise SourceError(f"{os.path.basename(path)} lacks the arrays {', '.join(missing)}")
    return arrays


def verify(arrays, spec):
    """Accept the arrays only if each is uint8 with the pinned digest."""
    for name in ARRAY_NAMES:
        array = arrays[name]
        if array.dtype != np.uint8 or array_digest(array) != spec.digests[name]:
            raise SourceError(f"{name} {array.dtype}{tuple(array.shape)} does not match the pinned "
                              f"{spec.name} digest")
    return arrays


def load_candidate(kind, location, workdir, **fetch_options):
    """Read one candidate into arrays; remote files are fetched into workdir first."""
    if kind == "npz":
        files = {"npz": location}
    else:
        files = {name: join(location, file) for name, file in IDX_FILES.items()}
    if is_url(location):
        for key, url in files.items():
            local = os.path.join(workdir, f"{key}.download")
            try:
                fetch(url, local, **fetch_options)
            except SourceError as e:
                raise SourceError(f"{url}: {e}")
            files[key] = local
    return read_npz(files["npz"]) if kind == "npz" else read_idx(files)


def download(spec, roots, **fetch_options):
    """Return the verified arrays of spec from the first good source; UserError if none is."""
    tried = []
    with tempfile.TemporaryDirectory(prefix="download-") as workdir:
        for kind, location in candidates(spec, roots):
            if not is_url(location):
                needed = [location] if kind == "npz" else [join(location, f) for f in IDX_FILES.values()]
                if not all(os.path.isfile(p) for p in needed):
                    continue  # local folders are searched quietly: only real files are candidates
            try:
                arrays = verify(load_candidate(kind, location, workdir, **fetch_options), spec)
            except SourceError as e:
                print(f"download: skipped {location}: {e}", file=sys.stderr)
                tried.append(f"{location} ({e})")
                continue
            print(f"download: {spec.name} verified from {location}")
            return arrays
    searched = ", ".join(roots) or "none"
    raise UserError(
        f"no valid source for {spec.name}; searched folders and mirrors: {searched}; failed: "
        f"{'; '.join(tried) or 'no candidate files found'}. Fix: put {spec.npz_name or 'the four IDX .gz files'} "
        f"in a folder and set DATASET_MIRRORS=/that/folder, or check your network connection")


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


def read_class_folders(root, class_names, folder_params):
    """(images, labels) of root/<class>/<file> for each class; unreadable files stop or are skipped."""
    colour = folder_params["color_mode"] == "rgb"
    images, labels = [], []
    for label, name in enumerate(class_names):
        folder = os.path.join(root, name)
        files = sorted(f for f in os.listdir(folder) if not f.startswith(".")) if os.path.isdir(folder) else []
        kept = 0
        for file in files:
            path = os.path.join(folder, file)
            try:
                pixels = to_model_image(read_image(path, colour), folder_params["image_size"], colour)
            except BadImage as e:
                if folder_params["bad_images"] == "stop":
                    raise UserError(f"{path}: {e}; fix or remove it, or set data.folder.bad_images: skip")
                print(f"download: skipped {path}: {e}", file=sys.stderr)
                continue
            images.append(np.round(pixels * 255).astype(np.uint8))
            labels.append(label)
            kept += 1
        if kept == 0:
            raise UserError(f"class folder {folder} has no usable images: add some, or remove the folder")
    return np.stack(images), np.array(labels, np.int64)


def load_folder(path, folder_params, seed):
    """A dataset from data.path/<class>/*: the test set from data.path/test/<class>/* or a stratified split."""
    if not os.path.isdir(path):
        raise UserError(f"data.path = {path!r} is not a folder: make one subfolder of images per class")
    class_names = sorted(e.name for e in os.scandir(path) if e.is_dir() and e.name != "test"
                         and not e.name.startswith("."))
    if len(class_names) < 2:
        raise UserError(f"{path} has {len(class_names)} class folder(s) {class_names}; a classifier needs "
                               f"two or more: put each class's images in a subfolder named after it")
    x, y = read_class_folders(path, class_names, folder_params)
    if os.path.isdir(os.path.join(path, "test")):
        x_test, y_test = read_class_folders(os.path.join(path, "test"), class_names, folder_params)
    else:
        from sklearn.model_selection import train_test_split

        try:
            train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=folder_params["test_split"],
                                                   random_state=seed, stratify=y)
        except ValueError as e:
            raise UserError(f"{path}: too few images for data.folder.test_split = "
                                   f"{folder_params['test_split']} in every class ({e}); add images or a test/ folder")
        train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
        x, y, x_test, y_test = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
    print(f"download: {len(class_names)} classes, {len(y)} training and {len(y_test)} test images from {path}")
    return {"x_train": x, "y_train": y, "x_test": x_test, "y_test": y_test, "class_names": np.array(class_names)}


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
