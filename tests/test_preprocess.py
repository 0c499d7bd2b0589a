"""The preprocess stage: raw-array checks, the validation hold-out, scaling, deterministic files."""
import hashlib
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import CODE_ENV, REPO, run_stage, tiny_arrays, write_params
from mnist_cnn.errors import UserError
from mnist_cnn.files import load_npz, write_npz
from mnist_cnn.prepare import read_split
from mnist_cnn.shards import open_split, read_all
from stages import preprocess

NAMES = np.array([str(d) for d in range(10)])


@pytest.fixture
def raw(workdir):
    path = workdir / "raw.npz"
    write_npz(path, {**tiny_arrays(n_train=200, n_test=50), "class_names": NAMES})
    return path


def outputs(directory):
    """Each split's arrays, its shards put together."""
    out = {}
    for name in ("train", "val", "test"):
        split = open_split(directory / name)
        x, y = read_all(split)
        out[name] = {"x": x, "y": y, "class_names": np.array(split.class_names)}
    return out


def digest(folder):
    """md5 over a shard folder's file names and bytes."""
    md5 = hashlib.md5()
    for path in sorted(folder.iterdir()):
        md5.update(path.name.encode() + path.read_bytes())
    return md5.hexdigest()


def test_tail_split_is_what_keras_validation_split_does(workdir, raw):
    preprocess.main([str(raw), str(workdir / "out")])
    out = outputs(workdir / "out")
    arrays = load_npz(raw)
    split_at = int(math.floor(200 * (1 - 0.2)))  # keras.src.trainers.data_adapters.train_validation_split
    assert (len(out["train"]["y"]), len(out["val"]["y"]), len(out["test"]["y"])) == (160, 40, 50)
    np.testing.assert_array_equal(out["val"]["y"], arrays["y_train"][split_at:])
    np.testing.assert_array_equal(out["val"]["x"][..., 0], arrays["x_train"][split_at:])
    x = out["train"]["x"]
    assert x.dtype == np.uint8 and x.shape == (160, 28, 28, 1)  # compact: a quarter of float32's bytes
    assert out["test"]["class_names"].tolist() == NAMES.tolist()


def test_stages_read_the_notebooks_scaling(workdir, raw):
    """read_split gives what the notebook fed the network: reshape(-1, 28, 28, 1), float32 / 255."""
    preprocess.main([str(raw), str(workdir / "out")])
    x, y, class_names = read_split(workdir / "out" / "test")
    arrays = load_npz(raw)
    np.testing.assert_array_equal(x, arrays["x_test"].reshape(-1, 28, 28, 1).astype("float32") / 255)
    assert x.dtype == np.float32 and y.tolist() == arrays["y_test"].tolist() and class_names == NAMES.tolist()


def test_limit_keeps_the_first_images(workdir, raw):
    write_params(workdir, data__limit=100, data__val_split=0.1)
    preprocess.main([str(raw), str(workdir / "out")])
    out = outputs(workdir / "out")
    assert (len(out["train"]["y"]), len(out["val"]["y"])) == (90, 10)
    np.testing.assert_array_equal(out["val"]["y"], load_npz(raw)["y_train"][90:100])


def test_stratified_split_is_seeded_and_balanced(workdir, raw):
    digests = []
    for seed in (1, 1, 2):
        write_params(workdir, data__split="stratified", seed=seed)
        preprocess.main([str(raw), str(workdir / "out")])
        out = outputs(workdir / "out")
        assert np.bincount(out["val"]["y"]).tolist() == [4] * 10
        digests.append(digest(workdir / "out" / "val"))
    assert digests[0] == digests[1] != digests[2]


def test_outputs_are_byte_identical_across_runs(workdir, raw):
    hashes = []
    for run in ("a", "b"):
        preprocess.main([str(raw), str(workdir / run)])
        hashes.append([digest(workdir / run / s) for s in ("train", "val", "test")])
    assert hashes[0] == hashes[1]


@pytest.mark.stage
@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(x_train=a["x_train"][:, :, :8].reshape(200, 28, 4, 2)), "x_train has shape (200, 28, 4, 2)"),
    (lambda a: a.update(x_test=a["x_test"].astype(np.float32)), "x_test has dtype float32; expected uint8"),
    (lambda a: a.update(y_train=a["y_train"][:-1]), "x_train has 200 images but y_train has 199 labels"),
    (lambda a: a.update(y_test=a["y_test"] + 5), "y_test holds labels 5..14; expected 0..9"),
    (lambda a: a.update(y_train=a["y_train"].astype(np.float64)), "y_train has dtype float64"),
    (lambda a: a.pop("y_test"), "lacks the array 'y_test'"),
    (lambda a: a.update(x_train=np.where(np.arange(200)[:, None, None] == 7, np.nan, a["x_train"] / 255.0)),
     "x_train holds NaN or infinite values (first in image 7)"),
])
def test_bad_raw_arrays_stop_with_one_line_and_no_output(workdir, change, message):
    arrays = {**tiny_arrays(n_train=200, n_test=50), "class_names": NAMES}
    change(arrays)
    write_npz(workdir / "raw.npz", arrays)
    result = run_stage("stages.preprocess", "raw.npz", "out", cwd=workdir)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (workdir / "out").exists()


def test_limit_too_small_for_a_validation_split(workdir, raw):
    write_params(workdir, data__limit=1, data__val_split=0.2)
    with pytest.raises(UserError, match="leaves an empty split"):
        preprocess.main([str(raw), str(workdir / "out")])


def class_sorted_raw(workdir, dataset):
    """A raw file stored class by class, as a folder dataset always is."""
    arrays = tiny_arrays(n_train=200, n_test=50)
    order = np.argsort(arrays["y_train"], kind="stable")
    write_npz(workdir / "raw.npz", {**arrays, "x_train": arrays["x_train"][order], "y_train": arrays["y_train"][order],
                                    "class_names": NAMES})
    write_params(workdir, data__dataset=dataset, data__path="mine")


def test_auto_split_is_the_notebooks_tail_for_mnist_and_stratified_for_your_own_data(workdir):
    class_sorted_raw(workdir, "folder")
    preprocess.main([str(workdir / "raw.npz"), str(workdir / "out")])
    out = outputs(workdir / "out")
    assert set(out["train"]["y"].tolist()) == set(out["val"]["y"].tolist()) == set(range(10))
    assert np.bincount(out["val"]["y"]).tolist() == [4] * 10  # stratified: every class held out alike


@pytest.mark.parametrize("dataset", ["mnist", "npz"])
def test_a_tail_split_that_leaves_classes_out_of_training_is_one_line(workdir, dataset):
    class_sorted_raw(workdir, dataset)
    write_params(workdir, data__dataset=dataset, data__path="mine", data__split="tail")
    with pytest.raises(UserError) as error:
        preprocess.main([str(workdir / "raw.npz"), str(workdir / "out")])
    assert str(error.value) == ("data.split = tail leaves 2 class(es) out of the training set (8, 9); "
                                "set data.split: stratified")
    assert not (workdir / "out").exists()


def test_a_class_missing_from_validation_is_said_in_one_line(workdir, capsys):
    arrays = tiny_arrays(n_train=200, n_test=50)
    arrays["y_train"][160:][arrays["y_train"][160:] == 3] = 4  # no 3 among the last 40 (the validation set)
    write_npz(workdir / "raw.npz", {**arrays, "class_names": NAMES})
    preprocess.main([str(workdir / "raw.npz"), str(workdir / "out")])
    assert capsys.readouterr().err.strip().splitlines() == [
        "preprocess: warning: data.split = tail leaves 1 class(es) out of the validation set (3), so validation "
        "accuracy does not measure them; set data.split: stratified"]


def test_a_training_split_of_several_shards_is_put_in_a_seeded_order_and_one_of_one_shard_is_not():
    """A split that fills one shard exactly keeps its order; one image more and it is permuted, by the seed."""
    from mnist_cnn.shards import rows_per_shard
    rows = rows_per_shard((28, 28), 0.05)
    for n, seed in ((rows, 7), (rows + 1, 7), (rows + 1, 8)):
        y = np.arange(n)
        x = np.broadcast_to(y[:, None, None], (n, 28, 28)).astype(np.uint8)
        x_mixed, y_mixed = preprocess.mix_for_streaming(x, y, 0.05, seed)
        order = np.random.default_rng(seed).permutation(n) if n > rows else np.arange(n)
        assert y_mixed.tolist() == order.tolist()
        np.testing.assert_array_equal(x_mixed, x[order])


def test_classes_left_out_of_validation_are_named_ten_at_most(capsys):
    """Eleven classes left out: the first ten are named, then dots; ten: all of them, no dots."""
    y = np.arange(12)
    names = np.array([f"c{k}" for k in range(12)])
    preprocess.check_every_class_is_split(y, y, np.array([0]), names, "tail")
    preprocess.check_every_class_is_split(y, y, np.array([0, 1]), names, "stratified")
    assert capsys.readouterr().err.splitlines() == [
        "preprocess: warning: data.split = tail leaves 11 class(es) out of the validation set (c1, c2, c3, c4, c5, c6, "
        "c7, c8, c9, c10 ...), so validation accuracy does not measure them; set data.split: stratified",
        "preprocess: warning: data.split = stratified leaves 10 class(es) out of the validation set (c2, c3, c4, c5, "
        "c6, c7, c8, c9, c10, c11), so validation accuracy does not measure them; add images of those classes"]


def raw_arrays(**changes):
    """Raw arrays that pass check_raw (20 training and 10 test images of 28x28, 10 classes), with some changed."""
    arrays = {"x_train": np.zeros((20, 28, 28), np.uint8), "y_train": np.arange(20) % 10,
              "x_test": np.zeros((10, 28, 28), np.uint8), "y_test": np.arange(10), "class_names": NAMES}
    return {**arrays, **changes}


@pytest.mark.parametrize("changes", [
    {}, {"x_test": np.zeros((1, 28, 28), np.uint8), "y_test": np.array([9])},
    {"x_train": np.zeros((20, 8, 8), np.uint8), "x_test": np.zeros((10, 8, 8), np.uint8)},
    {"x_train": np.zeros((20, 8, 8, 3), np.uint8), "x_test": np.zeros((10, 8, 8, 3), np.uint8)},
    {"y_train": np.zeros(20, np.uint8)}])
def test_raw_arrays_of_any_size_from_8x8_grayscale_or_rgb_pass(changes):
    preprocess.check_raw(raw_arrays(**changes), "raw.npz")


def nan_in_image_7(x):
    x = x.astype(np.float32)
    x[7, 3, 5] = np.nan
    return x


SHAPE_ADVICE = "expected (N, H, W) grayscale or (N, H, W, 3) RGB images, e.g. (N, 28, 28)"


@pytest.mark.parametrize("changes, message", [
    ({"x_test": np.zeros((10, 784), np.uint8)}, f"x_test has shape (10, 784); {SHAPE_ADVICE}"),
    ({"x_test": np.zeros((10, 28, 28, 3, 1), np.uint8)}, f"x_test has shape (10, 28, 28, 3, 1); {SHAPE_ADVICE}"),
    ({"x_test": np.zeros((0, 28, 28), np.uint8)}, f"x_test has shape (0, 28, 28); {SHAPE_ADVICE}"),
    ({"x_train": np.zeros((20, 7, 8), np.uint8)}, f"x_train has shape (20, 7, 8); {SHAPE_ADVICE}"),
    ({"x_train": np.zeros((20, 8, 7), np.uint8)}, f"x_train has shape (20, 8, 7); {SHAPE_ADVICE}"),
    ({"x_train": np.zeros((20, 28, 28, 2), np.uint8)}, f"x_train has shape (20, 28, 28, 2); {SHAPE_ADVICE}"),
    ({"x_test": np.zeros((10, 28, 27), np.uint8)}, "x_test images are (28, 27) but x_train's are (28, 28)"),
    ({"x_train": nan_in_image_7(np.zeros((20, 28, 28)))},
     "x_train holds NaN or infinite values (first in image 7); expected uint8 pixels 0-255"),
    ({"x_test": np.full((10, 28, 28), 0.5)}, "x_test has dtype float64; expected uint8 pixels 0-255"),
    ({"x_test": np.full((10, 28, 28), "a")}, "x_test has dtype <U1; expected uint8 pixels 0-255"),
    ({"y_test": np.arange(10).reshape(10, 1)}, "y_test has dtype int64 and shape (10, 1); expected a 1-D array of "
                                               "integer labels"),
    ({"y_test": np.arange(10.0)}, "y_test has dtype float64 and shape (10,); expected a 1-D array of integer labels"),
    ({"y_test": np.arange(9)}, "x_test has 10 images but y_test has 9 labels"),
    ({"y_test": np.arange(1, 11)}, "y_test holds labels 1..10; expected 0..9 (one per class name)"),
    ({"y_train": np.arange(20) % 10 - 1}, "y_train holds labels -1..8; expected 0..9 (one per class name)")])
def test_each_raw_array_problem_is_its_exact_line(changes, message):
    with pytest.raises(UserError) as error:
        preprocess.check_raw(raw_arrays(**changes), "raw.npz")
    assert str(error.value) == f"raw.npz: {message}"


def test_auto_split_method_and_an_impossible_stratified_split():
    """auto: the tail for the published datasets, stratified for your own; stratified needs 2 images of a class."""
    from mnist_cnn.params import PUBLISHED_DATASETS
    assert {preprocess.split_method("auto", name) for name in PUBLISHED_DATASETS} == {"tail"}
    assert [preprocess.split_method("auto", "folder"), preprocess.split_method("auto", "npz"),
            preprocess.split_method("tail", "folder"), preprocess.split_method("stratified", "mnist")] == [
        "stratified", "stratified", "tail", "stratified"]
    x, y = np.zeros((21, 28, 28), np.uint8), np.array([0] * 10 + [1] * 10 + [2])  # class 2: one image
    with pytest.raises(UserError, match=r"^data.split = stratified is impossible here \(The least populated "
                                        r"classes? in y ha(s|ve) only 1 member, .+\); use more data or data.split: "
                                        r"tail$"):
        preprocess.split_train_val(x, y, 0.2, "stratified", 0)


def test_help_names_the_raw_file_and_the_output_folder(capsys):
    """--help's lines, whose text argparse wraps to the terminal's width."""
    with pytest.raises(SystemExit, match="^0$"):
        preprocess.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    lines = ["Stage preprocess: check the raw arrays, hold out a validation split, give the images a channel axis.",
             "raw the download stage's .npz", "output_dir folder for the train/, val/ and test/ shard folders"]
    assert [line for line in lines if line not in text] == []


def test_preprocess_says_what_it_wrote_and_why_it_cannot_in_exact_lines(workdir, raw, capsys):
    write_params(workdir, data__shard_mb=0.05)  # 66 images of 28x28 a shard: 160 training images in 3
    preprocess.main([str(raw), str(workdir / "out")])
    assert capsys.readouterr().out.splitlines() == ["preprocess: train: 160 images in 3 shard(s)",
                                                    "preprocess: val: 40 images in 1 shard(s)",
                                                    "preprocess: test: 50 images in 1 shard(s)"]
    with pytest.raises(UserError) as error:
        preprocess.main([str(workdir / "none.npz"), str(workdir / "out")])
    assert str(error.value) == f"{workdir / 'none.npz'} not found: run `dvc repro download` to create it"
    write_params(workdir, data__limit=1, data__val_split=0.2)
    with pytest.raises(UserError) as error:
        preprocess.main([str(raw), str(workdir / "out")])
    assert str(error.value) == "data.limit = 1 with data.val_split = 0.2 leaves an empty split; raise data.limit"


def test_a_missing_raw_array_is_named():
    arrays = raw_arrays()
    del arrays["class_names"]
    with pytest.raises(UserError) as error:
        preprocess.check_raw(arrays, "raw.npz")
    assert str(error.value) == "raw.npz lacks the array 'class_names': run `dvc repro download` again"


def test_main_names_the_raw_file_it_checks_and_writes_int64_labels_in_the_seeded_order(workdir, raw, capsys):
    """In process, so mutation testing credits main with it: a bad raw file's line names that file; a training
    split of several shards is the tail split's images in the permutation of params' seed; labels are int64; a
    validation split of one image is one, not an empty one."""
    from mnist_cnn.params import load_params

    arrays = {**tiny_arrays(n_train=200, n_test=50), "class_names": NAMES}
    write_npz(workdir / "bad.npz", {**arrays, "x_test": arrays["x_test"].astype(np.float32)})
    with pytest.raises(UserError) as error:
        preprocess.main([str(workdir / "bad.npz"), str(workdir / "out")])
    assert str(error.value) == f"{workdir / 'bad.npz'}: x_test has dtype float32; expected uint8 pixels 0-255"

    write_params(workdir, data__shard_mb=0.05)
    preprocess.main([str(raw), str(workdir / "out")])
    order = np.random.default_rng(load_params()["seed"]).permutation(160)
    train = open_split(workdir / "out" / "train")
    assert len(train.files) == 3
    x, y = read_all(train)
    np.testing.assert_array_equal(x[..., 0], arrays["x_train"][:160][order])
    np.testing.assert_array_equal(y, arrays["y_train"][:160][order])
    for split in ("train", "val", "test"):
        with np.load(workdir / "out" / split / "part-00000.npz") as shard:
            assert shard["y"].dtype == np.int64

    write_params(workdir, data__limit=11, data__val_split=0.05)  # floor(11 * 0.95) = 10 for training, 1 held out
    preprocess.main([str(raw), str(workdir / "one")])
    assert [open_split(workdir / "one" / split).images for split in ("train", "val")] == [10, 1]


@pytest.mark.stage
def test_scikit_learn_is_imported_for_a_stratified_split_only():
    """docs/speed.md: a tail split (MNIST's) starts without scikit-learn's import, most of the stage's time."""
    code = ("import sys, numpy as np\n"
            "from stages.preprocess import split_train_val\n"
            "x, y = np.arange(40).reshape(20, 2), np.arange(20) % 2\n"
            "split_train_val(x, y, 0.5, 'tail', 0)\n"
            "print('sklearn' in sys.modules)\n"
            "(_, y_fit), _ = split_train_val(x, y, 0.5, 'stratified', 0)\n"
            "print('sklearn' in sys.modules, np.bincount(y_fit).tolist())\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, **CODE_ENV},
                            capture_output=True, text=True, timeout=120)
    assert result.stdout.split("\n")[:2] == ["False", "True [5, 5]"], result.stderr
