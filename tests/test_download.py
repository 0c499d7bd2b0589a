"""The download stage and its sources (mnist_cnn/sources.py, image_folders.py): order, verification, HTTP faults."""
import dataclasses
import gzip
import hashlib
import io
import os
import shutil
import socket
import struct
import time
import zipfile

import numpy as np
import pytest
from crafted_images import dds_of_unknown_pixel_format, jpeg_claiming, tiff_with_a_tag_past_its_end
from PIL import Image

from conftest import REAL_MNIST, image_folder, needs_real_mnist, run_stage, tiny_arrays, write_params
from mnist_cnn import sources
from mnist_cnn.datasets import DATASETS, IDX_FILES, array_digest
from mnist_cnn.errors import UserError
from mnist_cnn.files import load_npz, write_npz

FAST = {"timeout": 1, "retries": 2, "backoff": 0.01}


@pytest.fixture(scope="module")
def arrays():
    return tiny_arrays(n_train=60, n_test=20)


@pytest.fixture(scope="module")
def spec(arrays):
    """The MNIST registry entry with the tiny arrays' digests and no official URLs (tests stay offline)."""
    return dataclasses.replace(DATASETS["mnist"], urls=(),
                               digests={name: array_digest(a) for name, a in arrays.items()})


def write_idx_files(directory, arrays):
    os.makedirs(directory, exist_ok=True)
    for name, file in IDX_FILES.items():
        array = arrays[name]
        header = struct.pack(f">BBBB{array.ndim}I", 0, 0, 8, array.ndim, *array.shape)
        with gzip.open(os.path.join(directory, file), "wb", compresslevel=1) as f:
            f.write(header + array.tobytes())


def write_keras_npz(path, arrays):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez_compressed(path, **arrays)


def md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def test_parse_mirrors_keeps_urls_with_ports_whole():
    assert sources.parse_mirrors("/data/a:http://127.0.0.1:8000/m:https://x.org/p/:rel") == [
        "/data/a", "http://127.0.0.1:8000/m", "https://x.org/p/", "rel"]
    assert sources.parse_mirrors(None) == []


def test_npz_and_idx_sources_give_byte_identical_output(tmp_path, arrays, spec):
    write_keras_npz(str(tmp_path / "a" / "mnist.npz"), arrays)
    write_idx_files(tmp_path / "b" / "mnist", arrays)  # IDX files in a <dataset>/ subfolder
    outputs = []
    for root in ("a", "b"):
        got = sources.download(spec, [str(tmp_path / root)])
        out = tmp_path / f"{root}.npz"
        write_npz(out, got)
        outputs.append(md5(out))
    assert outputs[0] == outputs[1]
    for name, array in arrays.items():
        np.testing.assert_array_equal(got[name], array)


def test_wrong_content_is_skipped_with_one_line_and_next_source_used(tmp_path, arrays, spec, capsys):
    wrong = dict(arrays, y_test=(arrays["y_test"] + 1) % 10)
    write_keras_npz(str(tmp_path / "wrong" / "mnist.npz"), wrong)
    write_keras_npz(str(tmp_path / "right" / "mnist.npz"), arrays)
    sources.download(spec, [str(tmp_path / "empty"), str(tmp_path / "wrong"), str(tmp_path / "right")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wrong/mnist.npz" in err[0] and "y_test" in err[0] and "pinned" in err[0]


def test_corrupt_and_truncated_local_files_are_skipped(tmp_path, arrays, spec, capsys):
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "mnist.npz").write_bytes(b"PK\x03\x04 garbage")
    write_idx_files(tmp_path / "truncated", arrays)
    path = tmp_path / "truncated" / IDX_FILES["x_train"]
    path.write_bytes(path.read_bytes()[:-20])
    write_idx_files(tmp_path / "good", arrays)
    sources.download(spec, [str(tmp_path / "corrupt"), str(tmp_path / "truncated"), str(tmp_path / "good")])
    err = capsys.readouterr().err
    assert "not a valid .npz" in err and "train-images-idx3-ubyte.gz is not a valid .gz" in err


def test_keras_cache_is_a_source(tmp_path, arrays, spec, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    write_keras_npz(os.path.join(sources.keras_cache_dir(), "mnist.npz"), arrays)
    assert sources.keras_cache_dir() == str(tmp_path / "keras" / "datasets")
    got = sources.download(spec, [sources.keras_cache_dir()])
    np.testing.assert_array_equal(got["x_train"], arrays["x_train"])


def test_http_mirror_right_wrong_and_missing_files(http_server, arrays, spec, capsys):
    write_keras_npz(str(http_server.root / "wrong" / "mnist.npz"), dict(arrays, x_test=arrays["x_test"] // 2))
    write_idx_files(http_server.root / "right" / "mnist", arrays)
    roots = [f"{http_server.url}/missing", f"{http_server.url}/wrong", f"{http_server.url}/right"]
    got = sources.download(spec, roots, **FAST)
    np.testing.assert_array_equal(got["x_test"], arrays["x_test"])
    err = capsys.readouterr().err
    assert "missing/mnist.npz: HTTP 404" in err
    assert "x_test uint8(20, 28, 28) does not match the pinned mnist digest" in err


def test_http_half_sent_file_is_retried_then_skipped(http_server, arrays, spec, capsys):
    write_keras_npz(str(http_server.root / "m" / "mnist.npz"), arrays)
    shutil.copytree(http_server.root / "m", http_server.root / "good")
    got = sources.download(spec, [f"{http_server.url}/half/m", f"{http_server.url}/good"], **FAST)
    assert got["x_train"].shape == (60, 28, 28)
    assert "connection broke off (IncompleteRead), after 2 tries" in capsys.readouterr().err


def test_stalled_server_times_out(http_server, arrays, spec, capsys):
    write_idx_files(http_server.root / "good", arrays)
    got = sources.download(spec, [f"{http_server.url}/stall", f"{http_server.url}/good"],
                            timeout=0.5, retries=1, backoff=0)
    assert got["y_train"].shape == (60,)
    assert "stall/mnist.npz: no data for 0.5 s (timed out)" in capsys.readouterr().err


def test_refused_connection_then_all_sources_fail(tmp_path, spec):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError) as error:
        sources.download(spec, [f"http://127.0.0.1:{port}", str(tmp_path)], **FAST)
    message = str(error.value)
    assert "cannot connect" in message and "Connection refused" in message
    assert "set DATASET_MIRRORS" in message and "\n" not in message


def test_stage_failure_is_one_line_and_keeps_previous_output(tmp_path, arrays):
    write_params(tmp_path, data__dataset="npz", data__path="missing.npz")
    out = tmp_path / "raw.npz"
    out.write_bytes(b"previous good output")
    result = run_stage("stages.download", out, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: data.path = 'missing.npz' is not a file: point it at your .npz with x_train, y_train, x_test, y_test"]
    assert out.read_bytes() == b"previous good output"


def test_stage_with_custom_npz_adds_class_names(tmp_path, arrays):
    np.savez(tmp_path / "mine.npz", **arrays)
    write_params(tmp_path, data__dataset="npz", data__path="mine.npz")
    result = run_stage("stages.download", "data/raw/npz.npz", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    raw = load_npz(tmp_path / "data" / "raw" / "npz.npz")
    assert raw["class_names"].tolist() == [str(d) for d in range(10)]
    np.testing.assert_array_equal(raw["x_train"], arrays["x_train"])


@pytest.mark.stage
@needs_real_mnist
def test_real_mnist_from_local_mirror(tmp_path):
    write_params(tmp_path)
    mirror = os.path.dirname(os.path.abspath(REAL_MNIST))
    result = run_stage("stages.download", "mnist.npz", cwd=tmp_path,
                       env={"DATASET_MIRRORS": mirror, "KERAS_HOME": str(tmp_path / "nokeras")})
    assert result.returncode == 0, result.stderr
    assert "mnist verified from" in result.stdout
    raw = load_npz(tmp_path / "mnist.npz")
    assert np.bincount(raw["y_train"]).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(raw["y_test"]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # The same arrays as IDX files give the very same bytes, so dvc.lock matches on every machine.
    write_idx_files(tmp_path / "idx", raw)
    result = run_stage("stages.download", "from_idx.npz", cwd=tmp_path,
                       env={"DATASET_MIRRORS": str(tmp_path / "idx"), "KERAS_HOME": str(tmp_path / "nokeras")})
    assert result.returncode == 0, result.stderr
    assert md5(tmp_path / "mnist.npz") == md5(tmp_path / "from_idx.npz")


@pytest.mark.ci_prerequisite
@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="Debian's dataset-fashion-mnist package is not installed")
def test_fashion_mnist_found_in_debians_copy(tmp_path):
    write_params(tmp_path, data__dataset="fashion_mnist")
    env = {"KERAS_HOME": str(tmp_path / "nokeras"), "DATASET_MIRRORS": ""}
    result = run_stage("stages.download", "fashion_mnist.npz", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "fashion_mnist verified from /usr/share/datasets/fashion-mnist" in result.stdout
    raw = load_npz(tmp_path / "fashion_mnist.npz")
    assert np.bincount(raw["y_train"]).tolist() == [6000] * 10
    assert np.bincount(raw["y_test"]).tolist() == [1000] * 10
    assert raw["class_names"].tolist()[:2] == ["T-shirt/top", "Trouser"]


def run_folder(tmp_path, folder, **params):
    write_params(tmp_path, data__dataset="folder", data__path=str(folder), **params)
    return run_stage("stages.download", "raw.npz", cwd=tmp_path)


@pytest.mark.stage
def test_image_folder_becomes_a_dataset_with_class_names(tmp_path):
    folder = image_folder(tmp_path / "mine")
    result = run_folder(tmp_path, folder)
    assert result.returncode == 0, result.stderr
    raw = load_npz(tmp_path / "raw.npz")
    assert raw["class_names"].tolist() == ["one", "two", "zero"]  # sorted folder names
    assert raw["x_train"].shape == (72, 28, 28) and raw["x_test"].shape == (18, 28, 28)
    assert raw["x_train"].dtype == np.uint8
    assert np.bincount(raw["y_test"]).tolist() == [6, 6, 6]  # seeded, stratified data.folder.test_split
    first = md5(tmp_path / "raw.npz")
    assert run_folder(tmp_path, folder).returncode == 0 and md5(tmp_path / "raw.npz") == first


def test_image_folder_with_test_subfolder_rgb_and_another_size(tmp_path):
    folder = image_folder(tmp_path / "mine", classes=("a", "b"), per_class=10)
    image_folder(folder / "test", classes=("a", "b"), per_class=4, seed=9)
    bar = np.zeros((10, 40, 3), np.uint8)
    bar[..., 0], bar[..., 2] = 255, 90  # red, a little blue, no green: a swapped or dropped channel shows
    Image.fromarray(bar).save(folder / "a" / "red.png")  # after a's ten generated images
    result = run_folder(tmp_path, folder, data__folder__image_size=32, data__folder__color_mode="rgb")
    assert result.returncode == 0, result.stderr
    raw = load_npz(tmp_path / "raw.npz")
    assert raw["x_train"].shape == (21, 32, 32, 3) and raw["x_test"].shape == (8, 32, 32, 3)
    assert raw["class_names"].tolist() == ["a", "b"]
    red = raw["x_train"][10]  # fitted to the width, centred in height, its colours kept
    assert red[16].tolist() == [[255, 0, 90]] * 32 and red[0].max() == 0


@pytest.mark.parametrize("make, message", [
    (lambda f: (f / "zero").mkdir(), "class folder"),
    (lambda f: [p.unlink() for p in (f / "one").iterdir()], "has no usable images"),
])
def test_empty_class_is_one_line(tmp_path, make, message):
    folder = image_folder(tmp_path / "mine", classes=("one", "two"), per_class=5)
    make(folder)
    result = run_folder(tmp_path, folder)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_one_class_only_is_one_line(tmp_path):
    folder = image_folder(tmp_path / "mine", classes=("only",), per_class=5)
    result = run_folder(tmp_path, folder)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "has 1 class folder(s) ['only']; a classifier needs two or more" in lines[0], lines


@pytest.mark.stage
def test_unreadable_file_stops_or_is_skipped_as_the_param_says(tmp_path):
    folder = image_folder(tmp_path / "mine", classes=("one", "two"), per_class=10)
    (folder / "two" / "broken.png").write_bytes(b"\x89PNG not really")
    stopped = run_folder(tmp_path, folder)
    assert stopped.returncode == 1 and not (tmp_path / "raw.npz").exists()
    assert stopped.stderr.strip().splitlines() == [
        f"error: {folder}/two/broken.png: not an image file in a format this project reads (PNG, JPEG, BMP, GIF, "
        f"TIFF, WebP, PGM/PPM); fix or remove it, or set data.folder.bad_images: skip"]
    skipped = run_folder(tmp_path, folder, data__folder__bad_images="skip")
    assert skipped.returncode == 0, skipped.stderr
    assert f"download: skipped {folder}/two/broken.png: not an image file" in skipped.stderr
    raw = load_npz(tmp_path / "raw.npz")
    assert len(raw["y_train"]) + len(raw["y_test"]) == 20


# ---------------------------------------------------------------- hostile input, round two

def damage(path, offset, length=8):
    """Flip bytes at offset: inside the first compressed stream, zlib finds the deflate data invalid."""
    data = bytearray(path.read_bytes())
    data[offset:offset + length] = bytes(b ^ 0xFF for b in data[offset:offset + length])
    path.write_bytes(bytes(data))


def forged_npy_header(shape=(10**12,), dtype="<f8", payload=b"x" * 64):
    """The bytes of an .npy file whose header claims a huge shape over a few bytes of data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + payload


def test_damaged_compressed_sources_are_each_that_sources_failure(tmp_path, arrays, spec, capsys):
    (tmp_path / "deflate").mkdir()
    np.savez_compressed(tmp_path / "deflate" / "mnist.npz", **arrays)
    damage(tmp_path / "deflate" / "mnist.npz", 60)  # x_train's deflate stream, inside the zip
    (tmp_path / "crc").mkdir()
    np.savez(tmp_path / "crc" / "mnist.npz", **arrays)
    central = (tmp_path / "crc" / "mnist.npz").read_bytes().index(b"PK\x01\x02")  # the first member's entry
    damage(tmp_path / "crc" / "mnist.npz", central + 16, 4)  # its CRC-32: the data no longer matches it
    write_idx_files(tmp_path / "gz", arrays)
    damage(tmp_path / "gz" / IDX_FILES["x_train"], 40)  # the deflate stream inside the gzip
    write_idx_files(tmp_path / "good", arrays)
    roots = [str(tmp_path / name) for name in ("deflate", "crc", "gz", "good")]
    got = sources.download(spec, roots)
    np.testing.assert_array_equal(got["x_train"], arrays["x_train"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "Traceback" not in "".join(err), err
    assert "deflate/mnist.npz: mnist.npz is not a valid .npz file (Error -3 while decompressing data" in err[0]
    assert "crc/mnist.npz: mnist.npz is not a valid .npz file (Bad CRC-32 for file" in err[1]
    assert "train-images-idx3-ubyte.gz is not a valid .gz file (Error -3 while decompressing data" in err[2]


def test_an_array_header_claiming_a_huge_shape_is_refused_before_allocation(tmp_path, arrays, spec, capsys):
    (tmp_path / "forged").mkdir()
    with zipfile.ZipFile(tmp_path / "forged" / "mnist.npz", "w") as archive:
        for name in ("x_train", "y_train", "x_test", "y_test"):
            archive.writestr(f"{name}.npy", forged_npy_header())
    write_idx_files(tmp_path / "good", arrays)
    got = sources.download(spec, [str(tmp_path / "forged"), str(tmp_path / "good")])
    assert got["y_test"].shape == (20,)
    err = capsys.readouterr().err
    assert "claims shape (1000000000000,) of float64 (8,000,000,000,000 bytes) but holds 64 bytes" in err


def test_a_server_that_drips_a_byte_at_a_time_hits_the_deadline(http_server, arrays, spec, capsys, monkeypatch):
    write_keras_npz(str(http_server.root / "m" / "mnist.npz"), arrays)
    write_idx_files(http_server.root / "good", arrays)
    monkeypatch.setenv("DATASET_SOURCE_DEADLINE", "1.5")
    start = time.monotonic()
    got = sources.download(spec, [f"{http_server.url}/drip/m", f"{http_server.url}/good"], **FAST)
    assert got["x_train"].shape == (60, 28, 28)
    assert time.monotonic() - start < 10  # every read came within the 1 s timeout; the deadline ended it
    assert "drip/m/mnist.npz: not done after 1.5 s in all (set DATASET_SOURCE_DEADLINE to allow more)" in \
        capsys.readouterr().err


def test_a_bad_deadline_setting_is_one_line(tmp_path, monkeypatch, spec):
    monkeypatch.setenv("DATASET_SOURCE_DEADLINE", "soon")
    with pytest.raises(UserError, match="^DATASET_SOURCE_DEADLINE = 'soon' is not allowed; it must be a number"):
        sources.download(spec, [str(tmp_path)])


def run_custom(tmp_path, arrays):
    np.savez(tmp_path / "mine.npz", **arrays)
    write_params(tmp_path, data__dataset="npz", data__path="mine.npz")
    return run_stage("stages.download", "raw.npz", cwd=tmp_path)


@pytest.mark.parametrize("change, message", [
    (lambda a: {**a, "y_train": a["y_train"].astype(np.float32) + 0.5},
     "y_train has dtype float32 and shape (60,); expected a 1-D array of integer class labels"),
    (lambda a: {**a, "y_train": np.where(np.arange(60) == 7, 10_000_000, a["y_train"].astype(np.int64))},
     "y_train holds labels 0..10000000; expected 0..K-1 with K at most 1000"),
    (lambda a: {**a, "y_train": np.zeros(60, np.uint8), "y_test": np.zeros(20, np.uint8)},
     "every label is [0]; a classifier needs two classes or more"),
    (lambda a: {**a, "class_names": np.array(["zero", "one"])},
     "class_names has 2 names but the labels go up to 9; give one name per class 0..9"),
    (lambda a: {**a, "class_names": np.array(["a", "b", "a", "c", "d", "e", "f", "g", "h", "b"])},
     "class_names repeats 'a', 'b'; give each class its own name"),
    (lambda a: {**a, "x_train": None},
     "x_train.npy claims shape (1000000000000,) of float64 (8,000,000,000,000 bytes) but holds 64 bytes"),
])
def test_a_users_bad_labels_or_arrays_are_one_line_before_any_large_allocation(tmp_path, arrays, change, message):
    changed = change(dict(arrays))
    if changed["x_train"] is None:  # a forged header over a few bytes
        with zipfile.ZipFile(tmp_path / "mine.npz", "w") as archive:
            archive.writestr("x_train.npy", forged_npy_header())
            for name in ("y_train", "x_test", "y_test"):
                buffer = io.BytesIO()
                np.save(buffer, arrays[name])
                archive.writestr(f"{name}.npy", buffer.getvalue())
        write_params(tmp_path, data__dataset="npz", data__path="mine.npz")
        result = run_stage("stages.download", "raw.npz", cwd=tmp_path)
    else:
        result = run_custom(tmp_path, changed)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "raw.npz").exists()


def special_files(folder):
    """A FIFO, a symbolic-link loop, a dangling link and a file whose name is not UTF-8, in folder."""
    os.mkfifo(folder / "pipe.png")
    os.symlink("loop.png", folder / "loop.png")
    os.symlink("nowhere.png", folder / "dangling.png")
    shutil.copy(next(folder.glob("*.png")), os.path.join(os.fsencode(folder), b"caf\xe9.png"))


@pytest.mark.stage
def test_special_files_in_an_image_folder_are_skipped_or_stop_with_one_line(tmp_path):
    folder = image_folder(tmp_path / "mine", classes=("one", "two"), per_class=10)
    special_files(folder / "two")
    skipped = run_folder(tmp_path, folder, data__folder__bad_images="skip")
    assert skipped.returncode == 0, skipped.stderr
    lines = skipped.stderr.strip().splitlines()
    assert len(lines) == 3 and "Traceback" not in skipped.stderr, lines
    assert "two/dangling.png: a dangling symbolic link" in lines[0]
    assert "two/loop.png: a symbolic link loop" in lines[1]
    assert "two/pipe.png: not a regular file but a FIFO (named pipe)" in lines[2]
    raw = load_npz(tmp_path / "raw.npz")
    assert raw["y_train"].size + raw["y_test"].size == 21  # 20 images, and the one with a non-UTF-8 name
    stopped = run_folder(tmp_path, folder)
    lines = stopped.stderr.strip().splitlines()
    assert stopped.returncode == 1 and len(lines) == 1 and "dangling symbolic link" in lines[0], lines


@pytest.mark.stage
@pytest.mark.parametrize("workers", [1, 2])
def test_files_that_are_not_what_they_claim_are_skipped_with_one_line_each(tmp_path, workers):
    """A DDS file named .png (Pillow's DDS plugin raised NotImplementedError, a traceback even with skip), a
    TIFF Pillow warns about, a JPEG claiming 7000x7000 pixels: one line for the DDS, the others read, no warning."""
    folder = image_folder(tmp_path / "mine", classes=("one", "two"), per_class=10)
    (folder / "two" / "crafted.png").write_bytes(dds_of_unknown_pixel_format())
    (folder / "two" / "warns.tif").write_bytes(tiff_with_a_tag_past_its_end())
    (folder / "one" / "claims.jpg").write_bytes(jpeg_claiming(7000, 7000))
    skipped = run_folder(tmp_path, folder, data__folder__bad_images="skip", data__folder__workers=workers)
    assert skipped.returncode == 0, skipped.stderr
    assert skipped.stderr.splitlines() == [
        f"download: skipped {folder}/two/crafted.png: not an image file in a format this project reads (PNG, JPEG, "
        f"BMP, GIF, TIFF, WebP, PGM/PPM)"]
    raw = load_npz(tmp_path / "raw.npz")
    assert raw["y_train"].size + raw["y_test"].size == 22


@pytest.mark.stage
def test_an_image_folder_read_by_one_or_two_processes_gives_the_same_bytes(tmp_path):
    folder = image_folder(tmp_path / "mine", classes=("one", "two", "three"), per_class=40)
    special_files(folder / "two")  # skipped in the same places by either
    outputs, messages = [], []
    for workers in (1, 2):
        result = run_folder(tmp_path, folder, data__folder__workers=workers, data__folder__bad_images="skip")
        assert result.returncode == 0, result.stderr
        outputs.append(md5(tmp_path / "raw.npz"))
        messages.append(result.stderr)
    assert outputs[0] == outputs[1] and messages[0] == messages[1]
    assert load_npz(tmp_path / "raw.npz")["y_train"].size == 96  # 121 images, 25 held out for test
    stopped = run_folder(tmp_path, folder, data__folder__workers=2)  # the first bad file in order stops it
    lines = stopped.stderr.strip().splitlines()
    assert stopped.returncode == 1 and len(lines) == 1 and "two/dangling.png: a dangling symbolic link" in lines[0]
