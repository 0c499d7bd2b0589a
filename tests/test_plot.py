"""The plot stage: the four figures, real PNGs, deterministic bytes, params that change them."""
import hashlib
import io
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import run_stage, tiny_arrays, write_params
from mnist_cnn.errors import UserError
from mnist_cnn.files import write_npz

FIGURES = ("samples.png", "training_curves.png", "confusion_matrix.png", "misclassified.png")
# Image grids of 3x3, not the default 5x5: matplotlib lays out 25 subplots in three times as long
GRIDS_3X3 = {"plot__samples": 9, "plot__misclassified": 9}


@pytest.fixture
def plot():
    """The stage's module, imported by the tests that use it: matplotlib's import (0.6 s) stays out of every xdist
    worker's collection. An in-process predict before it in the worker blocks matplotlib for the rest of its process
    (runtimes._tensorflow): unblocked for good, not only for the test. Blocked again after it, the next test that
    asked for matplotlib would import a second copy of the package beside the first one's cached submodules, and
    pyplot's first figure would fail (`module 'matplotlib' has no attribute 'backend_bases'`)."""
    if sys.modules.get("matplotlib", "") is None:
        del sys.modules["matplotlib"]
    from stages import plot

    return plot


@pytest.fixture
def plot_args(trained_run, workdir):
    raw = workdir / "raw.npz"
    write_npz(raw, {**tiny_arrays(n_train=300, n_test=100), "class_names": np.array(list("0123456789"))})
    return [str(raw), str(trained_run["processed"] / "test"), str(trained_run["log_dir"]),
            str(trained_run["predictions"])]


def digests(directory):
    return {name: hashlib.md5((directory / name).read_bytes()).hexdigest() for name in FIGURES}


@pytest.mark.slow  # the stage's four figures drawn twice: about 4.5 CPU-s in process
def test_writes_four_png_figures_deterministically(plot, plot_args, workdir):
    write_params(workdir, **GRIDS_3X3)
    plot.main(plot_args + [str(workdir / "a")])
    plot.main(plot_args + [str(workdir / "b")])
    for name in FIGURES:
        with Image.open(workdir / "a" / name) as image:
            assert image.format == "PNG" and image.width >= 400
    assert digests(workdir / "a") == digests(workdir / "b")


@pytest.mark.slow  # the stage's figures drawn three times: about 5.5 CPU-s in process
def test_plot_params_change_the_figures(plot, plot_args, workdir):
    write_params(workdir, **GRIDS_3X3)
    plot.main(plot_args + [str(workdir / "default")])
    write_params(workdir, plot__samples=4, plot__misclassified=4)
    plot.main(plot_args + [str(workdir / "fewer")])
    before, after = digests(workdir / "default"), digests(workdir / "fewer")
    assert before["samples.png"] != after["samples.png"]
    assert before["misclassified.png"] != after["misclassified.png"]
    assert before["training_curves.png"] == after["training_curves.png"]
    write_params(workdir, **GRIDS_3X3, plot__dpi=50)
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


def figure_bytes(fig):
    from stages.plot import PNG_METADATA

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=50, metadata=PNG_METADATA)
    return buffer.getvalue()


def test_confusion_matrix_counts_each_pair_and_draws_what_scikit_learns_display_draws(plot):
    """The counts by hand (true class per row): 1234 right a's (written 1234, where .2g would write 1.2e+03),
    b read as a twice, c never predicted; and the figure pixel for pixel scikit-learn's, whose import the
    stage saves."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    actual = ["a"] * 1234 + ["b"] * 5 + ["c"] * 3
    predicted = ["a"] * 1234 + ["a", "a", "b", "b", "b"] + ["b", "a", "a"]
    names = ["a", "b", "c"]
    fig = plot.confusion_matrix(actual, predicted, names)
    cells = {(round(text.get_position()[1]), round(text.get_position()[0])): text.get_text()
             for text in fig.axes[0].texts}
    assert cells == {(0, 0): "1234", (0, 1): "0", (0, 2): "0", (1, 0): "2", (1, 1): "3", (1, 2): "0",
                     (2, 0): "2", (2, 1): "1", (2, 2): "0"}
    ours = figure_bytes(fig)
    theirs, ax = plt.subplots(figsize=fig.get_size_inches())
    ConfusionMatrixDisplay.from_predictions(actual, predicted, labels=names, ax=ax, cmap="Blues", colorbar=False,
                                            xticks_rotation=45)
    ax.set_title(fig.axes[0].get_title())
    theirs.tight_layout()
    assert figure_bytes(theirs) == ours


def test_predictions_naming_a_class_the_dataset_lacks_are_a_user_error_before_any_figure(plot, plot_args, workdir):
    predictions = workdir / "p.csv"
    with open(plot_args[3]) as f:
        predictions.write_text(f.read().replace("\n7,", "\nseven,", 1))
    with pytest.raises(UserError, match=r"p.csv names classes the dataset does not have \(seven\): run `dvc repro`"):
        plot.main(plot_args[:3] + [str(predictions), str(workdir / "out")])
    assert not (workdir / "out").exists()
