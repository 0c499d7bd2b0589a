"""Shards that lie: what preprocess wrote is what the readers read; a lie is one line, never a traceback or hang."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import CODE_ENV, run_stage, write_params
from mnist_cnn.errors import UserError
from mnist_cnn.files import write_npz
from mnist_cnn.shards import MANIFEST, open_split, read_all, read_labels, write_split

NAMES = np.array([str(d) for d in range(10)])


def flip_bytes(path, count=16):
    """Invert `count` bytes in the middle of a file (inside its images), its size unchanged."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + count] = bytes(b ^ 0xFF for b in data[middle:middle + count])
    path.write_bytes(bytes(data))


def copy_split(sharded_dir, name, tmp_path):
    shutil.copytree(sharded_dir / name, tmp_path / name)
    return tmp_path / name


def one_line(result):
    """The single stderr line of a failed stage (no traceback, no second line)."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_preprocess_lists_every_shard_in_a_manifest(sharded_dir):
    manifest = json.loads((sharded_dir / "train" / MANIFEST).read_text())
    assert manifest["class_names"] == NAMES.tolist() and manifest["image_shape"] == [28, 28, 1]
    shards = sorted(path for path in (sharded_dir / "train").iterdir() if path.suffix == ".npz")
    assert [entry["file"] for entry in manifest["shards"]] == [path.name for path in shards]
    for entry, path in zip(manifest["shards"], shards):  # checked against an independent digest and count
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["bytes"] == path.stat().st_size
        assert entry["images"] == len(np.load(path)["y"])
    assert sum(entry["images"] for entry in manifest["shards"]) == 240


def rewrite_shard(path, class_names):
    """The shard's own images and labels, written again under other class names (a shard of another dataset)."""
    with np.load(path) as data:
        write_npz(path, {"x": data["x"], "y": data["y"], "class_names": class_names})


@pytest.mark.parametrize("lie, message", [
    (lambda s: (s / "part-00001.npz").unlink(), "lacks part-00001.npz of the 4 shards its manifest.json lists"),
    (lambda s: shutil.copy(s / "part-00000.npz", s / "part-00004.npz"), "holds part-00004.npz, which its manifest"),
    (lambda s: rewrite_shard(s / "part-00002.npz", np.array(list("abcdefghij"))),
     "part-00002.npz names its classes (a, b, c, d, e, ...) but manifest.json (0, 1, 2, 3, 4, ...)"),
    (lambda s: (s / MANIFEST).unlink(), "has no manifest.json"),
    (lambda s: (s / MANIFEST).write_text("{"), "manifest.json is not a manifest preprocess wrote"),
    (lambda s: (s / "part-00003.npz").write_bytes((s / "part-00003.npz").read_bytes() + b"\0"),
     "part-00003.npz is 34,049 bytes but preprocess wrote 34,048"),
])
def test_a_split_that_is_not_what_preprocess_wrote_is_refused_at_open(sharded_dir, tmp_path, lie, message):
    split = copy_split(sharded_dir, "train", tmp_path)
    open_split(split)  # as written: opens
    lie(split)
    with pytest.raises(UserError, match="run `dvc repro preprocess`") as error:
        open_split(split)
    assert message in str(error.value)


def test_changed_bytes_are_refused_as_the_shard_is_read(sharded_dir, tmp_path):
    split = copy_split(sharded_dir, "val", tmp_path)
    flip_bytes(split / "part-00000.npz")
    opened = open_split(split)  # cheap: headers and sizes still agree
    with pytest.raises(UserError, match=r"part-00000.npz has changed since preprocess wrote it \(its SHA-256"):
        read_all(opened)


def labels_out_of_range(folder, shard_mb):
    """A split whose manifest is consistent but whose labels run to 10 with 10 class names (0..9)."""
    x = np.random.default_rng(0).integers(0, 256, (240, 28, 28, 1), dtype=np.uint8)
    y = np.arange(240) % 10
    y[200] = 10
    write_split(folder, x, y, NAMES, shard_mb)
    return folder


def test_labels_out_of_range_in_a_one_shard_split_are_one_line(tmp_path):
    split = open_split(labels_out_of_range(tmp_path / "train", 64))
    for read in (read_all, read_labels):  # was an IndexError in one_hot
        with pytest.raises(UserError, match=r"holds labels 0..10 but its split has 10 classes \(0..9\)"):
            read(split)


@pytest.mark.slow
def test_labels_out_of_range_in_a_streamed_split_stop_training_in_one_line(sharded_dir, workdir):
    """Streamed, tf.one_hot made a row of zeros of label 10 and training went on."""
    write_params(workdir, train__epochs=1, train__batch_size=16)
    labels_out_of_range(workdir / "train", 0.05)
    result = run_stage("stages.train", "train", sharded_dir / "val", "model.keras", "log", cwd=workdir)
    assert "holds labels 0..10 but its split has 10 classes (0..9)" in one_line(result)
    assert not (workdir / "model.keras").exists() and not (workdir / "log").exists()


@pytest.mark.slow
def test_a_deleted_middle_shard_stops_training_in_one_line(sharded_dir, workdir):
    write_params(workdir, train__epochs=1, train__batch_size=16)
    split = copy_split(sharded_dir, "train", workdir)
    (split / "part-00002.npz").unlink()
    result = run_stage("stages.train", "train", sharded_dir / "val", "model.keras", "log", cwd=workdir)
    assert "train lacks part-00002.npz of the 4 shards" in one_line(result)
    assert not (workdir / "model.keras").exists()


@pytest.mark.slow
def test_flipped_bytes_in_a_streamed_training_shard_are_one_line(sharded_dir, workdir):
    """Was a 97-line TensorFlow traceback around `Bad CRC-32`."""
    write_params(workdir, train__epochs=1, train__batch_size=16, train__shuffle_buffer=100)
    split = copy_split(sharded_dir, "train", workdir)
    flip_bytes(split / "part-00002.npz")
    result = run_stage("stages.train", "train", sharded_dir / "val", "model.keras", "log", cwd=workdir)
    assert one_line(result) == ("error: train/part-00002.npz has changed since preprocess wrote it (its SHA-256 is "
                                "not the one in manifest.json): delete train and run `dvc repro preprocess`")
    assert not (workdir / "model.keras").exists() and not (workdir / "log").exists()


@pytest.mark.slow
def test_flipped_bytes_in_a_test_shard_are_one_line_and_never_a_hang(trained_run, workdir):
    """A shard fails while the others are still being read: the pipeline's threads were left inside Python as the
    interpreter exited, and TensorFlow's iterator waited for them for ever (7 runs in 8 hung before the fix)."""
    x = np.random.default_rng(0).integers(0, 256, (16000, 28, 28, 1), dtype=np.uint8)
    write_split(workdir / "test", x, np.arange(16000) % 10, NAMES, 2)  # 6 shards of 2 MiB: reads take a while
    flip_bytes(workdir / "test" / "part-00000.npz")
    for _ in range(3):
        result = subprocess.run([sys.executable, "-m", "stages.evaluate", str(trained_run["model"]), "test", "m.json",
                                 "p.csv"], cwd=workdir, env={**os.environ, **CODE_ENV}, capture_output=True, text=True,
                                timeout=120)  # a hang fails the test
        assert one_line(result) == ("error: test/part-00000.npz has changed since preprocess wrote it (its SHA-256 "
                                    "is not the one in manifest.json): delete test and run `dvc repro preprocess`")
        assert not (workdir / "m.json").exists() and not (workdir / "p.csv").exists()
