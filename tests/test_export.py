"""The export stage: SavedModel, ONNX and LiteRT files, each run in its own runtime against the Keras model;
and predict on the ONNX file without TensorFlow."""
import json
import os
import re
import shutil

import numpy as np
import pytest
import yaml

from conftest import digit_images, run_stage, sh, write_params
from mnist_cnn.errors import UserError
from mnist_cnn.prepare import read_split
from mnist_cnn.runtimes import open_model

pytestmark = pytest.mark.slow  # a trained model exported by the real stage

FILES = {"saved_model": "saved_model", "onnx": "model.onnx", "tflite": "model.tflite"}


def test_each_format_is_written_and_agrees_with_the_keras_model(exported_run):
    metrics = json.loads(exported_run["export_metrics"].read_text())
    x_test, _, _ = read_split(exported_run["processed"] / "test")
    assert metrics["images"] == len(x_test)
    keras_probabilities = open_model(str(exported_run["model"])).predict(x_test)
    for name, file in FILES.items():
        assert metrics[name]["agreement"] >= 0.999 and 0 <= metrics[name]["max_abs_diff"] < 1e-4
        assert metrics[name]["size_mb"] >= 0.9  # the weights alone are 0.9 MB
        model = open_model(str(exported_run["exports"] / file), trust=True)  # no dvc.lock here: trusted by hand
        assert (model.format, model.image_shape, model.num_classes) == (
            {"saved_model": "saved_model", "onnx": "onnx", "tflite": "litert"}[name], (28, 28, 1), 10)
        probabilities = model.predict(x_test, batch_size=37)  # a batch size that leaves a remainder
        np.testing.assert_allclose(probabilities, keras_probabilities, atol=1e-4)
        assert (probabilities.argmax(1) == keras_probabilities.argmax(1)).mean() >= 0.999
    assert not [n for n in os.listdir(exported_run["exports"]) if n.startswith(".")]  # no temporary files left


def test_too_little_agreement_stops_the_stage_and_writes_nothing(exported_run, tmp_path, monkeypatch):
    """A runtime that answered differently from Keras (simulated: every other image's classes shifted by one)
    fails the stage with one line, and the previous outputs stay as they were."""
    from stages import export

    out = tmp_path / "models"
    shutil.copytree(exported_run["exports"] / "saved_model", out / "saved_model")
    (out / "model.onnx").write_bytes(b"previous")
    real_open_model = export.open_model

    def disagreeing(path, trust=False):
        model = real_open_model(path, trust=trust)
        real_predict = model.predict

        def predict(x, batch_size):
            probabilities = real_predict(x, batch_size)
            probabilities[::2] = np.roll(probabilities[::2], 1, axis=1)
            return probabilities

        model.predict = predict
        return model

    monkeypatch.setattr(export, "open_model", disagreeing)
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path)
    with pytest.raises(UserError, match=r"disagrees with the Keras model on too many test images \(saved_model "
                                        r"\d+\.\d+%, onnx .*export.min_agreement is 99.90%\): nothing was written"):
        export.main([str(exported_run["model"]), str(exported_run["processed"] / "test"), str(out),
                     str(tmp_path / "export.json")])
    assert (out / "model.onnx").read_bytes() == b"previous" and not (out / "model.tflite").exists()
    assert sorted(os.listdir(out)) == ["model.onnx", "saved_model"] and not (tmp_path / "export.json").exists()


@pytest.fixture
def onnx_only(exported_run, tmp_path):
    """A folder as a user gets from `dvc get ... models/model.onnx`: the ONNX file and classes.json."""
    directory = tmp_path / "models"
    directory.mkdir()
    for name in ("model.onnx", "classes.json", "model.keras"):
        shutil.copy(exported_run["exports"] / name, directory / name)
    digits, _ = digit_images(6, seed=9)
    np.save(tmp_path / "digits.npy", digits)
    return tmp_path


def test_predict_runs_the_onnx_file_without_tensorflow(onnx_only, run_here):
    """With tensorflow and keras made unimportable, predict still classifies from the ONNX file, as the Keras
    model does; named no model, it picks models/model.onnx."""
    blocked = onnx_only / "blocked"
    for package in ("tensorflow", "keras"):
        (blocked / package).mkdir(parents=True)
        (blocked / package / "__init__.py").write_text(f"raise ImportError('{package} is blocked in this test')\n")
    from conftest import REPO

    onnx = run_stage("mnist_cnn.predict", "--json", "--top-k", 3, "digits.npy", cwd=onnx_only,
                     env={"PYTHONPATH": f"{blocked}{os.pathsep}{REPO}"})
    assert onnx.returncode == 0, onnx.stderr
    assert "6 images classified, 0 failed" in onnx.stderr and "(models/model.onnx, onnx)" in onnx.stderr
    keras = run_here("mnist_cnn.predict", "--json", "--top-k", 3, "--model", "models/model.keras", "digits.npy",
                     cwd=onnx_only)
    assert keras.returncode == 0, keras.stderr
    for a, b in zip(json.loads(onnx.stdout), json.loads(keras.stdout), strict=True):
        assert a["label"] == b["label"] and abs(a["probability"] - b["probability"]) < 1e-4
        assert [t["label"] for t in a["top_k"]] == [t["label"] for t in b["top_k"]]
    # Without the ONNX file, the Keras model is the default
    os.remove(onnx_only / "models" / "model.onnx")
    fallback = run_here("mnist_cnn.predict", "digits.npy", cwd=onnx_only)
    assert fallback.returncode == 0 and "(models/model.keras, keras)" in fallback.stderr


@pytest.mark.parametrize("name, content, message", [
    ("model.onnx", b"not a model", r"model.onnx is not a readable onnx model \(.*\): run `dvc repro --force export`"),
    ("model.tflite", b"not a model", r"model.tflite is not a readable litert model \(.*\)"),
    ("params.json", b"{}", r"params.json is not a model file: give a .keras, .onnx or .tflite file or a SavedModel"),
])
def test_a_bad_model_file_is_one_line(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    # --trust-model: a LiteRT file from elsewhere is refused unread without it (tests/test_predict.py)
    result = run_stage("mnist_cnn.predict", "--model", name, "--trust-model", "x.png", cwd=tmp_path)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert re.search(message, result.stderr), result.stderr


def test_a_mixed_precision_model_is_exported_computing_in_float32(exported_run, tmp_path, monkeypatch):
    """What train.precision: auto trains on a CPU with AVX512-BF16 (or a GPU): bfloat16 layers. ONNX takes
    float32 only, so export writes the same weights computing in float32 and checks every format against it."""
    from mnist_cnn.model_files import load_model, save_model
    from mnist_cnn.network import build_model, float32_network, inference_model
    from mnist_cnn.params import load_params
    from mnist_cnn.prepare import one_hot
    from stages import export

    monkeypatch.chdir(tmp_path)
    params = write_params(tmp_path)
    x, labels, names = read_split(exported_run["processed"] / "train")
    model = build_model(params["model"], x.shape[1:], len(names), "mixed_bfloat16")
    model.compile("adam", "categorical_crossentropy")
    model.fit(x, one_hot(labels, len(names)), epochs=1, batch_size=32, verbose=0)
    save_model(inference_model(model), tmp_path / "models" / "model.keras")
    loaded = load_model(str(tmp_path / "models" / "model.keras"))
    assert {layer.dtype_policy.name for layer in loaded.layers} == {"mixed_bfloat16", "float32"}
    network = float32_network(loaded)
    assert {layer.dtype_policy.name for layer in network.layers} == {"float32"}
    np.testing.assert_allclose(network.predict(x, verbose=0), loaded.predict(x, verbose=0), atol=0.01)
    assert load_params()["export"]["min_agreement"] == 0.999
    export.main([str(tmp_path / "models" / "model.keras"), str(exported_run["processed"] / "test"),
                 str(tmp_path / "models"), str(tmp_path / "export.json")])
    metrics = json.loads((tmp_path / "export.json").read_text())
    assert all(metrics[name]["agreement"] == 1.0 and metrics[name]["max_abs_diff"] < 1e-5 for name in FILES)


def saved_model_that_writes(folder, target):
    """A SavedModel that classifies 28x28x1 images, and writes `target` each time it runs: a program."""
    import tensorflow as tf

    class Writer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)])
        def serve(self, x):
            tf.io.write_file(str(target), tf.strings.as_string(tf.shape(x)[0]))
            with tf.control_dependencies([tf.io.write_file(str(target), "written by the model")]):
                return {"probabilities": tf.nn.softmax(tf.reshape(x, [-1, 784])[:, :10])}

    module = Writer()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    return folder


def test_a_savedmodel_that_writes_files_runs_only_with_trust_model(tmp_path, run_here):
    target = tmp_path / "written.txt"
    saved_model_that_writes(tmp_path / "downloaded", target)
    digits, _ = digit_images(2, seed=1)
    np.save(tmp_path / "digits.npy", digits)
    refused = run_stage("mnist_cnn.predict", "--model", "downloaded", "digits.npy", cwd=tmp_path)
    assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1, refused.stderr
    assert "downloaded: a SavedModel is a program that can read and write files" in refused.stderr
    assert not target.exists()
    trusted = run_here("mnist_cnn.predict", "--model", "downloaded", "--trust-model", "digits.npy", cwd=tmp_path)
    assert trusted.returncode == 0, trusted.stderr
    assert target.read_text() == "written by the model"  # what --trust-model lets it do


def test_the_projects_own_exports_load_without_the_flag(exported_run, tmp_path, run_here):
    """The SavedModel and LiteRT file whose digests the project's dvc.lock records (DVC's own digests here, from
    `dvc add`) load freely; one byte changed, the LiteRT file is refused."""
    models = tmp_path / "models"
    shutil.copytree(exported_run["exports"] / "saved_model", models / "saved_model")
    shutil.copy(exported_run["exports"] / "model.tflite", models / "model.tflite")
    sh(tmp_path, "dvc", "init", "--no-scm", "-q")
    sh(tmp_path, "dvc", "add", "-q", "models/saved_model", "models/model.tflite")
    outs = [yaml.safe_load((models / f"{name}.dvc").read_text())["outs"][0] for name in ("saved_model", "model.tflite")]
    lock = {"schema": "2.0", "stages": {"export": {"cmd": "python -m stages.export ...", "outs": [
        {"path": f"models/{out['path']}", "hash": "md5", "md5": out["md5"], "size": out["size"]} for out in outs]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    digits, _ = digit_images(3, seed=2)
    np.save(tmp_path / "digits.npy", digits)
    for model, format in (("models/saved_model", "saved_model"), ("models/model.tflite", "litert")):
        result = run_here("mnist_cnn.predict", "--model", model, "digits.npy", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "3 images classified, 0 failed" in result.stderr and f"({model}, {format})" in result.stderr
    with open(models / "model.tflite", "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    changed = run_stage("mnist_cnn.predict", "--model", "models/model.tflite", "digits.npy", cwd=tmp_path)
    assert changed.returncode == 1 and "is not this project's export" in changed.stderr, changed.stderr


def test_a_missing_runtime_is_named_with_its_install_command(exported_run, tmp_path):
    """onnxruntime made unimportable: the stage names it and the command that installs it, before any work; it
    named a deleted temporary file and advised rerunning the stage."""
    blocked = tmp_path / "blocked" / "onnxruntime"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('onnxruntime is blocked in this test')\n")
    write_params(tmp_path)
    from conftest import REPO

    result = run_stage("stages.export", exported_run["model"], exported_run["processed"] / "test", "out",
                       "export.json", cwd=tmp_path, env={"PYTHONPATH": f"{blocked.parent}{os.pathsep}{REPO}"})
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: out/model.onnx: onnx models need onnxruntime, not installed here: `pip install onnxruntime`"]
    assert not (tmp_path / "out").exists()
