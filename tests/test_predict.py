"""predict: users' own images of any kind, normalised as MNIST was made, and every bad file handled."""
import json
import os
import shutil

import keras
import numpy as np
import pytest
from crafted_images import (
    dds_of_unknown_pixel_format,
    tiff_whose_deflate_stream_is_broken,
    tiff_with_a_tag_past_its_end,
)
from PIL import Image
from tiny_models import tiny_onnx

from conftest import digit_images, run_stage
from mnist_cnn import predict
from mnist_cnn.errors import UserError
from mnist_cnn.images import read_image, to_model_image
from mnist_cnn.runtimes import open_model


@pytest.fixture
def model_dir(trained_run, tmp_path):
    """The tiny trained model with its classes.json, in a folder of its own."""
    directory = tmp_path / "models"
    directory.mkdir()
    shutil.copy(trained_run["model"], directory / "model.keras")
    shutil.copy(trained_run["model"].parent / "classes.json", directory / "classes.json")
    return directory


@pytest.fixture
def good_images(tmp_path):
    """Four readable images of digits 0-3 in four formats and modes, with their labels."""
    digits, labels = digit_images(4, seed=5)
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(255 - digits[0]).save(folder / "a_dark_on_light.jpg", quality=95)
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = digits[1]
    Image.fromarray(rgba, "RGBA").save(folder / "b_rgba.png")
    Image.fromarray(digits[2]).convert("P").save(folder / "c_palette.gif")
    Image.fromarray(digits[3].astype(np.uint16) * 257).save(folder / "d_16bit.png")
    assert Image.open(folder / "d_16bit.png").mode.startswith("I;16")
    return folder, labels


def predict_json(model_dir, *paths, top_k=1):
    result = run_stage("mnist_cnn.predict", "--model", model_dir / "model.keras", "--json", "--top-k", top_k, *paths,
                       cwd=model_dir)
    return result, json.loads(result.stdout) if result.stdout.strip() else []


@pytest.mark.slow
def test_json_output_for_every_kind_of_image(model_dir, good_images):
    folder, labels = good_images
    result, out = predict_json(model_dir, folder, top_k=3)
    assert result.returncode == 0, result.stderr
    assert [os.path.basename(r["path"]) for r in out] == sorted(os.listdir(folder))
    for r in out:
        assert set(r) == {"path", "label", "probability", "top_k"}
        assert r["label"] in [str(d) for d in range(10)] and 0 <= r["probability"] <= 1
        assert [t["probability"] for t in r["top_k"]] == sorted((t["probability"] for t in r["top_k"]), reverse=True)
        assert r["top_k"][0]["label"] == r["label"] and len(r["top_k"]) == 3
    assert "4 images classified, 0 failed" in result.stderr and "images/s" in result.stderr
    # each answer is the model's own for that file: its three most probable classes, with their probabilities
    model = keras.saving.load_model(model_dir / "model.keras")
    names = json.loads((model_dir / "classes.json").read_text())
    for r in out:
        expected = model.predict(to_model_image(read_image(r["path"]))[None, ..., None], verbose=0)[0]
        ranked = np.argsort(-expected)[:3]
        assert [t["label"] for t in r["top_k"]] == [names[i] for i in ranked], r["path"]
        np.testing.assert_allclose([t["probability"] for t in r["top_k"]], expected[ranked], atol=1e-5)


@pytest.mark.slow
def test_text_lines_and_arrays(model_dir, tmp_path):
    digits, _ = digit_images(5, seed=6)
    np.save(tmp_path / "digits.npy", digits[:3])
    np.savez(tmp_path / "more.npz", first=digits[3:4], second=digits[4:5, :, :, None])
    result = run_stage("mnist_cnn.predict", "--model", model_dir / "model.keras", tmp_path / "digits.npy",
                       tmp_path / "more.npz", cwd=model_dir)
    assert result.returncode == 0, result.stderr
    names = [line.split("\t")[0] for line in result.stdout.splitlines()]
    assert [n.replace(str(tmp_path) + "/", "") for n in names] == [
        "digits.npy[0]", "digits.npy[1]", "digits.npy[2]", "more.npz[first][0]", "more.npz[second][0]"]


def write_bad_files(folder):
    """One file for each way an input can be wrong; returns {file name: expected message}."""
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("this is not an image")
    Image.fromarray(digit_images(1, seed=1)[0][0]).resize((300, 300)).save(folder / "whole.png")
    data = (folder / "whole.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    Image.new("L", (1, 1), 0).save(folder / "one_pixel.png")
    header = bytearray(data[:33])  # a PNG whose header says 0 x 0 pixels
    header[16:24] = (0).to_bytes(4, "big") * 2
    (folder / "zero_area.png").write_bytes(bytes(header) + data[33:])
    Image.new("L", (50, 50), 180).save(folder / "blank.png")
    Image.new("1", (10_000, 6_000)).save(folder / "bomb.png")  # 60 megapixels, a few kB on disk
    (folder / "whole.png").unlink()
    return {"empty.png": "empty file", "notes.png": "not an image file", "truncated.png": "broken image data",
            "one_pixel.png": "1x1 pixels is too small", "zero_area.png": "", "blank.png": "no ink",
            "bomb.png": "10000x6000 pixels is over the limit of 16,000,000"}


@pytest.mark.slow
def test_bad_files_are_one_line_each_and_good_ones_still_classified(model_dir, good_images):
    folder, _ = good_images
    expected = write_bad_files(folder)
    result, out = predict_json(model_dir, folder, folder / "missing.png")
    assert result.returncode == 1
    assert len(out) == 4 and all(r["path"].endswith(("jpg", "png", "gif")) for r in out)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in result.stderr
    assert len(errors) == len(expected) + 1
    for name, message in expected.items():
        line = next(e for e in errors if f"/{name}: " in e)
        assert message in line, line
    assert any("missing.png: no such file or folder" in e for e in errors)
    assert "4 images classified, 8 failed" in result.stderr


@pytest.mark.slow
def test_missing_model_says_run_dvc_repro(tmp_path, good_images):
    result = run_stage("mnist_cnn.predict", "--model", tmp_path / "none.keras", good_images[0], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path}/none.keras not found: run `dvc repro` to train and export the model"]


@pytest.mark.parametrize("name", ["model.onnx", "model.keras", "model.tflite"])
def test_a_fifo_as_the_model_is_one_line_not_a_hang(tmp_path, good_images, name):
    os.mkfifo(tmp_path / name)  # nothing ever writes to it: reading it would wait for ever
    result = run_stage("mnist_cnn.predict", "--model", tmp_path / name, good_images[0], cwd=tmp_path)
    assert (result.returncode, result.stderr.splitlines()) == (1, [
        f"error: {tmp_path}/{name} is a FIFO, socket or device, not a model file: give a .keras, .onnx or .tflite "
        f"file or a SavedModel folder"])


@pytest.mark.slow
def test_file_that_is_not_a_keras_model(tmp_path, good_images):
    (tmp_path / "model.keras").write_bytes(b"PK\x03\x04 not really a zip")
    result = run_stage("mnist_cnn.predict", "--model", tmp_path / "model.keras", good_images[0], cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not a Keras model" in lines[0], lines


def test_thousands_of_images_go_through_in_batches(model_dir, tmp_path, monkeypatch, capsys):
    digits, labels = digit_images(1200, seed=7)
    np.save(tmp_path / "many.npy", digits)
    model = open_model(str(model_dir / "model.keras"))
    calls = []
    original = model.predict
    monkeypatch.setattr(model, "predict", lambda x, **kw: calls.append(len(x)) or original(x, **kw))
    monkeypatch.setattr(predict, "open_model", lambda path, **options: model)
    predict.main(["--model", str(model_dir / "model.keras"), "--json", str(tmp_path / "many.npy")])
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 1200 and calls == [512, 512, 176]
    accuracy = np.mean([int(r["label"]) == y for r, y in zip(out, labels)])
    assert accuracy > 0.5  # the tiny model recognises generated digits well above chance (0.1)


# ---------------------------------------------------------------- hostile input, round two

@pytest.mark.slow
def test_special_files_and_odd_arrays_among_the_paths(model_dir, good_images, tmp_path):
    """FIFOs (given directly or met in a folder), link loops, dangling links, a non-UTF-8 name, an array
    header claiming terabytes, one RGB image as an array: one line each, the rest classified, no hang."""
    import io
    folder, _ = good_images
    os.mkfifo(folder / "pipe.png")
    os.symlink("loop.png", folder / "loop.png")
    os.symlink("nowhere.png", folder / "dangling.png")
    shutil.copy(folder / "b_rgba.png", os.path.join(os.fsencode(folder), b"caf\xe9.png"))
    os.mkfifo(tmp_path / "given.png")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
    (tmp_path / "huge.npy").write_bytes(header.getvalue() + b"x" * 64)
    digit = digit_images(1, seed=9)[0][0]
    np.save(tmp_path / "rgb.npy", np.repeat(digit[..., None], 3, axis=2))  # one H x W x 3 colour image
    result, out = predict_json(model_dir, folder, tmp_path / "given.png", tmp_path / "huge.npy", tmp_path / "rgb.npy")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 5, errors
    for name, message in (("dangling.png", "a dangling symbolic link"), ("loop.png", "a symbolic link loop"),
                          ("pipe.png", "not a regular file but a FIFO (named pipe)"),
                          ("given.png", "not a regular file but a FIFO (named pipe)"),
                          ("huge.npy", "claims shape (1000000000000,) of float64")):
        assert any(f"{name}: " in e and message in e for e in errors), (name, errors)
    paths = [r["path"] for r in out]
    assert any(p.endswith("caf\\xe9.png") for p in paths), paths  # printable, and classified
    assert any(p.endswith("rgb.npy[0]") for p in paths)  # one image, not "0x28 pixels is too small"
    assert len(out) == 6


def test_a_folder_without_images_is_one_line(model_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(SystemExit) as exit_:
        predict.main(["--model", str(model_dir / "model.keras"), str(tmp_path / "empty")])
    assert exit_.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {tmp_path}/empty: no image files in this folder (looked for .png, .jpg, .jpeg, .bmp, "
                      f".gif, .tif, .tiff, .webp, .pgm, .ppm, .pbm, .npy, .npz)"]


@pytest.mark.parametrize("content, message", [
    ("not json", "classes.json is not readable JSON"),
    ('["a", "b"]', "classes.json does not hold the 10 class names of"),
    ('{"0": "zero"}', "classes.json does not hold the 10 class names of"),
])
def test_a_broken_or_mismatched_classes_json_is_one_line(model_dir, good_images, content, message):
    (model_dir / "classes.json").write_text(content)
    with pytest.raises(UserError, match=message):
        predict.main(["--model", str(model_dir / "model.keras"), str(good_images[0])])


def keras_model_file(path, layers_, input_shape):
    import keras
    model = keras.Sequential([keras.Input(input_shape), *layers_])
    model.save(path)
    return path


def test_models_safe_mode_refuses_or_that_take_no_images_are_one_line(tmp_path, good_images):
    import keras
    lambda_model = keras_model_file(tmp_path / "lambda.keras", [keras.layers.Flatten(),
                                    keras.layers.Lambda(lambda x: x * 2), keras.layers.Dense(10)], (28, 28, 1))
    flat_model = keras_model_file(tmp_path / "flat.keras", [keras.layers.Dense(10)], (784,))
    with pytest.raises(UserError, match="lambda.keras is not a Keras model .*: run `dvc repro --force train`"):
        predict.main(["--model", str(lambda_model), str(good_images[0])])
    with pytest.raises(UserError, match=r"flat.keras takes inputs of shape \(None, 784\), not images of"):
        predict.main(["--model", str(flat_model), str(good_images[0])])


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("kind", ["onnx", "keras"])
def test_predict_writes_nothing_under_home(tmp_path, request, kind):
    """onnxruntime writes a telemetry database and a device id under ~/.cache unless told not to; Keras writes
    ~/.keras/keras.json and matplotlib (imported by Keras) a font cache under ~/.cache, unless kept from it."""
    home = tmp_path / "home"
    home.mkdir()
    if kind == "onnx":
        model = tiny_onnx(tmp_path / "model.onnx")
    else:
        model = request.getfixturevalue("model_dir") / "model.keras"
    digits, _ = digit_images(2, seed=3)
    Image.fromarray(digits[1]).save(tmp_path / "digit.png")
    result = run_stage("mnist_cnn.predict", "--model", model, tmp_path / "digit.png", cwd=tmp_path,
                       env={"HOME": str(home), "XDG_CACHE_HOME": ""})
    assert result.returncode == 0, result.stderr
    assert "digit.png\t" in result.stdout
    assert files_under(home) == []


def test_files_that_are_not_what_they_claim_are_one_line_each_beside_good_ones(tmp_path):
    """A DDS file named .png (Pillow's DDS plugin raised NotImplementedError), a TIFF Pillow warns about, a
    LAB TIFF, a TIFF libtiff complains about: one error line each for the DDS and the broken TIFF, the others
    classified, and no Pillow warning or libtiff message on stderr."""
    model = tiny_onnx(tmp_path / "model.onnx")
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(digit_images(1, seed=2)[0][0]).save(folder / "a_good.png")
    (folder / "b_crafted.png").write_bytes(dds_of_unknown_pixel_format())
    (folder / "c_warns.tif").write_bytes(tiff_with_a_tag_past_its_end())
    (folder / "e_libtiff_complains.tif").write_bytes(tiff_whose_deflate_stream_is_broken())
    Image.fromarray(np.stack([digit_images(1, seed=4)[0][0]] * 3, axis=2)).convert("LAB").save(folder / "d_lab.tif")
    result = run_stage("mnist_cnn.predict", "--model", model, folder, cwd=tmp_path)
    assert result.returncode == 1
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == [
        f"{folder}/a_good.png", f"{folder}/c_warns.tif", f"{folder}/d_lab.tif"]
    lines = result.stderr.splitlines()
    assert lines[0] == (f"error: {folder}/b_crafted.png: not an image file in a format this project reads "
                        f"(PNG, JPEG, BMP, GIF, TIFF, WebP, PGM/PPM)")
    assert lines[1] == f"error: {folder}/e_libtiff_complains.tif: broken image data (OSError: decoder error -2)"
    assert len(lines) == 3 and lines[2].startswith("predict: 3 images classified, 2 failed"), lines


@pytest.mark.parametrize("command", [("mnist_cnn.predict", "x.png"), ("mnist_cnn.serve", "--port", "1")],
                         ids=["predict", "serve"])
def test_a_savedmodel_or_litert_file_from_elsewhere_runs_only_with_trust_model(tmp_path, command):
    """Both are programs (a SavedModel's graph can read and write files): not the project's own export, they are
    refused before a byte is parsed; --trust-model hands them to their runtime (here: a file LiteRT can't read).
    tests/test_export.py runs a SavedModel that writes a file, and the project's own exports."""
    (tmp_path / "saved_model").mkdir()
    (tmp_path / "saved_model" / "saved_model.pb").write_bytes(b"not a graph")
    (tmp_path / "model.tflite").write_bytes(b"not a flatbuffer")
    module, *rest = command
    for model, kind in (("saved_model", "a SavedModel"), ("model.tflite", "a LiteRT file")):
        refused = run_stage(module, "--model", model, *rest, cwd=tmp_path)
        assert refused.returncode == 1 and refused.stderr.splitlines() == [
            f"error: {model}: {kind} is a program that can read and write files, and this one is not this "
            f"project's export (no dvc.lock above it records its digest): --trust-model runs it if you trust "
            f"where it came from, or run `dvc repro export` to export your own"], refused.stderr
    trusted = run_stage(module, "--model", "model.tflite", "--trust-model", *rest, cwd=tmp_path)
    assert trusted.returncode == 1 and "error: model.tflite is not a readable litert model" in trusted.stderr, \
        trusted.stderr
