"""What the stages share: the dataset registry, params loading and validation, safe file writing, errors.

Every stage imports this module, so dvc.yaml lists it as a dependency of every stage.
It imports no TensorFlow: the data stages start in a fraction of a second.
"""
import contextlib
import errno
import hashlib
import json
import os
import signal
import sys
import tempfile
import zipfile
from dataclasses import dataclass

import numpy as np
import yaml

PARAMS_FILE = "params.yaml"
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
ARRAY_NAMES = tuple(IDX_FILES)


class UserError(Exception):
    """A mistake the user can fix; printed as one line, never as a traceback."""


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
CUSTOM_NPZ = "npz"  # data.dataset value for the user's own Keras-layout .npz named by data.path
FOLDER = "folder"  # data.dataset value for the user's own images: data.path/<class name>/<images>


def array_digest(array):
    """sha256 of an array's C-contiguous bytes: the content identity of a dataset array."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


# ---------------------------------------------------------------- params

def _number(low=None, high=None, integer=False, low_open=False, high_open=False, nullable=False):
    """A validator for a number within bounds; returns an error text or None."""
    def check(value):
        if value is None and nullable:
            return None
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            return "an integer" if integer else "a number"
        if low is not None and (value <= low if low_open else value < low):
            return f"{'>' if low_open else '>='} {low}"
        if high is not None and (value >= high if high_open else value > high):
            return f"{'<' if high_open else '<='} {high}"
        return None
    return check


def _choice(*allowed):
    def check(value):
        return None if value in allowed else "one of " + ", ".join(map(str, allowed))
    return check


def _int_list(length=None, low=1):
    def check(value):
        if (not isinstance(value, list) or not value
                or any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in value)):
            return f"a non-empty list of integers >= {low}"
        if length is not None and len(value) != length:
            return f"a list of {length} integers"
        return None
    return check


def _optional_str(value):
    return None if value is None or (isinstance(value, str) and value) else "a path or null"


# Every key of params.yaml with what it may hold. One place: each stage validates what it reads here.
PARAMS_SCHEMA = {
    "seed": _number(0, 2**32 - 1, integer=True),
    "data.dataset": _choice(*DATASETS, FOLDER, CUSTOM_NPZ),
    "data.path": _optional_str,
    "data.folder.image_size": _number(8, 512, integer=True),
    "data.folder.color_mode": _choice("grayscale", "rgb"),
    "data.folder.test_split": _number(0, 1, low_open=True, high_open=True),
    "data.folder.bad_images": _choice("stop", "skip"),
    "data.val_split": _number(0, 1, low_open=True, high_open=True),
    "data.split": _choice("tail", "stratified"),
    "data.limit": _number(1, integer=True, nullable=True),
    "model.conv_filters": _int_list(),
    "model.convs_per_block": _number(1, 8, integer=True),
    "model.kernel_size": _number(1, 28, integer=True),
    "model.padding": _choice("valid", "same"),
    "model.pool_size": _number(1, 28, integer=True),
    "model.batch_norm": lambda value: None if isinstance(value, bool) else "true or false",
    "model.conv_dropout": _number(0, 1, high_open=True),
    "model.dense_units": _int_list(low=1),
    "model.dense_dropout": _number(0, 1, high_open=True),
    "model.augment.rotation": _number(0, 180),
    "model.augment.shift": _number(0, 1, high_open=True),
    "model.augment.zoom": _number(0, 1, high_open=True),
    "model.augment.off_last_epochs": _number(0, integer=True),
    "train.epochs": _number(1, integer=True),
    "train.batch_size": _number(1, integer=True),
    "train.learning_rate": _number(0, low_open=True),
    "train.schedule": _choice("constant", "cosine"),
    "train.warmup": _number(0, 1, high_open=True),
    "train.label_smoothing": _number(0, 1, high_open=True),
    "train.precision": _choice("auto", "float32", "mixed_bfloat16", "mixed_float16"),
    "train.steps_per_execution": _number(1, integer=True),
    "train.val_batch_size": _number(1, integer=True),
    "train.threads": _number(0, 1024, integer=True),
    "train.distribute": _choice("auto", "none", "mirrored", "multi_worker"),
    "evaluate.batch_size": _number(1, integer=True),
    "plot.samples": _number(1, 100, integer=True),
    "plot.misclassified": _number(1, 100, integer=True),
    "plot.dpi": _number(50, 600, integer=True),
}


def _flatten(tree, prefix=""):
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def load_params(path=PARAMS_FILE):
    """Read params.yaml and check every key against PARAMS_SCHEMA; return the nested dict."""
    try:
        with open(path) as f:
            params = yaml.safe_load(f)
    except FileNotFoundError:
        raise UserError(f"{path} not found: run the stages from the repository root (dvc repro does)")
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML ({str(e).splitlines()[0]}): fix the syntax")
    if not isinstance(params, dict):
        raise UserError(f"{path} must hold a mapping of sections (data, model, train, ...)")
    flat = _flatten(params)
    for key in flat:
        if key not in PARAMS_SCHEMA:
            raise UserError(f"{path}: unknown key '{key}'; known keys: {', '.join(PARAMS_SCHEMA)}")
    for key, check in PARAMS_SCHEMA.items():
        if key not in flat:
            raise UserError(f"{path}: missing key '{key}'; restore it from the repository's params.yaml")
        problem = check(flat[key])
        if problem:
            raise UserError(f"{path}: {key} = {flat[key]!r} is not allowed; it must be {problem}")
    if flat["data.dataset"] in (CUSTOM_NPZ, FOLDER) and flat["data.path"] is None:
        raise UserError(f"{path}: data.dataset = {flat['data.dataset']!r} needs data.path set to your "
                        f"{'.npz file' if flat['data.dataset'] == CUSTOM_NPZ else 'image folder'}")
    return params


# ---------------------------------------------------------------- files

@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; move it over `path` only if the block succeeds.

    A crash, Ctrl-C or full disk leaves the previous file untouched and no partial file behind.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=os.path.splitext(base)[1], dir=directory)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_npz(path, arrays):
    """Write arrays as an uncompressed .npz whose bytes depend only on the arrays.

    np.savez stamps each member with the current time; fixed timestamps make the file
    byte-identical on every run and machine, so its hash in dvc.lock is too.
    """
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
            for name, array in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                with archive.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)


def load_npz(path, stage_hint="dvc repro"):
    """Load all arrays of an .npz file into memory, with one-line errors for missing or broken files."""
    if not os.path.exists(path):
        raise UserError(f"{path} not found: run `{stage_hint}` to create it")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{path} is not a readable .npz file ({e}): delete it and run `{stage_hint}`")


def load_split(path):
    """A preprocess output -> (x float32 (N, H, W, C) in [0, 1], y int labels, class names).

    preprocess stores uint8 pixels (a quarter of the bytes to write, hash and cache); the scaling is
    the notebook's, x.astype(float32) / 255, so the arrays are equal to scaling in preprocess.
    """
    data = load_npz(path, "dvc repro preprocess")
    return data["x"].astype(np.float32) / 255, data["y"], [str(c) for c in data["class_names"]]


def write_json(path, data):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")


# ---------------------------------------------------------------- images

IMAGE_SIZE = 28  # MNIST: 28 x 28 pixels, the digit fitted into 20 x 20 and centred by centre of mass
INK_THRESHOLD = 0.2  # a pixel is ink when brighter than this fraction of the image's contrast
MAX_PIXELS = 50_000_000  # larger image files are refused (decompression bombs): 50 megapixels
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm")


class BadImage(ValueError):
    """An image file or array that can't be used; the message says why."""


def _border(pixels):
    return np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])


def mnist_style(pixels, size=IMAGE_SIZE):
    """Bring a grayscale image (2-D array, any size and range) to MNIST's form: float32 size x size in [0, 1].

    As MNIST was made: light ink on a dark background (inverted when the border is lighter than
    the image on average), cropped to the ink, scaled to fit 20/28 of the frame keeping the aspect
    ratio, placed with its centre of mass at the centre. Raises BadImage for an image with no ink.
    """
    from PIL import Image

    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 2 or min(pixels.shape) < 2:
        raise BadImage(f"{pixels.shape[1] if pixels.ndim == 2 else 0}x{pixels.shape[0]} pixels is too small "
                       f"to hold a digit")
    if np.median(_border(pixels)) > pixels.mean():  # dark ink on a light background
        pixels = pixels.max() - pixels
    background = np.median(_border(pixels))
    pixels = np.clip(pixels - background, 0, None)
    contrast = pixels.max()
    if contrast <= 0 or contrast < 0.05 * max(1.0, float(np.abs(background))):
        raise BadImage("no ink: the image is blank (one colour)")
    pixels /= contrast
    rows, cols = np.nonzero(pixels > INK_THRESHOLD)
    pixels = pixels[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    height, width = pixels.shape
    scale = round(size * 20 / 28) / max(height, width)
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    digit = np.clip(np.asarray(Image.fromarray(pixels, mode="F").resize(shape, Image.Resampling.LANCZOS)), 0, None)
    total = digit.sum()
    centre_row = (digit.sum(axis=1) * np.arange(digit.shape[0])).sum() / total
    centre_col = (digit.sum(axis=0) * np.arange(digit.shape[1])).sum() / total
    top = int(round(size / 2 - centre_row))  # MNIST put the centre of mass at pixel (14, 14)
    left = int(round(size / 2 - centre_col))
    top = min(max(top, 0), size - digit.shape[0])
    left = min(max(left, 0), size - digit.shape[1])
    out = np.zeros((size, size), np.float32)
    out[top: top + digit.shape[0], left: left + digit.shape[1]] = digit
    return np.clip(out / out.max(), 0, 1)


def fit_colour(pixels, size):
    """An RGB image (H x W x 3, 0-255) scaled to fit size x size keeping its aspect, centred on black, in [0, 1]."""
    from PIL import Image

    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or min(pixels.shape[:2]) < 2:
        raise BadImage(f"an image of shape {pixels.shape} is not a colour image of 2x2 pixels or more")
    height, width = pixels.shape[:2]
    scale = size / max(height, width)
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).resize(shape, Image.Resampling.LANCZOS)
    out = np.zeros((size, size, 3), np.float32)
    top, left = (size - shape[1]) // 2, (size - shape[0]) // 2
    out[top: top + shape[1], left: left + shape[0]] = np.asarray(image, np.float32) / 255
    return out


def to_model_image(pixels, size=IMAGE_SIZE, colour=False):
    """The one normalisation of every image the model sees: MNIST-style grayscale, or fitted colour."""
    return fit_colour(pixels, size) if colour else mnist_style(pixels, size)


def read_image(path, colour=False):
    """The pixels of an image file: 2-D brightness (alpha laid on white, 16-bit kept exact), or H x W x 3 RGB."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    if os.path.getsize(path) == 0:
        raise BadImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below, in our words
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise BadImage(f"{width}x{height} pixels is over the limit of {MAX_PIXELS:,}; scale it down")
                if width < 2 or height < 2:
                    raise BadImage(f"{width}x{height} pixels is too small to hold a digit")
                image.load()
                if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                    rgba = image.convert("RGBA")
                    image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
                if colour:
                    return np.asarray(image.convert("RGB"), dtype=np.float32)
                if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                    return np.asarray(image, dtype=np.float32)
                return np.asarray(image.convert("L"), dtype=np.float32)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image file (or in a format Pillow can't read)")
    except Image.DecompressionBombError as e:  # over twice the limit: Pillow refuses to open it
        raise BadImage(f"over the limit of {MAX_PIXELS:,} pixels ({e}); scale it down")
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise BadImage(f"broken image data ({e})")


def load_model(path):
    """Load a Keras model in safe mode (no arbitrary code), with one-line errors for what users get wrong."""
    if not os.path.exists(path):
        raise UserError(f"{path} not found: run `dvc repro` to train the model")
    import keras

    try:
        return keras.saving.load_model(path, safe_mode=True)
    except (OSError, ValueError, zipfile.BadZipFile, KeyError) as e:
        raise UserError(f"{path} is not a Keras model ({str(e).splitlines()[0] if str(e) else type(e).__name__}): "
                        f"run `dvc repro --force train` to rebuild it")


# ---------------------------------------------------------------- running

def quiet_tensorflow():
    """Import TensorFlow without its start-up log lines (set TF_CPP_MIN_LOG_LEVEL=0 to see them)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # errors too: TF logs harmless ones
    verbose = os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    # TensorFlow writes some lines to fd 2 before its log level applies; hide fd 2 during import.
    saved = None if verbose else os.dup(2)
    try:
        if saved is not None:
            sys.stderr.flush()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        import tensorflow as tf
        tf.config.list_physical_devices()  # probes for GPUs now, while fd 2 is hidden
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
    return tf


# Errors of the machine rather than of our code: a full disk, a read-only or forbidden folder
DISK_ERRORS = {errno.ENOSPC: "the disk is full: free some space",
               errno.EDQUOT: "the disk quota is used up: free some space",
               errno.EACCES: "permission denied: make the folder writable",
               errno.EPERM: "permission denied: make the folder writable",
               errno.EROFS: "the file system is read-only: write somewhere else"}


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run(main):
    """Run a stage's main(argv): user errors become one line on stderr and exit status 1.

    Ctrl-C (SIGINT) and `kill` (SIGTERM) stop the stage through the same clean-up path: temporary
    files are removed and the outputs of the previous run are left as they were. SIGINT is handled
    here too, not left to Python, which ignores it for good in a process started with SIGINT ignored
    (as a script's background jobs are): there, Ctrl-C and `dvc repro`'s interruption did nothing.
    """
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up live under dvc repro and in logs
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, _interrupt)
    try:
        main(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        if e.errno not in DISK_ERRORS:
            raise
        print(f"error: cannot write {e.filename or 'an output file'}: {DISK_ERRORS[e.errno]}, then run "
              f"the stage again", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: outputs from before this run are left as they were "
              "(under dvc repro, DVC keeps them in its cache: `dvc checkout` brings them back)", file=sys.stderr)
        sys.exit(130)
