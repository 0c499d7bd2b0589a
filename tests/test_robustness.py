"""The robustness stage: accuracy under MNIST-C's corruptions as metrics, a table for DVC's bar chart, a figure."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from conftest import digit_images, write_params
from mnist_cnn.corruptions import CORRUPTIONS
from mnist_cnn.errors import UserError
from mnist_cnn.shards import write_split
from stages import robustness

NAMES = list(CORRUPTIONS)


def run_in(folder, model, test):
    """The stage, in-process, writing into folder; returns (metrics, table rows, figure path)."""
    paths = [folder / "robustness.json", folder / "robustness.csv", folder / "corruptions.png"]
    robustness.main([str(model), str(test), *map(str, paths)])
    with open(paths[1]) as f:
        rows = [(row["corruption"], float(row["accuracy"])) for row in csv.DictReader(f)]
    return json.loads(paths[0].read_text()), rows, paths[2]


@pytest.fixture(scope="module")
def default_run(trained_run, tmp_path_factory):
    """The stage with the default params on the tiny trained model: (metrics, rows, figure)."""
    folder = tmp_path_factory.mktemp("robustness")
    write_params(folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        return run_in(folder, trained_run["model"], trained_run["processed"] / "test")


def test_metrics_table_and_figure(default_run, trained_run):
    """Clean accuracy is evaluate's; `corrupted` is the mean over the 15 corruptions; `error_ratio` the mean
    error under corruption over the clean error; the table holds the same accuracies, clean first."""
    metrics, rows, figure = default_run
    assert list(metrics) == ["clean_accuracy", "corrupted", "error_ratio", "per_corruption"]
    assert metrics["clean_accuracy"] == json.loads(trained_run["metrics"].read_text())["accuracy"]
    assert list(metrics["per_corruption"]) == NAMES
    assert all(0 <= value <= 1 for value in metrics["per_corruption"].values())
    assert metrics["corrupted"] == pytest.approx(np.mean(list(metrics["per_corruption"].values())))
    assert metrics["error_ratio"] == pytest.approx((1 - metrics["corrupted"]) / (1 - metrics["clean_accuracy"]))
    assert rows == [("clean", metrics["clean_accuracy"]), *metrics["per_corruption"].items()]
    with Image.open(figure) as image:  # one column per corruption and the clean images, one row per example
        assert image.format == "PNG"
        assert image.size == (8 + 16 * (4 * 28 + 8), 34 + 2 * (4 * 28 + 8))


def test_byte_identical_whatever_the_sharding_and_batch_size(default_run, trained_run, sharded_dir, workdir):
    """The same test images as shards of 66 and 34 and in batches of 7: the same bytes in every output."""
    write_params(workdir, robustness__batch_size=7)
    again = run_in(workdir, trained_run["model"], sharded_dir / "test")
    assert again[:2] == default_run[:2]
    assert again[2].read_bytes() == default_run[2].read_bytes()


def test_the_params_choose_the_corruptions_the_draws_and_the_examples(default_run, trained_run, workdir):
    """Three corruptions and one example: their accuracies as with all 15 (each has its own draws), a figure of
    four columns and one row. Another seed: other draws, so other images in the figure."""
    test = trained_run["processed"] / "test"
    write_params(workdir, robustness__corruptions=["fog", "stripe", "shot_noise"], robustness__examples=1)
    metrics, rows, figure = run_in(workdir, trained_run["model"], test)
    assert metrics["per_corruption"] == {name: default_run[0]["per_corruption"][name]
                                         for name in ("fog", "stripe", "shot_noise")}
    assert [name for name, _ in rows] == ["clean", "fog", "stripe", "shot_noise"]
    with Image.open(figure) as image:
        assert image.size == (8 + 4 * (4 * 28 + 8), 34 + 1 * (4 * 28 + 8))
    write_params(workdir, robustness__seed=1)
    assert run_in(workdir, trained_run["model"], test)[2].read_bytes() != default_run[2].read_bytes()


@pytest.fixture
def colour_model_and_test(workdir):
    """A split of 20 RGB images of 32x32 and an untrained model that takes them."""
    import keras

    from mnist_cnn.model_files import save_model
    x, y = digit_images(20, seed=5)
    rgb = np.stack([x, 255 - x, x // 2], axis=-1)[:, 2:30, 2:30].repeat(2, axis=1).repeat(2, axis=2)[:, :32, :32]
    write_split(workdir / "test", rgb, y, np.array([str(d) for d in range(10)]), 64)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    save_model(model, workdir / "rgb.keras")
    return workdir / "rgb.keras", workdir / "test"


def test_colour_images_skip_what_does_not_fit_in_one_line(colour_model_and_test, workdir, capsys):
    metrics, rows, _ = run_in(workdir, *colour_model_and_test)
    assert list(metrics["per_corruption"]) == [name for name in NAMES if name != "canny_edges"]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("robustness: canny_edges skipped: it keeps only the edges")
    assert len(lines) == 2 and lines[1].startswith("robustness: clean accuracy ")


def test_no_corruption_that_fits_is_one_line(colour_model_and_test, workdir):
    write_params(workdir, robustness__corruptions=["canny_edges"])
    with pytest.raises(UserError, match=r"^params.yaml: robustness.corruptions = \['canny_edges'\] holds none that "
                                        r"fits the images of .*test: add others"):
        run_in(workdir, *colour_model_and_test)
    assert not (workdir / "robustness.json").exists()
