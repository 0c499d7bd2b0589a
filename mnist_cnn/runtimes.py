"""The trained model in any of its formats, behind one interface: image shape, class count, probabilities.

    models/model.keras     Keras on TensorFlow           written by train
    models/saved_model/    TensorFlow SavedModel         written by export
    models/model.onnx      onnxruntime, no TensorFlow    written by export
    models/model.tflite    LiteRT's interpreter          written by export

open_model picks the runtime by the file's form and imports it only then, so a prediction from the
ONNX file starts without TensorFlow (or Keras) at all: a fraction of the start-up time and memory
(bench/predict_paths.py measures both paths).
"""
import hashlib
import importlib.util
import json
import os
import re
import stat
import sys

import numpy as np

from mnist_cnn.errors import UserError
from mnist_cnn.model_files import image_shape, load_model

FORMATS = {".keras": "keras", ".onnx": "onnx", ".tflite": "litert"}
SAVED_MODEL = "saved_model"
# What predict and the app open when no model is named: the ONNX export where it exists, being the faster
# path (docs/predict.md quotes the measurement), else the model train wrote
DEFAULT_MODELS = ("models/model.onnx", "models/model.keras")
# onnxruntime 1.32 writes a device id and a telemetry database under ~/.cache/Microsoft/DeveloperTools/ when
# it is imported (disable_telemetry_events() comes too late for that): this variable, read at import, stops it
os.environ["ORT_DISABLE_TELEMETRY"] = "1"
# The packages each runtime imports, and the extra of the installed package that brings them (pyproject.toml)
RUNTIME_PACKAGES = {"keras": (("tensorflow", "keras"), "keras"), SAVED_MODEL: (("tensorflow",), "keras"),
                    "onnx": (("onnxruntime",), None), "litert": (("ai_edge_litert",), "litert")}


# A SavedModel is a TensorFlow program: its graph may hold ops that read and write files (ReadFile, WriteFile,
# PyFunc...), and a LiteRT file may carry TensorFlow ops too. A .keras file loads in Keras' safe mode and an ONNX
# file runs onnxruntime's standard operators only, so those two load from anywhere; these two only when they are
# the project's own exports (their digest is in its dvc.lock) or with --trust-model
PROGRAMS = {SAVED_MODEL: "a SavedModel", "litert": "a LiteRT file"}
# An output as DVC writes it in dvc.lock: `- path: models/model.tflite`, then its `md5: ...` (`...dir` for folders)
LOCK_OUTPUT = re.compile(r"^\s*- path: (\S+)\n(?:\s+\w+:.*\n)*?\s+md5: ([0-9a-f]{32}(?:\.dir)?)$", re.MULTILINE)
TRUST_ADVICE = "--trust-model runs it if you trust where it came from"


def default_model():
    return next((path for path in DEFAULT_MODELS if os.path.exists(path)), DEFAULT_MODELS[-1])


class Classifier:
    """A loaded model: `image_shape` (height, width, channels), `num_classes`, and predict(x) -> probabilities.
    open_model makes one from a runtime's input shape (batch axis first) once it has checked it."""

    def __init__(self, path, format, input_shape, num_classes, run_batch):
        stage = "train" if format == "keras" else "export"  # the stage that writes a file of this format
        self.path, self.format, self.num_classes = path, format, num_classes
        self.image_shape = tuple(image_shape(path, input_shape, stage))
        if not isinstance(num_classes, int) or num_classes < 1:
            raise UserError(f"{path} has an output of unknown size: run `dvc repro --force {stage}`")
        # A model exported for a fixed number of images at a time (often 1) takes exactly that many; LiteRT's
        # run_batch resizes its input to any batch itself
        batch = input_shape[0]
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 and format != "litert" else None
        self._run_batch = run_batch

    def predict(self, x, batch_size=512):
        """float32 (N, H, W, C) images in [0, 1] -> float32 (N, classes) probabilities, batch by batch."""
        x = np.asarray(x, dtype=np.float32)
        if len(x) == 0:
            return np.zeros((0, self.num_classes), np.float32)
        step = self.fixed_batch or batch_size
        return np.concatenate([self._run(x[i:i + step]) for i in range(0, len(x), step)])

    def _run(self, x):
        """One batch through the runtime, a fixed batch's last one filled up with blank images (then dropped)."""
        count = len(x)
        if self.fixed_batch and count < self.fixed_batch:
            x = np.concatenate([x, np.zeros((self.fixed_batch - count, *x.shape[1:]), x.dtype)])
        return np.asarray(self._run_batch(x), dtype=np.float32)[:count]


def class_names_for(model):
    """Class names the train stage saved beside the model (classes.json), else the class indices."""
    model_path = model.path
    names_file = os.path.join(os.path.dirname(os.path.normpath(model_path)), "classes.json")
    count = model.num_classes
    if not os.path.exists(names_file):
        return [str(i) for i in range(count)]
    try:
        with open(names_file) as f:
            names = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{names_file} is not readable JSON ({e}): run `dvc repro --force train` to write it again")
    if not isinstance(names, list) or len(names) != count or not all(isinstance(n, str) for n in names):
        raise UserError(f"{names_file} does not hold the {count} class names of {model_path}: the two come from "
                        f"different runs; run `dvc checkout models` or `dvc repro --force train`")
    return names


def top_classes(probabilities, class_names, k):
    """The k most likely classes of one image, most likely first (ties in class order): [{label, probability}]."""
    ranked = np.argsort(-probabilities, kind="stable")[:k]
    return [{"label": class_names[i], "probability": float(probabilities[i])} for i in ranked]


def format_of(path):
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "saved_model.pb")):
        return SAVED_MODEL
    return FORMATS.get(os.path.splitext(path)[1].lower())


def open_model(path, threads=0, trust=False):
    """The model at path as a Classifier; one line for a missing file, an unknown form or a broken file.
    threads: onnxruntime's and LiteRT's threads per inference, 0 for their default (one per core); the
    server runs one per request instead, its requests running side by side. trust: run a SavedModel or
    LiteRT file that is not the project's own export (check_trusted)."""
    if not os.path.exists(path):
        raise UserError(f"{path} not found: run `dvc repro` to train and export the model")
    mode = os.stat(path).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # opening a FIFO waits for a writer, for ever
        raise UserError(f"{path} is a FIFO, socket or device, not a model file: give a .keras, .onnx or .tflite "
                        f"file or a SavedModel folder")
    format = format_of(path)
    if format is None:
        raise UserError(f"{path} is not a model file: give a .keras, .onnx or .tflite file or a SavedModel folder")
    check_runtime(path, format)
    if not trust:
        check_trusted(path, format)
    if format == "keras":
        return _keras(path)
    try:
        classifier = {"onnx": _onnx, "litert": _litert, SAVED_MODEL: _saved_model}[format](path, threads)
    except UserError:
        raise
    except ImportError:  # a runtime there but broken, or made unimportable: find_spec saw it
        raise missing_runtime(path, format, list(RUNTIME_PACKAGES[format][0]))
    except Exception as e:  # each runtime has its own exceptions for a file it can't read; all mean the same
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} is not a readable {format} model ({first_line}): run `dvc repro --force export`")
    return classifier


def check_runtime(path, format, load=False):
    """One line when the packages that run this format are not installed (`pip install .` without its extra).
    load: import them too, to find a package that is there but can't be imported (the export stage)."""
    packages = RUNTIME_PACKAGES[format][0]
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    for name in packages if load and not missing else ():
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise missing_runtime(path, format, missing)


def missing_runtime(path, format, missing):
    """The one line for a runtime's missing packages: which, and the command that installs them."""
    extra = RUNTIME_PACKAGES[format][1]
    with_extra = f", or install mnist-cnn with its [{extra}] extra (`pip install '.[{extra}]'`)" if extra else ""
    return UserError(f"{path}: {format} models need {' and '.join(missing)}, not installed here: "
                     f"`pip install {' '.join(missing)}`{with_extra}")


def check_trusted(path, format):
    """One line for a SavedModel or LiteRT file that is not an output the project's pipeline wrote."""
    if format in PROGRAMS and not is_own_output(path):
        raise UserError(f"{path}: {PROGRAMS[format]} is a program that can read and write files, and this one is not "
                        f"this project's export (no dvc.lock above it records its digest): {TRUST_ADVICE}, or run "
                        f"`dvc repro export` to export your own")


def is_own_output(path):
    """True when the nearest dvc.lock above path records it as a stage's output, with the digest it has now."""
    path = os.path.abspath(path)
    root = os.path.dirname(path)
    while not os.path.isfile(os.path.join(root, "dvc.lock")):
        if os.path.dirname(root) == root:
            return False
        root = os.path.dirname(root)
    try:
        with open(os.path.join(root, "dvc.lock"), encoding="utf-8") as f:
            recorded = dict(LOCK_OUTPUT.findall(f.read()))
    except (OSError, UnicodeDecodeError):
        return False
    relative = os.path.relpath(path, root).replace(os.sep, "/")
    return relative in recorded and recorded[relative] == dvc_md5(path)


def dvc_md5(path):
    """DVC's md5 of a file (its bytes) or of a folder (of the sorted list of its files' md5 and path, as JSON)."""
    if not os.path.isdir(path):
        return _file_md5(path)
    files = sorted((os.path.relpath(os.path.join(top, name), path).replace(os.sep, "/"), os.path.join(top, name))
                   for top, _, names in os.walk(path) for name in names)
    listing = [{"md5": _file_md5(full), "relpath": relative} for relative, full in files]
    return hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest() + ".dir"


def _file_md5(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _tensorflow():
    """TensorFlow, imported without its log lines (quiet_tensorflow) and without writing under the user's home.

    At import, Keras writes ~/.keras/keras.json when there is none, and matplotlib, which Keras imports for
    its plotting helpers (inside `except ImportError`), builds a font cache in ~/.cache/matplotlib. So
    matplotlib is not imported (nothing here plots), and without a keras.json Keras is pointed at a folder
    that cannot exist (its writes fail quietly, as Keras allows); a user's own keras.json is still read."""
    from mnist_cnn.runner import quiet_tensorflow

    if "KERAS_HOME" not in os.environ and not os.path.exists(os.path.expanduser("~/.keras/keras.json")):
        os.environ["KERAS_HOME"] = os.path.join(os.devnull, "keras")
    sys.modules.setdefault("matplotlib", None)  # `import matplotlib` raises ImportError from here on
    return quiet_tensorflow()


def _keras(path):
    _tensorflow()  # before Keras imports TensorFlow, so it starts without its log lines
    model = load_model(path)
    return Classifier(path, "keras", model.input_shape, model.output_shape[-1],
                      lambda x: model.predict_on_batch(x))


def _onnx(path, threads):
    import onnxruntime

    onnxruntime.disable_telemetry_events()  # no events from the sessions either, whatever the version
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    (input_,), (output,) = session.get_inputs(), session.get_outputs()
    return Classifier(path, "onnx", input_.shape, output.shape[-1],
                      lambda x: session.run([output.name], {input_.name: x})[0])


def _litert(path, threads):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads or None)
    (input_,), (output,) = interpreter.get_input_details(), interpreter.get_output_details()
    batch = [None]

    def run_batch(x):
        if batch[0] != len(x):  # the file holds a batch of 1; other batch sizes are set as they come
            interpreter.resize_tensor_input(input_["index"], list(x.shape))
            interpreter.allocate_tensors()
            batch[0] = len(x)
        interpreter.set_tensor(input_["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(output["index"]).copy()

    return Classifier(path, "litert", [int(n) for n in input_["shape"]], int(output["shape"][-1]), run_batch)


def _saved_model(path, threads):  # TensorFlow's threads are set process-wide, not per model
    tf = _tensorflow()
    serve = tf.saved_model.load(path).signatures["serving_default"]
    (input_,) = serve.structured_input_signature[1].values()
    (output,) = serve.structured_outputs.values()
    return Classifier(path, SAVED_MODEL, list(input_.shape), output.shape[-1],
                      lambda x: next(iter(serve(tf.constant(x)).values())).numpy())
