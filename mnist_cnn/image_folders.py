"""A dataset from a folder of images: one subfolder per class, each image normalised as predict does.

The images are read and normalised by data.folder.workers processes (0: one per core for a folder large enough
to pay for starting them, else this process); the dataset's bytes are the same for any number of them.
"""
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from mnist_cnn.errors import UserError
from mnist_cnn.images import BadImage, printable, read_image, to_model_image


def read_one(task):
    """(uint8 pixels, None) for a readable image, (None, the reason) for one that is not. task: (path, size, colour)."""
    path, size, colour = task
    try:
        return np.round(to_model_image(read_image(path, colour), size, colour) * 255).astype(np.uint8), None
    except BadImage as e:
        return None, str(e)


# What reading an image costs in the stage's process (per file, per megabyte of file) and from how many seconds of
# that a pool of one process per core is faster, starting it included: `python -m bench.folder_pool`
# (bench/results/folder_pool.json, a 2-core AVX2 CPU: the first pool costs the stage 2.2 s, and reads 2.0x as fast).
# More cores make the pool pay sooner; this errs on the side of one process.
PER_FILE_S, PER_MEGABYTE_S, POOL_PAYS_FROM_S = 0.00044, 0.015, 4.5


def processes_for(tasks, workers):
    """data.folder.workers, and for 0 (auto) one per core if reading tasks in this process would take
    POOL_PAYS_FROM_S or more, else 1."""
    if workers:
        return workers
    megabytes = 0
    for path, _, _ in tasks:
        try:
            megabytes += os.stat(path).st_size / 1e6
        except OSError:  # read_one will say what is wrong with it
            pass
    pays = len(tasks) * PER_FILE_S + megabytes * PER_MEGABYTE_S >= POOL_PAYS_FROM_S
    return (os.cpu_count() or 1) if pays else 1


def _worker_signals():
    """A worker leaves Ctrl-C to the stage (which stops the pool) and dies quietly on SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def read_all(tasks, workers):
    """read_one over tasks, in their order, on `workers` processes (1: in this process). The result does not
    depend on the number of workers: each image is read and normalised alone, and the results keep their order."""
    if workers == 1 or len(tasks) < 2:
        yield from map(read_one, tasks)
        return
    chunk = max(1, min(256, len(tasks) // (workers * 8)))
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"),
                               initializer=_worker_signals)
    try:
        yield from pool.map(read_one, tasks, chunksize=chunk)
    finally:  # a bad image that stops the stage, or Ctrl-C: the queued chunks are dropped
        pool.shutdown(wait=True, cancel_futures=True)


def read_class_folders(root, class_names, folder_params):
    """(images, labels) of root/<class>/<file> for each class; unreadable files stop or are skipped."""
    colour = folder_params["color_mode"] == "rgb"
    tasks, labels, folders = [], [], []
    for label, name in enumerate(class_names):
        folder = os.path.join(root, name)
        files = sorted(f for f in os.listdir(folder) if not f.startswith(".")) if os.path.isdir(folder) else []
        tasks += [(os.path.join(folder, file), folder_params["image_size"], colour) for file in files]
        labels += [label] * len(files)
        folders.append(folder)
    workers = processes_for(tasks, folder_params["workers"])
    images, kept = [], []
    for (path, _, _), label, (pixels, problem) in zip(tasks, labels, read_all(tasks, workers)):
        if problem is not None:
            if folder_params["bad_images"] == "stop":
                raise UserError(f"{printable(path)}: {problem}; fix or remove it, or set data.folder.bad_images: skip")
            print(f"download: skipped {printable(path)}: {problem}", file=sys.stderr)
            continue
        images.append(pixels)
        kept.append(label)
    counts = np.bincount(np.array(kept, np.int64), minlength=len(class_names))
    for folder, count in zip(folders, counts):
        if count == 0:
            raise UserError(f"class folder {printable(folder)} has no usable images: add some, or remove the folder")
    return np.stack(images), np.array(kept, np.int64)


def load_folder(path, folder_params, seed):
    """A dataset from data.path/<class>/*: the test set from data.path/test/<class>/* or a stratified split."""
    if not os.path.isdir(path):
        raise UserError(f"data.path = {path!r} is not a folder: make one subfolder of images per class")
    class_names = sorted(e.name for e in os.scandir(path) if e.is_dir() and e.name != "test"
                         and not e.name.startswith("."))
    for name in class_names:  # class names end up in metrics, plots and classes.json: text, not raw bytes
        if printable(name) != name:
            raise UserError(f"{printable(os.path.join(path, name))}: a class folder name that is not valid UTF-8; "
                            f"rename the folder")
    if len(class_names) < 2:
        raise UserError(f"{path} has {len(class_names)} class folder(s) {class_names}; a classifier needs "
                               f"two or more: put each class's images in a subfolder named after it")
    x, y = read_class_folders(path, class_names, folder_params)
    if os.path.isdir(os.path.join(path, "test")):
        x_test, y_test = read_class_folders(os.path.join(path, "test"), class_names, folder_params)
    else:
        from sklearn.model_selection import train_test_split

        try:
            train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=folder_params["test_split"],
                                                   random_state=seed, stratify=y)
        except ValueError as e:
            raise UserError(f"{path}: too few images for data.folder.test_split = "
                                   f"{folder_params['test_split']} in every class ({e}); add images or a test/ folder")
        train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
        x, y, x_test, y_test = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
    print(f"download: {len(class_names)} classes, {len(y)} training and {len(y_test)} test images from {path}")
    return {"x_train": x, "y_train": y, "x_test": x_test, "y_test": y_test, "class_names": np.array(class_names)}
