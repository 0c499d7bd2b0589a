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


def predict_json(run_here, model_dir, *paths, top_k=1):
    result = run_here("mnist_cnn.predict", "--model", model_dir / "model.keras", "--json", "--top-k", top_k, *paths,
                      cwd=model_dir)
    return result, json.loads(result.stdout) if result.stdout.strip() else []


@pytest.mark.slow
def test_json_output_for_every_kind_of_image(model_dir, good_images, run_here):
    folder, labels = good_images
    result, out = predict_json(run_here, model_dir, folder, top_k=3)
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


def test_text_lines_and_arrays(model_dir, tmp_path, run_here):
    digits, _ = digit_images(5, seed=6)
    np.save(tmp_path / "digits.npy", digits[:3])
    np.savez(tmp_path / "more.npz", first=digits[3:4], second=digits[4:5, :, :, None])
    result = run_here("mnist_cnn.predict", "--model", model_dir / "model.keras", tmp_path / "digits.npy",
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
def test_bad_files_are_one_line_each_and_good_ones_still_classified(model_dir, good_images, run_here):
    folder, _ = good_images
    expected = write_bad_files(folder)
    result, out = predict_json(run_here, model_dir, folder, folder / "missing.png")
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


def test_file_that_is_not_a_keras_model(tmp_path, good_images, run_here):
    (tmp_path / "model.keras").write_bytes(b"PK\x03\x04 not really a zip")
    result = run_here("mnist_cnn.predict", "--model", tmp_path / "model.keras", good_images[0], cwd=tmp_path)
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

def test_special_files_and_odd_arrays_among_the_paths(model_dir, good_images, tmp_path, run_here):
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
    result, out = predict_json(run_here, model_dir, folder, tmp_path / "given.png", tmp_path / "huge.npy",
                               tmp_path / "rgb.npy")
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


def test_a_folder_without_images_is_one_line(tiny_model, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(SystemExit) as exit_:
        predict.main(["--model", str(tiny_model[0]), str(tmp_path / "empty")])
    assert exit_.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {tmp_path}/empty: no image files in this folder (looked for .png, .jpg, .jpeg, .bmp, "
                      f".gif, .tif, .tiff, .webp, .pgm, .ppm, .pbm, .npy, .npz)"]


@pytest.mark.parametrize("content, message", [
    ("not json", "classes.json is not readable JSON"),
    ('["a", "b"]', "classes.json does not hold the 10 class names of"),
    ('{"0": "zero"}', "classes.json does not hold the 10 class names of"),
])
def test_a_broken_or_mismatched_classes_json_is_one_line(tiny_model, good_images, content, message):
    model, _ = tiny_model
    (model.parent / "classes.json").write_text(content)
    with pytest.raises(UserError, match=message):
        predict.main(["--model", str(model), str(good_images[0])])


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


@pytest.mark.stage
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


@pytest.mark.stage
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


# ---------------------------------------------------------------- in process, with a tiny ONNX model (no training)

def tiny_probabilities(pixels, seed=0, colour=False):
    """What tiny_onnx's model gives one image, computed apart: the normalised image times its weights, softmax."""
    size = 784 * (3 if colour else 1)
    weights = np.random.default_rng(seed).normal(size=(size, 10)).astype(np.float64)
    logits = to_model_image(pixels, 28, colour).reshape(size).astype(np.float64) @ weights
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()


@pytest.fixture
def tiny_model(tmp_path):
    """tiny_onnx's model with classes.json naming its classes zero ... nine, in a folder of its own."""
    (tmp_path / "tiny").mkdir()
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    (tmp_path / "tiny" / "classes.json").write_text(json.dumps(names))
    return tiny_onnx(tmp_path / "tiny" / "model.onnx"), names


def test_predict_lists_every_image_of_folders_and_arrays_with_the_models_top_classes(tiny_model, tmp_path, capsys,
                                                                                     monkeypatch):
    """Folders (sorted, subfolders after files, suffixes in any case, other files skipped), .npz arrays key by key,
    one image as a 2-D or H x W x 3 array, N x H x W x 1: each image's line, or JSON entry with its top k."""
    model, names = tiny_model
    digits, _ = digit_images(12, seed=11)
    folder = tmp_path / "images"
    for sub in ("c", "a", "q"):  # os.listdir gives them as the file system keeps them (ext4 here: q, c, a)
        (folder / sub).mkdir(parents=True)
    for name, digit in (("b.png", 0), ("a.png", 1), ("C.PNG", 2), ("c/d.png", 3), ("q/e.png", 9)):
        Image.fromarray(digits[digit]).save(folder / name)
    Image.fromarray(digits[10]).save(os.path.join(os.fsencode(folder), b"caf\xe9.png"))  # a name that is not UTF-8
    np.save(folder / "a" / "f.npy", digits[11])
    (folder / "notes.txt").write_text("not an image")
    np.savez(tmp_path / "arrays.npz", first=digits[4:6], second=digits[6:7, ..., None])
    with open(tmp_path / "one.NPY", "wb") as f:  # np.save would add .npy to the name
        np.save(f, digits[7])
    np.save(tmp_path / "rgb.npy", np.repeat(digits[8][..., None], 3, axis=2))
    paths = [str(folder), str(tmp_path / "arrays.npz"), str(tmp_path / "one.NPY"), str(tmp_path / "rgb.npy")]
    expected = [(f"{folder}/C.PNG", digits[2]), (f"{folder}/a.png", digits[1]), (f"{folder}/b.png", digits[0]),
                (f"{folder}/caf\\xe9.png", digits[10]), (f"{folder}/a/f.npy[0]", digits[11]),
                (f"{folder}/c/d.png", digits[3]), (f"{folder}/q/e.png", digits[9]),
                (f"{tmp_path}/arrays.npz[first][0]", digits[4]),
                (f"{tmp_path}/arrays.npz[first][1]", digits[5]), (f"{tmp_path}/arrays.npz[second][0]", digits[6]),
                (f"{tmp_path}/one.NPY[0]", digits[7]),
                (f"{tmp_path}/rgb.npy[0]", np.repeat(digits[8][..., None], 3, axis=2))]
    probabilities = [tiny_probabilities(pixels) for _, pixels in expected]
    assert len({p.argmax() for p in probabilities}) > 1  # images the model tells apart
    clock = iter([10.0, 14.0, 20.0, 20.5, 30.0, 30.0])  # predict's start and end: 4 s, 0.5 s, then no time at all
    monkeypatch.setattr(predict, "time", type("Clock", (), {"perf_counter": staticmethod(lambda: next(clock))}))

    predict.main(["--model", str(model), "--json", "--top-k", "3", *paths])
    out, err = capsys.readouterr()
    results = json.loads(out)
    assert out == json.dumps(results, indent=1) + "\n"
    assert [r["path"] for r in results] == [name for name, _ in expected]
    for result, p in zip(results, probabilities):
        ranked = np.argsort(-p)[:3]
        assert [t["label"] for t in result["top_k"]] == [names[i] for i in ranked]
        assert [t["probability"] for t in result["top_k"]] == pytest.approx(p[ranked], abs=1e-5)
        assert {"label": result["label"], "probability": result["probability"]} == result["top_k"][0]
    assert err == f"predict: 12 images classified, 0 failed, 3 images/s ({model}, onnx)\n"

    predict.main(["--model", str(model), *paths])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.split("\t")[:2] for line in lines] == [[name, names[p.argmax()]] for (name, _), p in
                                                         zip(expected, probabilities)]
    assert [float(line.split("\t")[2]) for line in lines] == pytest.approx([p.max() for p in probabilities], abs=2e-4)
    assert all(len(line.split("\t")[2]) == 6 for line in lines)  # 0.1234: four decimals, nothing after
    assert err == f"predict: 12 images classified, 0 failed, 24 images/s ({model}, onnx)\n"

    predict.main(["--model", str(model), "--top-k", "2", paths[2]])
    p = probabilities[10]
    first, second = np.argsort(-p)[:2]
    line, err = capsys.readouterr()
    assert err == f"predict: 1 images classified, 0 failed, 0 images/s ({model}, onnx)\n"
    monkeypatch.undo()
    assert line == (f"{expected[10][0]}\t{names[first]}\t{p[first]:.4f}  {names[first]}:{p[first]:.3f}  "
                    f"{names[second]}:{p[second]:.3f}\n")
    for k, keys in (("1", ["label", "path", "probability"]), ("2", ["label", "path", "probability", "top_k"])):
        predict.main(["--model", str(model), "--json", "--top-k", k, paths[2]])
        (result,) = json.loads(capsys.readouterr().out)
        assert sorted(result) == keys and len(result.get("top_k", "ab")) == 2


def test_predict_reports_each_bad_file_and_array_in_a_line_and_classifies_the_rest(tiny_model, tmp_path, capsys):
    model, _ = tiny_model
    digits, _ = digit_images(2, seed=12)
    Image.fromarray(digits[0]).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    np.save(tmp_path / "five_d.npy", np.zeros((1, 2, 28, 28, 1), np.uint8))
    np.save(tmp_path / "words.npy", np.array([["a", "b"], ["c", "d"]]))
    np.savez(tmp_path / "mixed.npz", good=digits[1:2], nan=np.full((1, 28, 28), np.nan, np.float32))
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not a zip")
    os.mkfifo(tmp_path / "pipe.npy")  # nothing writes to it: reading it would wait for ever
    names = ["good.png", "bad.png", "five_d.npy", "words.npy", "mixed.npz", "broken.npz", "pipe.npy"]
    with pytest.raises(SystemExit) as exit_:
        predict.main(["--model", str(model), *[str(tmp_path / name) for name in names]])
    assert exit_.value.code == 1
    out, err = capsys.readouterr()
    classified = [line.split("\t")[0] for line in out.splitlines()]
    assert classified == [f"{tmp_path}/good.png", f"{tmp_path}/mixed.npz[good][0]"]
    errors = err.splitlines()
    assert errors[0].startswith(f"error: {tmp_path}/bad.png: ")
    assert errors[1:] == [
        f"error: {tmp_path}/five_d.npy: {tmp_path}/five_d.npy has shape (1, 2, 28, 28, 1) and dtype uint8; expected "
        f"(N, H, W) or (N, H, W, 3) numbers",
        f"error: {tmp_path}/words.npy: {tmp_path}/words.npy has shape (1, 2, 2) and dtype <U1; expected (N, H, W) or "
        f"(N, H, W, 3) numbers",
        f"error: {tmp_path}/mixed.npz[nan][0]: NaN or infinite pixel values",
        errors[4], errors[5], errors[6]]
    assert errors[4].startswith(f"error: {tmp_path}/broken.npz: not a readable .npz file (")
    assert errors[5] == (f"error: {tmp_path}/pipe.npy: not a regular file but a FIFO (named pipe): remove it or move "
                         f"it elsewhere")
    assert errors[6].startswith("predict: 2 images classified, 6 failed, ")


def test_predict_refuses_a_top_k_under_1_a_model_of_oblong_images_and_arrays_without_images(tiny_model, tmp_path):
    model, _ = tiny_model
    np.save(tmp_path / "none.npy", np.zeros((0, 28, 28), np.uint8))
    for k in ("0", "-1"):
        with pytest.raises(UserError, match=f"^--top-k {k}: K must be 1 or more$"):
            predict.main(["--model", str(model), "--top-k", k, str(tmp_path / "none.npy")])
    with pytest.raises(UserError, match=f"^no images found in {tmp_path}/none.npy, {tmp_path}/none.npy$"):
        predict.main(["--model", str(model), str(tmp_path / "none.npy"), str(tmp_path / "none.npy")])
    oblong = keras_model_file(tmp_path / "oblong.keras", [keras.layers.Flatten(), keras.layers.Dense(10)], (28, 20, 1))
    with pytest.raises(UserError, match=f"^{oblong} takes 28x20 images; predict brings images to a square$"):
        predict.main(["--model", str(oblong), str(tmp_path / "none.npy")])


def test_predict_sends_images_to_the_model_in_batches_of_512(tiny_model, tmp_path, monkeypatch, capsys):
    model_path, names = tiny_model
    digits, _ = digit_images(20, seed=13)
    np.save(tmp_path / "many.npy", np.concatenate([digits] * 60))  # 1,200 images
    model = open_model(str(model_path))
    calls, original = [], model.predict
    monkeypatch.setattr(model, "predict", lambda x, **kw: calls.append((len(x), kw)) or original(x, **kw))
    monkeypatch.setattr(predict, "open_model", lambda path, **options: model)
    predict.main(["--model", str(model_path), "--json", str(tmp_path / "many.npy")])
    out = json.loads(capsys.readouterr().out)
    assert calls == [(512, {"batch_size": 512}), (512, {"batch_size": 512}), (176, {"batch_size": 512})]
    assert [r["label"] for r in out] == [names[tiny_probabilities(digit).argmax()] for digit in digits] * 60
    assert [r["path"] for r in out[510:514]] == [f"{tmp_path}/many.npy[{i}]" for i in range(510, 514)]


def test_a_colour_model_gets_each_image_in_colour(tmp_path, capsys):
    """A model of three channels: files and arrays, grayscale or colour, brought to 28x28 colour (fit_colour), not
    to MNIST's grayscale form."""
    model = tiny_onnx(tmp_path / "colour.onnx", channels=3)
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (40, 30, 3), np.uint8)
    rgb[:, :, 0] = 250  # a strong red: grayscale would lose it
    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.save(tmp_path / "b.npy", rgb[:28, :28])
    gray = digit_images(1, seed=6)[0][0]
    np.save(tmp_path / "c.npy", gray)
    predict.main(["--model", str(model), "--json", "--top-k", "10", *(str(tmp_path / n) for n in ("a.png", "b.npy",
                                                                                                 "c.npy"))])
    results = json.loads(capsys.readouterr().out)
    for result, pixels in zip(results, (read_image(str(tmp_path / "a.png"), True), rgb[:28, :28], gray)):
        p = tiny_probabilities(pixels, colour=True)
        got = {int(t["label"]): t["probability"] for t in result["top_k"]}
        assert [got[i] for i in range(10)] == pytest.approx(p, abs=1e-5)


def test_help_names_every_argument(capsys):
    with pytest.raises(SystemExit, match="^0$"):
        predict.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    lines = ["[--top-k K] PATH [PATH ...]", "Classify your own images with the trained model.",
             "PATH image files, folders, or .npy/.npz arrays",
             "--model MODEL a .keras, .onnx or .tflite file or a SavedModel folder (default: models/model.onnx where "
             "it exists, else models/model.keras)",
             "--trust-model run a SavedModel or .tflite file that is not this project's own export: they are "
             "programs that can read and write files",
             "--json print one JSON array instead of lines", "--top-k K also list the K most likely classes"]
    assert [line for line in lines if line not in text] == []


def test_trust_model_is_a_flag_that_takes_no_value(tiny_model, tmp_path, capsys):
    model, names = tiny_model
    digit = digit_images(1, seed=8)[0][0]
    np.save(tmp_path / "d.npy", digit)
    predict.main(["--model", str(model), "--trust-model", str(tmp_path / "d.npy")])
    label = names[tiny_probabilities(digit).argmax()]
    assert capsys.readouterr().out.split("\t")[:2] == [f"{tmp_path}/d.npy[0]", label]
    (tmp_path / "model.tflite").write_bytes(b"not a flatbuffer")  # a LiteRT file from elsewhere: run only if trusted
    with pytest.raises(UserError, match="model.tflite: a LiteRT file is a program that can read and write files"):
        predict.main(["--model", str(tmp_path / "model.tflite"), str(tmp_path / "d.npy")])
    with pytest.raises(UserError, match="model.tflite is not a readable litert model"):
        predict.main(["--model", str(tmp_path / "model.tflite"), "--trust-model", str(tmp_path / "d.npy")])
