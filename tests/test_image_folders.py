"""image_folders in process: a folder of class subfolders read into arrays, compared with each image read apart;
the errors, one line each. tests/test_download.py runs the same through the download stage."""
import contextlib
import ctypes
import os
import signal
import struct

import numpy as np
import pytest
from PIL import Image

from conftest import image_folder
from mnist_cnn import image_folders
from mnist_cnn.errors import UserError
from mnist_cnn.image_folders import load_folder, read_all, read_class_folders, read_one
from mnist_cnn.images import read_image, to_model_image

PARAMS = {"image_size": 28, "color_mode": "grayscale", "test_split": 0.25, "bad_images": "stop", "workers": 1}


def read_apart(path, size=28, colour=False):
    return np.round(to_model_image(read_image(str(path), colour), size, colour) * 255).astype(np.uint8)


def test_a_folder_becomes_sorted_classes_of_images_read_as_predict_reads_them_and_a_seeded_stratified_test_set(
        tmp_path, capsys):
    root = image_folder(tmp_path / "mine", classes=("b", "a", "c"), per_class=8)
    (root / ".git").mkdir()  # hidden: not a class
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(root / "a" / ".hidden.png")  # hidden: not an image of a
    (root / "loose.png").write_bytes((root / "a" / "000.png").read_bytes())  # a file beside the classes: not one
    files = [(label, root / name / file) for label, name in enumerate(("a", "b", "c"))
             for file in sorted(os.listdir(root / name)) if not file.startswith(".")]
    x = np.stack([read_apart(path) for _, path in files])
    y = np.array([label for label, _ in files])
    from sklearn.model_selection import train_test_split  # here: SciPy's import kept out of collection

    train, test = train_test_split(np.arange(len(y)), test_size=0.25, random_state=7, stratify=y)
    train, test = np.sort(train), np.sort(test)
    raw = load_folder(str(root), PARAMS, seed=7)
    assert raw["class_names"].tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(raw["x_train"], x[train])
    np.testing.assert_array_equal(raw["y_train"], y[train])
    np.testing.assert_array_equal(raw["x_test"], x[test])
    np.testing.assert_array_equal(raw["y_test"], y[test])
    assert raw["x_train"].dtype == np.uint8 and raw["y_train"].dtype == np.int64 and len(test) == 6
    assert capsys.readouterr().out == f"download: 3 classes, 18 training and 6 test images from {root}\n"
    other = load_folder(str(root), PARAMS, seed=8)  # another seed, another test set
    assert not np.array_equal(other["y_test"], raw["y_test"]) or not np.array_equal(other["x_test"], raw["x_test"])


def test_a_test_subfolder_is_the_test_set_in_colour_and_another_size(tmp_path, capsys):
    root = image_folder(tmp_path / "mine", classes=("a", "b"), per_class=3)
    image_folder(root / "test", classes=("a", "b"), per_class=2, seed=4)
    raw = load_folder(str(root), {**PARAMS, "color_mode": "rgb", "image_size": 20}, seed=0)
    assert raw["class_names"].tolist() == ["a", "b"]
    for part, folder in (("train", root), ("test", root / "test")):
        files = [(label, folder / name / file) for label, name in enumerate("ab") for file in
                 sorted(os.listdir(folder / name))]
        np.testing.assert_array_equal(raw[f"x_{part}"], np.stack([read_apart(p, 20, True) for _, p in files]))
        np.testing.assert_array_equal(raw[f"y_{part}"], [label for label, _ in files])
    assert raw["x_train"].shape == (6, 20, 20, 3)
    assert capsys.readouterr().out.endswith(" 2 classes, 6 training and 4 test images from " + str(root) + "\n")


def test_a_bad_image_stops_with_its_line_or_is_skipped_with_one(tmp_path, capsys):
    root = image_folder(tmp_path / "mine", classes=("a", "b"), per_class=3)
    (root / "b" / "001.jpg").write_bytes(b"not a jpeg")
    problem = "not an image file in a format this project reads (PNG, JPEG, BMP, GIF, TIFF, WebP, PGM/PPM)"
    with pytest.raises(UserError) as error:
        read_class_folders(str(root), ["a", "b"], PARAMS)
    assert str(error.value) == f"{root}/b/001.jpg: {problem}; fix or remove it, or set data.folder.bad_images: skip"
    x, y = read_class_folders(str(root), ["a", "b"], {**PARAMS, "bad_images": "skip"})
    assert capsys.readouterr().err == f"download: skipped {root}/b/001.jpg: {problem}\n"
    kept = [root / "a" / f for f in ("000.png", "001.jpg", "002.bmp")]
    kept += [root / "b" / f for f in ("000.png", "002.bmp")]
    np.testing.assert_array_equal(x, np.stack([read_apart(p) for p in kept]))
    assert y.tolist() == [0, 0, 0, 1, 1] and y.dtype == np.int64


def test_a_class_without_usable_images_and_folders_that_make_no_dataset_are_one_line(tmp_path):
    root = image_folder(tmp_path / "mine", classes=("a", "b"), per_class=2)
    for name in os.listdir(root / "b"):
        (root / "b" / name).write_bytes(b"broken")
    with pytest.raises(UserError, match=f"^class folder {root}/b has no usable images: add some, or remove the fo"):
        read_class_folders(str(root), ["a", "b"], {**PARAMS, "bad_images": "skip"})
    with pytest.raises(UserError, match=f"^class folder {root}/c has no usable images"):
        read_class_folders(str(root), ["a", "c"], PARAMS)  # no such folder: none either
    with pytest.raises(UserError, match=f"^class folder {root}/x has no usable images"):
        read_class_folders(str(root), ["x", "b"], {**PARAMS, "bad_images": "skip"})  # no image kept at all
    with pytest.raises(UserError) as error:
        load_folder(str(root / "a" / "000.png"), PARAMS, seed=0)
    assert str(error.value) == (f"data.path = {str(root / 'a' / '000.png')!r} is not a folder: make one subfolder of "
                                f"images per class")
    (tmp_path / "one").mkdir()
    image_folder(tmp_path / "one", classes=("only",), per_class=2)
    (tmp_path / "one" / "test").mkdir()  # the test set's folder, not a class
    with pytest.raises(UserError) as error:
        load_folder(str(tmp_path / "one"), PARAMS, seed=0)
    assert str(error.value) == (f"{tmp_path}/one has 1 class folder(s) ['only']; a classifier needs two or more: put "
                                f"each class's images in a subfolder named after it")
    os.mkdir(os.path.join(os.fsencode(tmp_path / "one"), b"caf\xe9"))
    with pytest.raises(UserError) as error:
        load_folder(str(tmp_path / "one"), PARAMS, seed=0)
    assert str(error.value) == (f"{tmp_path}/one/caf\\xe9: a class folder name that is not valid UTF-8; rename the "
                                f"folder")
    few = image_folder(tmp_path / "few", classes=("a", "b"), per_class=1)
    with pytest.raises(UserError) as error:
        load_folder(str(few), PARAMS, seed=0)
    assert str(error.value).startswith(f"{few}: too few images for data.folder.test_split = 0.25 in every class (")
    assert str(error.value).endswith("); add images or a test/ folder")


@pytest.mark.stage
def test_two_worker_processes_read_the_same_images_in_the_same_order(tmp_path, monkeypatch):
    root = image_folder(tmp_path / "mine", classes=("a",), per_class=18)
    (root / "a" / "bad.png").write_bytes(b"broken")
    tasks = [(str(root / "a" / name), 28, False) for name in sorted(os.listdir(root / "a"))]
    alone = list(read_all(tasks, 1))
    assert [problem is None for _, problem in alone] == [True] * 18 + [False]  # bad.png sorts last
    for count in (2, 19):  # 19 tasks for 2 workers: chunks of one
        together = list(read_all(tasks[:count], 2))
        assert [problem for _, problem in together] == [problem for _, problem in alone[:count]]
        for (a, _), (b, _) in zip(alone, together):
            assert (a is None and b is None) or np.array_equal(a, b)
    monkeypatch.setattr(image_folders, "ProcessPoolExecutor", None)  # one worker, or one task: no pool
    for tasks_, workers in ((tasks[:1], 2), (tasks[:2], 1)):
        assert [problem for _, problem in read_all(tasks_, workers)] == [read_one(task)[1] for task in tasks_]


def test_a_worker_ignores_ctrl_c_and_dies_on_sigterm():
    saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        image_folders._worker_signals()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)


def test_data_folder_workers_0_reads_on_one_process_per_core_when_the_folder_pays_for_them(tmp_path, monkeypatch):
    root = image_folder(tmp_path / "mine", classes=("a",), per_class=2)
    asked, real = [], image_folders.read_all
    monkeypatch.setattr(image_folders, "read_all", lambda tasks, workers: asked.append(workers) or real(tasks, 1))
    for workers, cores, pays_from, used in ((0, 6, 1e-9, 6), (0, 6, 1e9, 1), (3, 6, 1e9, 3), (0, None, 1e-9, 1)):
        monkeypatch.setattr(image_folders.os, "cpu_count", lambda cores=cores: cores)
        monkeypatch.setattr(image_folders, "POOL_PAYS_FROM_S", pays_from)
        read_class_folders(str(root), ["a"], {**PARAMS, "workers": workers})
        assert asked[-1] == used


def test_the_pool_pays_from_the_estimated_seconds_of_its_files_and_their_megabytes(tmp_path, monkeypatch):
    for name, size in (("a.png", 500_000), ("b.png", 250_000)):
        (tmp_path / name).write_bytes(bytes(size))
    tasks = [(str(tmp_path / name), 28, False) for name in ("a.png", "b.png", "gone.png")]  # gone: counted, 0 bytes
    monkeypatch.setattr(image_folders.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(image_folders, "PER_FILE_S", 0.5)
    monkeypatch.setattr(image_folders, "PER_MEGABYTE_S", 8.0)
    estimate = 3 * 0.5 + 0.75 * 8.0  # 7.5 s
    for pays_from, processes in ((estimate - 0.01, 4), (estimate, 4), (estimate + 0.01, 1)):
        monkeypatch.setattr(image_folders, "POOL_PAYS_FROM_S", pays_from)
        assert image_folders.processes_for(tasks, 0) == processes
        assert image_folders.processes_for(tasks, 3) == 3
    assert image_folders.processes_for([], 0) == 1


def test_two_tasks_or_more_go_to_a_pool_in_chunks_of_an_eighth_of_each_workers_share(tmp_path, monkeypatch):
    pools = []

    class Pool:  # runs in process what a ProcessPoolExecutor would, keeping what it was asked
        def __init__(self, workers, **options):
            assert options["mp_context"].get_start_method() == "forkserver"  # not fork: TensorFlow's threads may run
            assert options["initializer"] is image_folders._worker_signals
            pools.append([workers])

        def map(self, function, tasks, chunksize):
            pools[-1].append(chunksize)
            return map(function, tasks)

        def shutdown(self, **options):
            pass

    monkeypatch.setattr(image_folders, "ProcessPoolExecutor", Pool)
    tasks = [(str(tmp_path / f"{i}.png"), 28, False) for i in range(5000)]  # none there: each a quick problem
    for count, workers, pool in ((1, 2, None), (2, 1, None), (2, 2, [2, 1]), (40, 2, [2, 2]), (40, 3, [3, 1]),
                                 (32, 2, [2, 2]), (5000, 2, [2, 256])):
        pools.clear()
        assert len(list(read_all(tasks[:count], workers))) == count
        assert pools == ([pool] if pool else [])


@contextlib.contextmanager
def opened_names(directory):
    """The names of the files opened in directory while the context is open (Linux inotify, IN_OPEN)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK)
    assert fd >= 0 and libc.inotify_add_watch(fd, str(directory).encode(), 0x20) >= 0  # IN_OPEN
    names = set()
    try:
        yield names
        data = b""
        while True:
            try:
                data += os.read(fd, 1 << 16)
            except BlockingIOError:
                break
        while data:
            _, _, _, length = struct.unpack_from("iIII", data)
            names.add(data[16:16 + length].rstrip(b"\0").decode())
            data = data[16 + length:]
    finally:
        os.close(fd)


@pytest.mark.stage
def test_a_stop_reads_no_queued_image_and_leaves_no_worker_running(tmp_path, monkeypatch):
    """A bad first image (or Ctrl-C) stops the stage: the chunks still queued are never read, and the workers have
    ended when read_all's generator is closed. 160 links to one large image (about 30 ms each to read): 16 chunks
    of 10, of which the stop finds at most 7 started (2 running, 3 in the call queue: Python's EXTRA_QUEUED_CALLS)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "000.png").write_bytes(b"not an image")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1000, 1000), dtype=np.uint8)).save(tmp_path / "big.png")
    for i in range(1, 160):
        os.link(tmp_path / "big.png", folder / f"{i:03d}.png")
    tasks = [(str(folder / name), 28, False) for name in sorted(os.listdir(folder))]
    workers = []

    class Pool(image_folders.ProcessPoolExecutor):  # the real pool, keeping its processes to look at after it stops
        def shutdown(self, *args, **options):
            workers.extend(self._processes.values())
            super().shutdown(*args, **options)

    monkeypatch.setattr(image_folders, "ProcessPoolExecutor", Pool)
    with opened_names(folder) as opened:
        results = read_all(tasks, 2)
        pixels, problem = next(results)
        assert pixels is None and problem is not None
        results.close()  # what the stage's UserError or KeyboardInterrupt does to the generator
        assert len(workers) == 2 and not any(process.is_alive() for process in workers)
    assert "000.png" in opened and len(opened) <= len(tasks) * 3 // 4, sorted(opened)  # none queued was read
