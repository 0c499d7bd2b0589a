"""The plot stage: the four figures, real PNGs, deterministic bytes, params that change them."""
import hashlib

import numpy as np
import pytest
from PIL import Image

from conftest import run_stage, tiny_arrays, write_params
from mnist_cnn.files import write_npz
from stages import plot

FIGURES = ("samples.png", "training_curves.png", "confusion_matrix.png", "misclassified.png")


@pytest.fixture
def plot_args(trained_run, workdir):
    raw = workdir / "raw.npz"
    write_npz(raw, {**tiny_arrays(n_train=300, n_test=100), "class_names": np.array(list("0123456789"))})
    return [str(raw), str(trained_run["processed"] / "test"), str(trained_run["log_dir"]),
            str(trained_run["predictions"])]


def digests(directory):
    return {name: hashlib.md5((directory / name).read_bytes()).hexdigest() for name in FIGURES}


def test_writes_four_png_figures_deterministically(plot_args, workdir):
    plot.main(plot_args + [str(workdir / "a")])
    plot.main(plot_args + [str(workdir / "b")])
    for name in FIGURES:
        with Image.open(workdir / "a" / name) as image:
            assert image.format == "PNG" and image.width >= 400
    assert digests(workdir / "a") == digests(workdir / "b")


def test_plot_params_change_the_figures(plot_args, workdir):
    plot.main(plot_args + [str(workdir / "default")])
    write_params(workdir, plot__samples=9, plot__misclassified=4)
    plot.main(plot_args + [str(workdir / "fewer")])
    before, after = digests(workdir / "default"), digests(workdir / "fewer")
    assert before["samples.png"] != after["samples.png"]
    assert before["misclassified.png"] != after["misclassified.png"]
    assert before["training_curves.png"] == after["training_curves.png"]
    write_params(workdir, plot__dpi=50)
    plot.main(plot_args + [str(workdir / "small")])
    with Image.open(workdir / "small" / "samples.png") as small, \
            Image.open(workdir / "default" / "samples.png") as default:
        assert small.width * 2 == default.width


@pytest.mark.stage
def test_missing_training_log_is_one_line(plot_args, workdir):
    plot_args[2] = str(workdir / "no-log")
    result = run_stage("stages.plot", *plot_args, "out", cwd=workdir)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not found: run `dvc repro train`" in lines[0]
    assert not (workdir / "out").exists()
