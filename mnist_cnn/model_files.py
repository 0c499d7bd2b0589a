"""The trained model on disk: saved byte-deterministically, loaded in Keras' safe mode with one-line errors."""
import json
import os
import zipfile

from mnist_cnn.errors import UserError
from mnist_cnn.files import atomic_path, fixed_zip_member


def renumber_shared_objects(node, numbers):
    """Replace Keras' shared_object_id (a memory address) with 0, 1, 2... in order of appearance."""
    if isinstance(node, dict):
        return {key: numbers.setdefault(value, len(numbers)) if key == "shared_object_id"
                else renumber_shared_objects(value, numbers) for key, value in node.items()}
    if isinstance(node, list):
        return [renumber_shared_objects(value, numbers) for value in node]
    return node


def save_model(model, path):
    """model.save, minus what differs between equal models (save time, memory addresses): equal bytes."""
    with atomic_path(path) as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp) as archive:
            members = [(info, archive.read(info)) for info in archive.infolist()]
        with zipfile.ZipFile(tmp, "w") as archive:
            for info, data in members:
                if info.filename == "metadata.json":
                    metadata = json.loads(data)
                    metadata.pop("date_saved", None)
                    data = json.dumps(metadata).encode()
                elif info.filename == "config.json":
                    data = json.dumps(renumber_shared_objects(json.loads(data), {})).encode()
                archive.writestr(fixed_zip_member(info.filename, info.compress_type), data)


def load_model(path):
    """Load a Keras model in safe mode (no arbitrary code), with one-line errors for what users get wrong."""
    if not os.path.exists(path):
        raise UserError(f"{path} not found: run `dvc repro` to train the model")
    import keras  # here, not above: commands that never load a model start without TensorFlow

    try:
        return keras.saving.load_model(path, safe_mode=True)
    except (OSError, ValueError, zipfile.BadZipFile, KeyError, TypeError, AttributeError) as e:
        # TypeError: a layer or function safe mode can't or won't rebuild (custom code, lambdas)
        raise UserError(f"{path} is not a Keras model ({str(e).splitlines()[0] if str(e) else type(e).__name__}): "
                        f"run `dvc repro --force train` to rebuild it")


def image_shape(path, input_shape, stage="train"):
    """(height, width, channels) from a model's input shape (batch axis first), in any format; one line for a
    model that does not take images. stage: the stage that writes such a file (train, export)."""
    shape = tuple(input_shape) if isinstance(input_shape, list) else input_shape
    if (not isinstance(shape, tuple) or len(shape) != 4 or shape[3] not in (1, 3)
            or not all(isinstance(n, int) and n > 0 for n in shape[1:3])):
        raise UserError(f"{path} takes inputs of shape {shape}, not images of (height, width, 1 or 3): it is not "
                        f"a model this pipeline {'trained' if stage == 'train' else 'exported'}; "
                        f"run `dvc repro --force {stage}`")
    return shape[1:]


def check_fits(model, path, split):
    """One line when the model's input or classes don't match a split's (a model from another dataset), or when it
    does not give one row of class probabilities per image (an output of (None, 28, 10) has 10 in its last place)."""
    image_shape(path, model.input_shape)
    if (tuple(model.output_shape[1:]) != (len(split.class_names),)
            or tuple(model.input_shape[1:]) != split.image_shape):
        raise UserError(f"{path} does not fit {split.folder} (model {model.input_shape} -> {model.output_shape}, "
                        f"data {split.image_shape} with {len(split.class_names)} classes): run `dvc repro` to retrain")
