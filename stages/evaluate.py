"""Stage evaluate: score the trained model on the test set, streamed shard by shard.

Writes the metrics (test accuracy and loss, and how well calibrated the probabilities are: ECE, Brier
score, NLL; the numbers `dvc exp show` compares runs by), the predictions (actual and predicted class of
every test image, for DVC's confusion-matrix template), the per-class table (precision, recall and F1 of
each class) and the reliability table (accuracy and mean confidence per confidence bin): DVC plots, not
metrics, so that `dvc exp show` stays one screen wide. dvc.yaml always names the tables; benchmarks that
need only the metrics leave them out.
"""
import argparse
import csv

from mnist_cnn.runner import quiet_tensorflow, run

quiet_tensorflow()  # before keras, so TensorFlow starts without its log lines
import keras  # noqa: E402
import numpy as np  # noqa: E402

from mnist_cnn.calibration import calibration, reliability  # noqa: E402
from mnist_cnn.errors import UserError  # noqa: E402
from mnist_cnn.files import atomic_path, write_json  # noqa: E402
from mnist_cnn.model_files import check_fits, load_model  # noqa: E402
from mnist_cnn.params import load_params  # noqa: E402
from mnist_cnn.prepare import one_hot  # noqa: E402
from mnist_cnn.shards import open_split, read_labels  # noqa: E402
from mnist_cnn.streaming import stream  # noqa: E402


def class_report(y_true, y_pred, class_names):
    """Rows of (class, precision, recall, F1), one per class in the dataset's order."""
    classes = len(class_names)
    confusion = np.bincount(np.asarray(y_true) * classes + np.asarray(y_pred), minlength=classes * classes)
    confusion = confusion.reshape(classes, classes)  # rows: true class, columns: predicted
    right, predicted, actual = np.diag(confusion), confusion.sum(axis=0), confusion.sum(axis=1)

    def ratio(count, total):  # 0 where a class has no image to count (never predicted, or never true)
        return np.divide(count, total, out=np.zeros(classes), where=total > 0)

    # F1 as 2 TP / (2 TP + FP + FN), scikit-learn's formula, to the bit
    precision, recall, f1 = ratio(right, predicted), ratio(right, actual), ratio(2 * right, actual + predicted)
    return [(name, float(p), float(r), float(f)) for name, p, r, f in zip(class_names, precision, recall, f1)]


def write_csv(path, header, rows):
    """A CSV file with a header row, written atomically with Unix line ends on every platform."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the trained model (.keras)")
    parser.add_argument("test", help="test split (a shard folder from preprocess)")
    parser.add_argument("metrics", help="where to write the metrics (.json)")
    parser.add_argument("predictions", help="where to write actual/predicted labels (.csv)")
    parser.add_argument("classes", nargs="?", help="where to write per-class precision, recall and F1 (.csv)")
    parser.add_argument("reliability", nargs="?", help="where to write accuracy and confidence per confidence bin "
                                                       "(.csv)")
    args = parser.parse_args(argv)
    params = load_params()

    model = load_model(args.model)
    test = open_split(args.test)
    check_fits(model, args.model, test)
    y_test, class_names = read_labels(test), list(test.class_names)

    # streamed shard by shard: memory is bounded by a shard, whatever the size of the test set
    probabilities = model.predict(stream(test, params["evaluate"]["batch_size"], labels=False), verbose=0)
    if not np.isfinite(probabilities).all():
        raise UserError(f"{args.model} gives NaN or infinite probabilities (its weights are broken): "
                        f"run `dvc repro --force train` to retrain it")
    y_pred = probabilities.argmax(axis=1)
    loss = keras.losses.categorical_crossentropy(one_hot(y_test, len(class_names)), probabilities)
    metrics = {
        "accuracy": float(np.mean(y_pred == y_test)),
        "loss": float(np.mean(keras.ops.convert_to_numpy(loss))),
        **calibration(probabilities, y_test),
    }
    write_json(args.metrics, metrics)
    write_csv(args.predictions, ["actual", "predicted"],
              ((class_names[t], class_names[p]) for t, p in zip(y_test, y_pred)))
    if args.classes:
        write_csv(args.classes, ["class", "precision", "recall", "f1"], class_report(y_test, y_pred, class_names))
    if args.reliability:
        write_csv(args.reliability, ["bin", "confidence", "accuracy", "images"], reliability(probabilities, y_test))
    print(f"evaluate: test accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}, ECE {metrics['ece']:.4f} "
          f"on {len(y_test)} images")


if __name__ == "__main__":
    run(main)
