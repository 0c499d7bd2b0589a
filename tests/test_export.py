"""The export stage: SavedModel, ONNX and LiteRT files, each run in its own runtime against the Keras model;
and predict on the ONNX file without TensorFlow."""
import json
import os
import re
import shutil

import numpy as np
import pytest

from conftest import digit_images, run_stage, write_params
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
        model = open_model(str(exported_run["exports"] / file))
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

    def disagreeing(path):
        model = real_open_model(path)
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


def test_predict_runs_the_onnx_file_without_tensorflow(onnx_only):
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
    keras = run_stage("mnist_cnn.predict", "--json", "--top-k", 3, "--model", "models/model.keras", "digits.npy",
                      cwd=onnx_only)
    assert keras.returncode == 0, keras.stderr
    for a, b in zip(json.loads(onnx.stdout), json.loads(keras.stdout), strict=True):
        assert a["label"] == b["label"] and abs(a["probability"] - b["probability"]) < 1e-4
        assert [t["label"] for t in a["top_k"]] == [t["label"] for t in b["top_k"]]
    # Without the ONNX file, the Keras model is the default
    os.remove(onnx_only / "models" / "model.onnx")
    fallback = run_stage("mnist_cnn.predict", "digits.npy", cwd=onnx_only)
    assert fallback.returncode == 0 and "(models/model.keras, keras)" in fallback.stderr


@pytest.mark.parametrize("name, content, message", [
    ("model.onnx", b"not a model", r"model.onnx is not a readable onnx model \(.*\): run `dvc repro --force export`"),
    ("model.tflite", b"not a model", r"model.tflite is not a readable litert model \(.*\)"),
    ("params.json", b"{}", r"params.json is not a model file: give a .keras, .onnx or .tflite file or a SavedModel"),
])
def test_a_bad_model_file_is_one_line(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    result = run_stage("mnist_cnn.predict", "--model", name, "x.png", cwd=tmp_path)
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
