"""params.yaml: its schema, reading and checking it, and setting a param by its dotted name.

Every stage calls load_params() before it does anything, so a wrong value anywhere in the file stops
the first stage that runs with one line naming the key, the value and the rule. The file is read as
YAML 1.2, with the reader DVC itself uses (ruamel.yaml's safe loader), so a value means the same to
DVC and to the stages: `dvc exp run -S train.learning_rate=1e-5` writes `1e-05`, a float here too
(YAML 1.1, PyYAML's, reads it as a string, `010` as 8 and `1:30` as 90).
"""
import math
import re

from ruamel.yaml import YAML
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import YAMLError

from mnist_cnn.errors import UserError

PARAMS_FILE = "params.yaml"
# data.dataset: a dataset of the registry (datasets.DATASETS, which a test keeps equal to this), or your own
PUBLISHED_DATASETS = ("mnist", "fashion_mnist")
CUSTOM_NPZ = "npz"  # the user's own Keras-layout .npz named by data.path
FOLDER = "folder"  # the user's own images: data.path/<class name>/<images>
# robustness.corruptions: MNIST-C's 15, in its order (corruptions.CORRUPTIONS, which a test keeps equal to this)
CORRUPTION_NAMES = ("shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "scale", "rotate",
                    "brightness", "translate", "stripe", "fog", "spatter", "dotted_line", "zigzag", "canny_edges")


def _number(low=None, high=None, integer=False, low_open=False, high_open=False, nullable=False):
    """A validator for a number within bounds; returns an error text or None."""
    def check(value):
        if value is None and nullable:
            return None
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            return "an integer" if integer else "a number"
        # .nan, .inf: YAML floats no knob can use (math.isfinite of an int over 1.8e308 raises OverflowError)
        if isinstance(value, float) and not math.isfinite(value):
            return "a finite number"
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


def _int_list(length=None, low=1, high=4096):
    def check(value):
        if (not isinstance(value, list) or not value
                or any(isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high for v in value)):
            return f"a non-empty list of integers from {low} to {high}"
        if length is not None and len(value) != length:
            return f"a list of {length} integers"
        return None
    return check


def _names(allowed):
    """A non-empty list of distinct names, each one of allowed."""
    def check(value):
        if (not isinstance(value, list) or not value or any(v not in allowed for v in value)
                or len(set(value)) != len(value)):
            return "a list of one or more distinct names from " + ", ".join(allowed)
        return None
    return check


def _path(value):
    """A non-empty path: DVC tracks data.path as a dependency, so it can't be null."""
    return None if isinstance(value, str) and value.strip() else "a path (a non-empty string)"


# Every key of params.yaml with what it may hold. One place: each stage validates what it reads here.
PARAMS_SCHEMA = {
    "seed": _number(0, 2**32 - 1, integer=True),
    "data.dataset": _choice(*PUBLISHED_DATASETS, FOLDER, CUSTOM_NPZ),
    "data.path": _path,
    "data.folder.image_size": _number(8, 512, integer=True),
    "data.folder.color_mode": _choice("grayscale", "rgb"),
    "data.folder.test_split": _number(0, 1, low_open=True, high_open=True),
    "data.folder.bad_images": _choice("stop", "skip"),
    "data.folder.workers": _number(0, 1024, integer=True),
    "data.val_split": _number(0, 1, low_open=True, high_open=True),
    "data.split": _choice("auto", "tail", "stratified"),
    "data.limit": _number(1, 10**9, integer=True, nullable=True),
    "data.shard_mb": _number(0, 4096, low_open=True),
    "model.conv_filters": _int_list(),
    "model.convs_per_block": _number(1, 8, integer=True),
    "model.kernel_size": _number(1, 28, integer=True),
    "model.padding": _choice("valid", "same"),
    "model.pool_size": _number(1, 28, integer=True),
    "model.downsample": _choice("pool", "stride"),
    "model.global_pool": _choice("none", "average", "max"),
    "model.batch_norm": lambda value: None if isinstance(value, bool) else "true or false",
    "model.standardize": lambda value: None if isinstance(value, bool) else "true or false",
    "model.conv_dropout": _number(0, 1, high_open=True),
    "model.dense_units": _int_list(low=1, high=65_536),
    "model.dense_dropout": _number(0, 1, high_open=True),
    "model.augment.rotation": _number(0, 180),
    "model.augment.shift": _number(0, 1, high_open=True),
    "model.augment.zoom": _number(0, 1, high_open=True),
    "model.augment.noise": _number(0, 10),
    "model.augment.erase": _number(0, 1),
    "model.augment.stroke": _number(0, 1),
    "model.augment.solarize": _number(0, 1),
    "model.augment.elastic": _number(0, 100),
    "model.augment.elastic_sigma": _number(0, 28, low_open=True),
    "model.augment.off_last_epochs": _number(0, 10_000, integer=True),
    "train.epochs": _number(1, 10_000, integer=True),
    "train.batch_size": _number(1, 65_536, integer=True),
    "train.learning_rate": _number(0, 1e6, low_open=True),
    "train.schedule": _choice("constant", "cosine"),
    "train.warmup": _number(0, 1, high_open=True),
    "train.label_smoothing": _number(0, 1, high_open=True),
    "train.precision": _choice("auto", "float32", "mixed_bfloat16", "mixed_float16"),
    "train.steps_per_execution": _number(1, 10_000, integer=True),
    "train.val_batch_size": _number(1, 65_536, integer=True),
    "train.shuffle_buffer": _number(1, 10**8, integer=True),
    "train.threads": _number(0, 1024, integer=True),
    "train.distribute": _choice("auto", "none", "mirrored", "multi_worker"),
    "train.worker_timeout": _number(1, 86_400),
    "evaluate.batch_size": _number(1, 65_536, integer=True),
    "robustness.corruptions": _names(CORRUPTION_NAMES),
    "robustness.seed": _number(0, 2**32 - 1, integer=True),
    "robustness.batch_size": _number(1, 65_536, integer=True),
    "robustness.examples": _number(1, 10, integer=True),
    "export.min_agreement": _number(0, 1),
    "export.batch_size": _number(1, 65_536, integer=True),
    "plot.samples": _number(1, 100, integer=True),
    "plot.misclassified": _number(1, 100, integer=True),
    "plot.dpi": _number(50, 600, integer=True),
}


def load_params(path=PARAMS_FILE):
    """Read params.yaml (YAML 1.2, as DVC does) and check every key against PARAMS_SCHEMA; return the nested dict."""
    try:
        with open(path) as f:
            params = YAML(typ="safe").load(f)
    except FileNotFoundError:
        raise UserError(f"{path} not found: run the stages from the repository root (dvc repro does)")
    except DuplicateKeyError as e:  # plain YAML would keep the last silently
        key = re.search(r'duplicate key "(.*?)"', e.problem or "")
        raise UserError(f"{path}: key '{key.group(1) if key else '?'}' is given twice (again on line "
                        f"{e.problem_mark.line + 1}); keep one of them")
    except YAMLError as e:
        raise UserError(f"{path} is not valid YAML ({str(e).splitlines()[0]}): fix the syntax")
    if not isinstance(params, dict):
        raise UserError(f"{path} must hold a mapping of sections (data, model, train, ...)")
    flat = flatten(params)
    for key in flat:
        if key not in PARAMS_SCHEMA:
            raise UserError(f"{path}: unknown key '{key}'; known keys: {', '.join(PARAMS_SCHEMA)}")
    for key, check in PARAMS_SCHEMA.items():
        if key not in flat:
            raise UserError(f"{path}: missing key '{key}'; restore it from the repository's params.yaml")
        problem = check(flat[key])
        if problem:
            raise UserError(f"{path}: {key} = {flat[key]!r} is not allowed; it must be {problem}")
    return params


def flatten(tree, prefix=""):
    """{"train": {"epochs": 10}} -> {"train.epochs": 10}: params by their dotted names, as DVC shows them."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def set_dotted(params, overrides):
    """Set each dotted key of overrides ("train.epochs": 2) in the nested params, as editing params.yaml would."""
    for key, value in overrides.items():
        *sections, leaf = key.split(".")
        node = params
        for section in sections:
            node = node[section]
        node[leaf] = value
    return params
