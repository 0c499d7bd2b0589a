"""The evaluate stage: test-set metrics, predictions for the confusion template, the per-class and reliability
tables."""
import csv
import json

import numpy as np
import pytest

from conftest import write_params
from mnist_cnn.errors import UserError
from mnist_cnn.files import write_json
from mnist_cnn.shards import open_split, read_all, read_labels, write_split


def test_metrics_are_test_accuracy_loss_and_calibration(trained_run):
    """The numbers `dvc exp show` compares runs by; the per-class detail is a plot (docs/pipeline.md). The NLL is
    the loss without Keras' clipping of the probabilities to [1e-7, 1 - 1e-7], which this model never reaches."""
    metrics = json.loads(trained_run["metrics"].read_text())
    assert list(metrics) == ["accuracy", "loss", "ece", "brier", "nll"]
    assert 0.5 < metrics["accuracy"] <= 1 and metrics["loss"] > 0
    assert 0 < metrics["ece"] < 1 and 0 < metrics["brier"] < 2
    assert metrics["nll"] == pytest.approx(metrics["loss"], rel=1e-5)


def test_loss_and_accuracy_against_numpy(trained_run):
    """The model's probabilities for the test images, scored in NumPy: the mean of -log p(true class) (Keras
    clips p at 1e-7) and the share of images whose most probable class is the true one."""
    from mnist_cnn.model_files import load_model
    x, y = read_all(open_split(trained_run["processed"] / "test"))
    probabilities = load_model(trained_run["model"]).predict(x.astype(np.float32) / 255, verbose=0)
    metrics = json.loads(trained_run["metrics"].read_text())
    true_class = probabilities[np.arange(len(y)), y]
    assert metrics["loss"] == pytest.approx(-np.mean(np.log(np.clip(true_class, 1e-7, 1))), rel=1e-4)
    assert metrics["accuracy"] == np.mean(probabilities.argmax(axis=1) == y)


def test_class_report_against_a_hand_made_confusion():
    """Class b is predicted 3 times, right twice (precision 2/3), and is 2 of the 4 true b's (recall 1/2);
    class c is never predicted: precision 0, not a division by zero."""
    from stages.evaluate import class_report
    y_true = np.array([0, 0, 1, 1, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0, 0, 0])
    rows = class_report(y_true, y_pred, ["a", "b", "c"])
    expected = [("a", 1 / 4, 1 / 2, 1 / 3), ("b", 2 / 3, 1 / 2, 4 / 7), ("c", 0.0, 0.0, 0.0)]
    assert [name for name, *_ in rows] == ["a", "b", "c"]
    np.testing.assert_allclose([values for _, *values in rows], [values for _, *values in expected], atol=1e-12)


def test_class_report_counts_a_class_seen_once_and_predicted_once():
    """Class b has one image, predicted right, and is predicted nowhere else: precision and recall 1/1, not the 0
    of a class with no image (a ratio taken only over counts above one would give 0)."""
    from stages.evaluate import class_report
    rows = class_report(np.array([0, 0, 1]), np.array([0, 0, 1]), ["a", "b"])
    np.testing.assert_allclose([values for _, *values in rows], [[1, 1, 1], [1, 1, 1]], atol=1e-12)


def test_class_report_gives_0_to_a_class_never_predicted_whatever_the_memory_held():
    """The ratio's 0 where a class has no image comes from an array of zeros, not from whatever memory NumPy hands
    out: NumPy keeps freed small buffers and gives them to the next arrays of their size, so arrays of NaN freed just
    before leave NaN wherever a result is not written (as an output left to np.divide would)."""
    from stages.evaluate import class_report
    freed = [np.full(3, np.nan) for _ in range(16)]  # each 24 bytes, the size of one float per class
    del freed
    rows = class_report(np.array([0, 0, 1, 1, 2]), np.array([0, 0, 1, 0, 0]), ["a", "b", "c"])
    np.testing.assert_allclose([values for _, *values in rows], [[1 / 2, 1, 2 / 3], [1, 1 / 2, 2 / 3], [0, 0, 0]],
                               atol=1e-12)


def test_class_report_has_a_row_for_each_class_even_one_never_seen_and_warns_nothing():
    """Class b is neither a true label nor a prediction, d is a true label never predicted: each keeps its row, in
    order, with 0 where the ratio has no images (no warning on the stage's stderr)."""
    import warnings

    from stages.evaluate import class_report
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = class_report(np.array([0, 0, 2, 2, 3]), np.array([0, 2, 2, 2, 0]), ["a", "b", "c", "d"])
    assert [name for name, *_ in rows] == ["a", "b", "c", "d"]
    np.testing.assert_allclose([values for _, *values in rows],
                               [[1 / 2, 1 / 2, 1 / 2], [0, 0, 0], [2 / 3, 1, 4 / 5], [0, 0, 0]], atol=1e-12)


def test_class_table_agrees_with_the_predictions(trained_run, workdir):
    """metrics/classes.csv, checked against precision and recall counted from predictions.csv."""
    evaluate_in(workdir, trained_run["model"], trained_run["processed"] / "test", classes=True)
    with open(workdir / "c.csv") as f:
        table = list(csv.reader(f))
    with open(workdir / "p.csv") as f:
        pairs = [(row["actual"], row["predicted"]) for row in csv.DictReader(f)]
    assert table[0] == ["class", "precision", "recall", "f1"]
    assert [row[0] for row in table[1:]] == [str(d) for d in range(10)]
    for name, precision, recall, f1 in table[1:]:
        hits = sum(actual == predicted == name for actual, predicted in pairs)
        predicted = sum(p == name for _, p in pairs)
        actual = sum(a == name for a, _ in pairs)
        assert float(precision) == pytest.approx(hits / predicted if predicted else 0.0), name
        assert float(recall) == pytest.approx(hits / actual), name
        assert float(f1) == pytest.approx(2 * hits / (predicted + actual)), name
    assert json.loads((workdir / "m.json").read_text()) == json.loads(trained_run["metrics"].read_text())


def test_reliability_table_agrees_with_the_predictions_and_the_ece(trained_run, workdir):
    """metrics/reliability.csv: 15 bins of confidence, those that hold images; their counts and accuracies add up
    to predictions.csv's, and the ECE is their weighted gap between accuracy and confidence."""
    evaluate_in(workdir, trained_run["model"], trained_run["processed"] / "test", classes=True)
    with open(workdir / "r.csv") as f:
        rows = [{key: float(value) for key, value in row.items()} for row in csv.DictReader(f)]
    with open(workdir / "p.csv") as f:
        pairs = [(row["actual"], row["predicted"]) for row in csv.DictReader(f)]
    assert rows and all(row["bin"] * 15 == pytest.approx(round(row["bin"] * 15)) for row in rows)
    assert [row["bin"] for row in rows] == sorted(row["bin"] for row in rows)
    assert all(row["bin"] - 1 / 15 < row["confidence"] <= row["bin"] for row in rows)
    assert sum(row["images"] for row in rows) == len(pairs)
    assert sum(row["images"] * row["accuracy"] for row in rows) == pytest.approx(sum(a == p for a, p in pairs))
    ece = sum(row["images"] * abs(row["accuracy"] - row["confidence"]) for row in rows) / len(pairs)
    assert json.loads((workdir / "m.json").read_text())["ece"] == pytest.approx(ece)


def test_predictions_match_the_test_labels_and_the_accuracy(trained_run):
    with open(trained_run["predictions"]) as f:
        rows = list(csv.DictReader(f))
    labels = read_labels(open_split(trained_run["processed"] / "test"))
    assert [r["actual"] for r in rows] == [str(y) for y in labels]
    accuracy = np.mean([r["actual"] == r["predicted"] for r in rows])
    assert accuracy == json.loads(trained_run["metrics"].read_text())["accuracy"]


def test_missing_model_tells_the_user_to_train(workdir, processed_dir, run_here):
    result = run_here("stages.evaluate", "models/model.keras", processed_dir / "test", "m.json", "p.csv", cwd=workdir)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: models/model.keras not found: run `dvc repro` to train the model"]
    assert not (workdir / "m.json").exists()


def test_a_file_that_is_not_a_model_is_one_line(workdir, processed_dir, run_here):
    (workdir / "model.keras").write_bytes(b"not a model")
    result = run_here("stages.evaluate", "model.keras", processed_dir / "test", "m.json", "p.csv", cwd=workdir)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model.keras is not a Keras model"), lines


def test_stale_model_that_does_not_fit_the_data_is_one_line(trained_run, workdir, run_here):
    x, y = read_all(open_split(trained_run["processed"] / "test"))
    write_split(workdir / "test", x, y, np.array(["a", "b", "c"]), 64)
    result = run_here("stages.evaluate", trained_run["model"], "test", "m.json", "p.csv", cwd=workdir)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not fit test (" in lines[0] and "run `dvc repro`" in lines[0], lines
    assert not (workdir / "m.json").exists()


def evaluate_in(workdir, model, test, classes=False):
    from stages import evaluate
    evaluate.main([str(model), str(test), str(workdir / "m.json"), str(workdir / "p.csv")]
                  + ([str(workdir / "c.csv"), str(workdir / "r.csv")] if classes else []))


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """A model of fixed random weights for the tiny data, saved: it evaluates in a second, without a training."""
    import keras

    from mnist_cnn.model_files import save_model
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax", kernel_initializer="random_normal")])
    path = tmp_path_factory.mktemp("untrained") / "model.keras"
    save_model(model, path)
    return path


def test_metrics_predictions_and_classes_agree_with_the_models_own_outputs(untrained, processed_dir, workdir, capsys):
    """Accuracy, loss, predictions.csv and the class table recomputed by hand from model.predict on the split."""
    from mnist_cnn.model_files import load_model
    from mnist_cnn.prepare import read_split
    write_params(workdir, evaluate__batch_size=7)  # 100 test images: 14 batches and a last one of 2
    evaluate_in(workdir, untrained, processed_dir / "test", classes=True)
    x, y, names = read_split(processed_dir / "test")
    probabilities = load_model(untrained).predict(x, verbose=0).astype(np.float64)
    predicted = probabilities.argmax(axis=1)
    assert 0 < np.mean(predicted == y) < 1  # some right, some wrong
    metrics = json.loads((workdir / "m.json").read_text())
    assert list(metrics) == ["accuracy", "loss", "ece", "brier", "nll"]
    assert metrics["accuracy"] == np.mean(predicted == y)
    assert metrics["loss"] == pytest.approx(np.mean(-np.log(probabilities[np.arange(len(y)), y])), rel=1e-4)
    # Unix line ends on every platform (csv's own are \r\n)
    assert (workdir / "p.csv").read_bytes() == ("actual,predicted\n" + "".join(
        f"{names[a]},{names[b]}\n" for a, b in zip(y, predicted))).encode()
    with open(workdir / "c.csv") as f:
        table = list(csv.reader(f))
    assert table[0] == ["class", "precision", "recall", "f1"] and [row[0] for row in table[1:]] == names
    for k, (_, precision, recall, f1) in enumerate(table[1:]):
        hits, claimed, actual = np.sum((predicted == k) & (y == k)), np.sum(predicted == k), np.sum(y == k)
        assert float(precision) == pytest.approx(hits / claimed if claimed else 0.0)
        assert float(recall) == pytest.approx(hits / actual)
        assert float(f1) == pytest.approx(2 * hits / (claimed + actual))
    assert capsys.readouterr().out == (f"evaluate: test accuracy {metrics['accuracy']:.4f}, "
                                       f"loss {metrics['loss']:.4f}, ECE {metrics['ece']:.4f} on {len(y)} images\n")
    # the calibration metrics and the reliability table, from the same probabilities: bin k of 15 holds the
    # confidences in ((k - 1) / 15, k / 15]
    confidence, right = probabilities.max(axis=1), predicted == y
    bins = np.ceil(confidence * 15).astype(int)
    expected = [(k / 15, confidence[bins == k].mean(), right[bins == k].mean(), np.sum(bins == k))
                for k in range(1, 16) if np.any(bins == k)]
    assert len(expected) > 1  # confidences spread over several bins
    with open(workdir / "r.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["bin", "confidence", "accuracy", "images"]
    assert [int(row[3]) for row in rows[1:]] == [count for *_, count in expected]
    np.testing.assert_allclose([[float(v) for v in row[:3]] for row in rows[1:]], [row[:3] for row in expected],
                               rtol=1e-5)
    ece = sum(count * abs(accuracy - mean) for _, mean, accuracy, count in expected) / len(y)
    brier = np.mean(np.sum((probabilities - np.eye(10)[y]) ** 2, axis=1))
    assert [metrics["ece"], metrics["brier"], metrics["nll"]] == pytest.approx([ece, brier, metrics["loss"]], rel=1e-4)
    assert metrics["ece"] > 0.01 and metrics["brier"] > 0.01  # far from a perfect model's 0: a dropped term shows


def test_help_names_every_file_evaluate_reads_and_writes(capsys):
    """Each argument's line of --help, whose text argparse wraps to the terminal's width."""
    from stages import evaluate
    with pytest.raises(SystemExit, match="^0$"):
        evaluate.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    lines = ["model test metrics predictions [classes] [reliability]",
             "Stage evaluate: score the trained model on the test set, streamed shard by shard.",
             "model the trained model (.keras)", "test test split (a shard folder from preprocess)",
             "metrics where to write the metrics (.json)", "predictions where to write actual/predicted labels (.csv)",
             "classes where to write per-class precision, recall and F1 (.csv)",
             "reliability where to write accuracy and confidence per confidence bin (.csv)"]
    assert [line for line in lines if line not in text] == []


def test_a_model_that_does_not_fit_or_gives_nan_writes_nothing(untrained, processed_dir, workdir):
    from mnist_cnn.model_files import load_model, save_model
    x, y = read_all(open_split(processed_dir / "test"))
    write_split(workdir / "three", x, y % 3, np.array(["a", "b", "c"]), 64)
    with pytest.raises(UserError, match=r"model.keras does not fit .*three \(model \(None, 28, 28, 1\) -> "
                                         r"\(None, 10\), data \(28, 28, 1\) with 3 classes\): run `dvc repro` to "
                                         r"retrain"):
        evaluate_in(workdir, untrained, workdir / "three")
    model = load_model(untrained)
    model.set_weights([np.full_like(w, np.inf) for w in model.get_weights()])
    save_model(model, workdir / "inf.keras")
    with pytest.raises(UserError) as error:
        evaluate_in(workdir, workdir / "inf.keras", processed_dir / "test")
    assert str(error.value) == (f"{workdir / 'inf.keras'} gives NaN or infinite probabilities (its weights are "
                                f"broken): run `dvc repro --force train` to retrain it")
    assert not (workdir / "m.json").exists() and not (workdir / "p.csv").exists()


def test_a_model_with_broken_weights_writes_no_metrics(trained_run, workdir):
    """NaN weights give NaN probabilities: metrics/evaluate.json would hold NaN, which is not JSON."""
    from mnist_cnn.model_files import load_model, save_model
    model = load_model(trained_run["model"])
    model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])
    save_model(model, workdir / "nan.keras")
    with pytest.raises(UserError, match=r"nan.keras gives NaN or infinite probabilities \(its weights are broken\)"):
        evaluate_in(workdir, workdir / "nan.keras", trained_run["processed"] / "test")
    assert not (workdir / "m.json").exists()


def test_models_safe_mode_refuses_or_that_take_no_images_are_one_line(trained_run, workdir):
    import keras
    test = trained_run["processed"] / "test"
    lambda_model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Lambda(lambda x: x), keras.layers.Flatten(),
                                     keras.layers.Dense(10, activation="softmax")])
    lambda_model.save(workdir / "lambda.keras")
    with pytest.raises(UserError, match="lambda.keras is not a Keras model"):
        evaluate_in(workdir, workdir / "lambda.keras", test)
    flat = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10, activation="softmax")])
    flat.save(workdir / "flat.keras")
    with pytest.raises(UserError, match=r"flat.keras takes inputs of shape \(None, 784\), not images"):
        evaluate_in(workdir, workdir / "flat.keras", test)


def test_metrics_files_are_strict_json(trained_run, tmp_path):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    json.loads(trained_run["metrics"].read_text(), parse_constant=refuse)
    with pytest.raises(ValueError):
        write_json(tmp_path / "m.json", {"loss": float("nan")})  # never written as NaN
    assert not (tmp_path / "m.json").exists()
