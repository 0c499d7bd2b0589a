"""Shards that lie: what preprocess wrote is what the readers read; a lie is one line, never a traceback or hang."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import CODE_ENV, write_params
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
def test_labels_out_of_range_in_a_streamed_split_stop_training_in_one_line(sharded_dir, workdir, run_here):
    """Streamed, tf.one_hot made a row of zeros of label 10 and training went on."""
    write_params(workdir, train__epochs=1, train__batch_size=16)
    labels_out_of_range(workdir / "train", 0.05)
    result = run_here("stages.train", "train", sharded_dir / "val", "model.keras", "log", cwd=workdir)
    assert "holds labels 0..10 but its split has 10 classes (0..9)" in one_line(result)
    assert not (workdir / "model.keras").exists() and not (workdir / "log").exists()


def test_a_deleted_middle_shard_stops_training_in_one_line(sharded_dir, workdir, run_here):
    write_params(workdir, train__epochs=1, train__batch_size=16)
    split = copy_split(sharded_dir, "train", workdir)
    (split / "part-00002.npz").unlink()
    result = run_here("stages.train", "train", sharded_dir / "val", "model.keras", "log", cwd=workdir)
    assert "train lacks part-00002.npz of the 4 shards" in one_line(result)
    assert not (workdir / "model.keras").exists()


@pytest.mark.slow
def test_flipped_bytes_in_a_streamed_training_shard_are_one_line(sharded_dir, workdir, run_here):
    """Was a 97-line TensorFlow traceback around `Bad CRC-32`."""
    write_params(workdir, train__epochs=1, train__batch_size=16, train__shuffle_buffer=100)
    split = copy_split(sharded_dir, "train", workdir)
    flip_bytes(split / "part-00002.npz")
    result = run_here("stages.train", "train", sharded_dir / "val", "model.keras", "log", cwd=workdir)
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


def tiny_split(folder, images=13):
    """images 4x5 pixels, 3 to a shard (the last shorter), labels 0..2 named a, b, c; returns the folder."""
    x = np.arange(images * 20, dtype=np.uint8).reshape(images, 4, 5, 1)
    write_split(folder, x, np.arange(images) % 3, np.array(["a", "b", "c"]), shard_mb=60 / 2**20)
    return folder


def manifest_with(folder, change):
    """Rewrite the split's manifest.json after change(manifest)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    change(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def entry(key, value):
    return lambda manifest: manifest["shards"][1].__setitem__(key, value)


REWRITE = "run `dvc repro preprocess`"


@pytest.mark.parametrize("change", [
    lambda m: m.__setitem__("class_names", "abc"), lambda m: m.__setitem__("image_shape", [4, 5]),
    lambda m: m.__setitem__("shards", []), entry("file", "part-1.npz"), entry("file", 3), entry("images", "3"),
    entry("bytes", 3.0), entry("sha256", None)])
def test_a_manifest_of_another_shape_is_one_line_naming_it(tmp_path, change):
    folder = tiny_split(tmp_path / "split")
    manifest_with(folder, change)
    with pytest.raises(UserError) as error:
        open_split(folder)
    assert str(error.value) == (f"{folder / MANIFEST} is not a manifest preprocess wrote: delete {folder} and "
                                f"{REWRITE}")


def test_each_way_a_split_can_differ_from_its_manifest_is_its_own_exact_line(tmp_path):
    folder = tiny_split(tmp_path / "split")
    split = open_split(folder)
    assert (split.sizes, split.image_shape, split.class_names, split.images) == ((3, 3, 3, 3, 1), (4, 5, 1),
                                                                                   ("a", "b", "c"), 13)
    assert split.part(1, 2) == (split.files[1::2], 6) and split.part(0, 2) == (split.files[0::2], 7)
    assert split.digests == tuple(hashlib.sha256((folder / f"part-0000{i}.npz").read_bytes()).hexdigest()
                                  for i in range(5))
    shard = folder / "part-00001.npz"

    def refused(expected):
        with pytest.raises(UserError) as error:
            open_split(folder)
        assert str(error.value) == expected

    refused_missing = tmp_path / "none"
    with pytest.raises(UserError) as error:
        open_split(refused_missing)
    assert str(error.value) == f"{refused_missing} is not a folder of shards: {REWRITE} to create it"
    original = shard.read_bytes()
    shard.write_bytes(original + b"\0")
    refused(f"{shard} is {len(original) + 1:,} bytes but preprocess wrote {len(original):,}: delete {folder} and "
            f"{REWRITE}")
    write_npz(shard, {"x": np.zeros((2, 4, 5, 1), np.uint8), "y": np.zeros(2, np.int64), "class_names": NAMES[:3]})
    refused(f"{shard} holds 2 images of (4, 5, 1) but {MANIFEST} says 3 of (4, 5, 1): delete {folder} and {REWRITE}")
    write_npz(shard, {"x": np.zeros((3, 4, 5, 1), np.uint8), "y": np.zeros(3, np.int64),
                      "class_names": np.array(list("uvwxyz"))})
    refused(f"{shard} names its classes (u, v, w, x, y, ...) but {MANIFEST} (a, b, c) (a shard of another dataset): "
            f"delete {folder} and {REWRITE}")
    for arrays in ({"x": np.zeros((3, 4, 5, 1), np.float32), "y": np.zeros(3), "class_names": NAMES[:3]},
                   {"x": np.zeros((3, 4, 5), np.uint8), "y": np.zeros(3), "class_names": NAMES[:3]},
                   {"x": np.zeros((3, 4, 5, 1), np.uint8), "y": np.zeros(2), "class_names": NAMES[:3]},
                   {"x": np.zeros((3, 4, 5, 1), np.uint8), "class_names": NAMES[:3]},
                   {"x": np.zeros((3, 4, 5, 1), np.uint8), "y": np.zeros(3)}):
        write_npz(shard, arrays)
        refused(f"{shard} is not a shard of uint8 images with their labels: delete {folder} and {REWRITE}")
    shard.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(UserError, match=rf"^{shard} is not a readable .npz file \(.+\): delete {folder} and run"):
        open_split(folder)
    for name in ("part-00001.npz", "part-00002.npz", "part-00003.npz", "part-00004.npz"):
        (folder / name).unlink()
    refused(f"{folder} lacks part-00001.npz, part-00002.npz, part-00003.npz ... of the 5 shards its {MANIFEST} lists "
            f"(deleted?): {REWRITE} to write the split again")
    folder = tiny_split(tmp_path / "extra")
    for name in ("part-00005.npz", "part-00006.npz", "part-00007.npz", "part-00008.npz"):
        shutil.copy(folder / "part-00000.npz", folder / name)
    refused(f"{folder} holds part-00005.npz, part-00006.npz, part-00007.npz ..., which its {MANIFEST} does not list: "
            f"delete {folder} and {REWRITE}")
    (folder / MANIFEST).write_text("{")
    with pytest.raises(UserError) as error:
        open_split(folder)
    assert str(error.value) == (f"{folder / MANIFEST} is not a manifest preprocess wrote (Expecting property name "
                                f"enclosed in double quotes: line 1 column 2 (char 1)): delete {folder} and {REWRITE}")
    (folder / MANIFEST).unlink()
    refused(f"{folder} has no {MANIFEST} (the list of its shards that preprocess writes): {REWRITE} to write the "
            f"split again")


def test_reading_a_split_checks_digests_and_labels_in_exact_lines(tmp_path):
    folder = tiny_split(tmp_path / "split")
    split = open_split(folder)
    x, y = read_all(split)
    assert x.dtype == np.uint8 and y.dtype == np.int64 and len(x) == 13
    np.testing.assert_array_equal(x[:, 0, 0, 0], np.arange(13) * 20 % 256)
    assert y.tolist() == read_labels(split).tolist() == [i % 3 for i in range(13)]
    one = open_split(tiny_split(tmp_path / "one", images=2))
    assert read_all(one)[1].tolist() == [0, 1]  # one shard: returned as read
    write_split(tmp_path / "bad", np.zeros((4, 4, 5, 1), np.uint8), np.array([0, 1, 3, 2]), np.array(["a", "b", "c"]),
                shard_mb=60 / 2**20)
    bad = open_split(tmp_path / "bad")
    shard = tmp_path / "bad" / "part-00000.npz"  # labels 0, 1, 3: the shard's lowest and highest named
    for read in (read_all, read_labels):
        with pytest.raises(UserError) as error:
            read(bad)
        assert str(error.value) == (f"{shard} holds labels 0..3 but its split has 3 classes (0..2): delete "
                                    f"{tmp_path / 'bad'} and {REWRITE}")
    data = bytearray((folder / "part-00004.npz").read_bytes())
    data[-30] ^= 0xFF
    (folder / "part-00004.npz").write_bytes(bytes(data))
    with pytest.raises(UserError) as error:
        read_all(split)
    assert str(error.value) == (f"{folder / 'part-00004.npz'} has changed since preprocess wrote it (its SHA-256 is "
                                f"not the one in {MANIFEST}): delete {folder} and {REWRITE}")


def test_rows_per_shard_and_file_digest_against_hand_computed_values(tmp_path):
    from mnist_cnn.shards import file_digest, rows_per_shard
    assert rows_per_shard((28, 28, 1), 1) == 1337  # 1,048,576 bytes // 784
    assert rows_per_shard((28, 28, 1), 0.05) == 66  # 52,428 bytes (a fraction of a MiB, rounded down) // 784
    assert rows_per_shard((64, 64, 3), 0.001) == 1  # smaller than one image: one a shard
    (tmp_path / "f").write_bytes(b"shard bytes" * 1000)
    assert file_digest(tmp_path / "f") == hashlib.sha256(b"shard bytes" * 1000).hexdigest()


def test_labels_are_read_without_the_images_and_an_unreadable_shard_is_one_line(tmp_path, monkeypatch):
    from mnist_cnn.shards import short
    folder = tiny_split(tmp_path / "split")
    split = open_split(folder)
    read = []
    original = np.lib.npyio.NpzFile.__getitem__
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", lambda self, key: read.append(key) or original(self, key))
    assert read_labels(split).tolist() == [i % 3 for i in range(13)]
    assert set(read) == {"y"}  # the images stay on disk
    (folder / "part-00002.npz").write_bytes(b"PK\x03\x04 and no more")
    with pytest.raises(UserError) as error:
        read_labels(split)
    assert str(error.value) == (f"{folder / 'part-00002.npz'} is not a readable .npz file (File is not a zip file): "
                                f"delete {folder} and {REWRITE}")
    assert (short(list("abcde")), short(list("abcdef")), short([])) == ("(a, b, c, d, e)", "(a, b, c, d, e, ...)", "()")


@pytest.mark.parametrize("names", [["a", "b", "c"], [f"class {i:04d} " * 40 for i in range(3)]])
def test_class_names_whose_bytes_were_changed_are_one_line_at_open(tmp_path, names):
    """The headers read fine, but the class names' bytes fail the zip's CRC: the shard is unreadable, said in a line.
    Short names fail as their header is read (zipfile reads 4 KiB at a time, and checks the CRC at the end); names
    of more than 4 KiB get past the header check and fail as the names themselves are read."""
    import zipfile
    folder = tmp_path / "split"
    x = np.arange(13 * 20, dtype=np.uint8).reshape(13, 4, 5, 1)
    write_split(folder, x, np.arange(13) % 3, np.array(names), shard_mb=60 / 2**20)
    shard = folder / "part-00001.npz"
    with zipfile.ZipFile(shard) as archive:
        info = archive.getinfo("class_names.npy")
    assert (info.file_size > 4096) == (len(names[0]) > 1)
    data = bytearray(shard.read_bytes())
    end = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size
    data[end - 1] ^= 0xFF  # the last byte of the names' data, past their header
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError) as error:
        open_split(folder)
    assert str(error.value) == (f"{shard} is not a readable .npz file (Bad CRC-32 for file 'class_names.npy'): "
                                f"delete {folder} and {REWRITE}")


def test_three_missing_or_extra_shards_are_all_named_without_dots(tmp_path):
    folder = tiny_split(tmp_path / "missing")
    for name in ("part-00001.npz", "part-00002.npz", "part-00003.npz"):
        (folder / name).unlink()
    with pytest.raises(UserError) as error:
        open_split(folder)
    assert str(error.value).startswith(f"{folder} lacks part-00001.npz, part-00002.npz, part-00003.npz of the 5 ")
    folder = tiny_split(tmp_path / "extra")
    for name in ("part-00005.npz", "part-00006.npz", "part-00007.npz"):
        shutil.copy(folder / "part-00000.npz", folder / name)
    with pytest.raises(UserError) as error:
        open_split(folder)
    assert str(error.value).startswith(f"{folder} holds part-00005.npz, part-00006.npz, part-00007.npz, which its ")
