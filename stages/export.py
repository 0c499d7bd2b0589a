"""Stage export: the trained model as a TensorFlow SavedModel, an ONNX file and a LiteRT file, each checked.

Keras' own model.export writes each format. Each file is then loaded in its own runtime (TensorFlow,
onnxruntime, LiteRT's interpreter) and run on the whole test set against the Keras model: the
metrics file holds, per format, the file size in MB, the share of test images whose predicted class equals
the Keras model's, and the largest difference of any probability. When a format agrees on fewer than
export.min_agreement of the images, the stage stops with one line and writes none of its outputs.
"""
import argparse
import os
import warnings

from mnist_cnn.runner import quiet_tensorflow, run

quiet_tensorflow()  # before keras, so TensorFlow starts without its log lines
import numpy as np  # noqa: E402

from mnist_cnn.errors import UserError  # noqa: E402
from mnist_cnn.files import atomic_dir, atomic_path, write_json  # noqa: E402
from mnist_cnn.model_files import check_fits, load_model  # noqa: E402
from mnist_cnn.network import float32_network  # noqa: E402
from mnist_cnn.params import load_params  # noqa: E402
from mnist_cnn.prepare import scaled_shards  # noqa: E402
from mnist_cnn.runtimes import check_runtime, open_model  # noqa: E402
from mnist_cnn.shards import open_split  # noqa: E402

# format in metrics/export.json -> (Keras' export format, file or folder name in the output folder)
FORMATS = {"saved_model": ("tf_saved_model", "saved_model"),
           "onnx": ("onnx", "model.onnx"),
           "tflite": ("litert", "model.tflite")}
RUNTIMES = {"saved_model": "saved_model", "onnx": "onnx", "tflite": "litert"}  # each file's runtime (runtimes.py)


def size_mb(path):
    """Megabytes of a file, or of every file in a folder (a SavedModel), to 10 kB: the SavedModel and ONNX
    files vary by a few bytes from run to run (names TensorFlow numbers as it traces), their size does not."""
    if os.path.isfile(path):
        size = os.path.getsize(path)
    else:
        size = sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)
    return round(size / 1e6, 2)


def compare(reference, probabilities):
    """How far an exported model's probabilities are from the Keras model's, on the same images."""
    return {"agreement": float(np.mean(probabilities.argmax(axis=1) == reference.argmax(axis=1))),
            "max_abs_diff": float(np.abs(probabilities - reference).max())}


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the trained model (.keras)")
    parser.add_argument("test", help="test split (a shard folder from preprocess)")
    parser.add_argument("out", help="folder for saved_model/, model.onnx and model.tflite")
    parser.add_argument("metrics", help="where to write the comparison (.json)")
    args = parser.parse_args(argv)
    params = load_params()["export"]
    paths = {name: os.path.join(args.out, file) for name, (_, file) in FORMATS.items()}
    for name, path in paths.items():  # a missing runtime is one line naming it, before any work
        check_runtime(path, RUNTIMES[name], load=True)

    model = load_model(args.model)
    test = open_split(args.test)
    check_fits(model, args.model, test)
    network = float32_network(model)  # ONNX takes float32 only; a mixed-precision model is exported computing in it
    reference = np.concatenate([network.predict(x, batch_size=params["batch_size"], verbose=0)
                                for x in scaled_shards(test)])  # shard by shard: memory bounded by one

    metrics, failed = {}, []
    with atomic_dir(paths["saved_model"]) as saved_model, atomic_path(paths["onnx"]) as onnx, \
            atomic_path(paths["tflite"]) as tflite:
        for name, tmp in (("saved_model", saved_model), ("onnx", onnx), ("tflite", tflite)):
            with warnings.catch_warnings():  # tf2onnx's NumPy 2 FutureWarning, TFLite's converter notes
                warnings.simplefilter("ignore")
                network.export(tmp, format=FORMATS[name][0], verbose=False)
            runtime = open_model(tmp, trust=True)  # the stage's own export, just written
            probabilities = np.concatenate([runtime.predict(x, batch_size=params["batch_size"])
                                            for x in scaled_shards(test)])
            metrics[name] = {"size_mb": size_mb(tmp), **compare(reference, probabilities)}
            if metrics[name]["agreement"] < params["min_agreement"]:
                failed.append(f"{name} {metrics[name]['agreement']:.2%}")
        if failed:
            raise UserError(f"the exported model disagrees with the Keras model on too many test images "
                            f"({', '.join(failed)} agree; export.min_agreement is {params['min_agreement']:.2%}): "
                            f"nothing was written. Report it with your versions of keras, tf2onnx and ai-edge-litert")
    write_json(args.metrics, {"images": test.images, **metrics})
    for name, values in metrics.items():
        print(f"export: {paths[name]}: {values['size_mb']:.2f} MB, same class on "
              f"{values['agreement']:.2%} of {test.images} test images, largest probability difference "
              f"{values['max_abs_diff']:.1e}")


if __name__ == "__main__":
    run(main)
