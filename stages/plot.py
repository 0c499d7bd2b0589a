"""Stage plot: the notebook's figures as PNG files.

samples.png           the first training images with their labels (5 x 5 by default)
training_curves.png   accuracy and loss per epoch, train vs validation, side by side
confusion_matrix.png  test-set confusion matrix with counts in the cells
misclassified.png     test images the model got wrong, with true and predicted labels
"""
import argparse
import csv
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mnist_cnn.errors import UserError  # noqa: E402
from mnist_cnn.files import atomic_path, load_npz  # noqa: E402
from mnist_cnn.params import load_params  # noqa: E402
from mnist_cnn.runner import run  # noqa: E402
from mnist_cnn.shards import open_split, read_shard  # noqa: E402

# PNG metadata without a version string, so the bytes do not change with matplotlib's patch level
PNG_METADATA = {"Software": None}


def save(fig, path, dpi):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", metadata=PNG_METADATA)
    plt.close(fig)


def image_grid(images, titles, title):
    """A square-ish grid of grayscale images with a caption under each."""
    columns = max(1, math.ceil(math.sqrt(len(images))))
    rows = max(1, math.ceil(len(images) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.8 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, titles):
        ax.imshow(image.squeeze(), cmap="binary")
        ax.set_title(caption, fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def read_history(log_dir, split, metric):
    """(steps, values) from DVCLive's per-epoch TSV file."""
    path = os.path.join(log_dir, "plots", "metrics", split, f"{metric}.tsv")
    if not os.path.exists(path):
        raise UserError(f"{path} not found: run `dvc repro train` to log the training history")
    with open(path) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [int(r["step"]) + 1 for r in rows], [float(r[metric]) for r in rows]


def training_curves(history):
    """history: {(split, metric): (epochs, values)} for split train/eval and metric accuracy/loss."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric in zip(axes, ("accuracy", "loss")):
        for split, label in (("train", "train"), ("eval", "validation")):
            epochs, values = history[split, metric]
            ax.plot(epochs, values, marker="o", label=label)
        ax.set_title(f"Model {metric}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def read_images(split, indices):
    """The images at the given positions of a split (in the order given), reading only the shards that hold them."""
    images, start = {}, 0
    for path, size in zip(split.files, split.sizes):
        wanted = [i for i in indices if start <= i < start + size]
        if wanted:
            x = read_shard(split, path)[0]
            images.update((i, x[i - start]) for i in wanted)
        start += size
    return [images[i] for i in indices]


def read_predictions(path):
    if not os.path.exists(path):
        raise UserError(f"{path} not found: run `dvc repro evaluate`")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [r["actual"] for r in rows], [r["predicted"] for r in rows]


def confusion_matrix(actual, predicted, class_names):
    """Counts per (true, predicted) class, drawn as scikit-learn's ConfusionMatrixDisplay draws them (the same
    figure, without importing scikit-learn: a second of the stage's start-up)."""
    index = {name: i for i, name in enumerate(class_names)}
    counts = np.zeros((len(class_names), len(class_names)), np.int64)
    np.add.at(counts, ([index[a] for a in actual], [index[p] for p in predicted]), 1)
    size = max(6, 0.6 * len(class_names))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(counts, interpolation="nearest", cmap="Blues")
    light, dark = image.cmap(0), image.cmap(1.0)
    middle = (counts.max() + counts.min()) / 2.0
    for (row, column), count in np.ndenumerate(counts):  # dark text on light cells, light on dark
        ax.text(column, row, min(format(count, ".2g"), format(count, "d"), key=len), ha="center", va="center",
                color=dark if count < middle else light)
    ticks = np.arange(len(class_names))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=class_names, yticklabels=class_names, ylabel="True label",
           xlabel="Predicted label")
    ax.set_ylim((len(class_names) - 0.5, -0.5))
    plt.setp(ax.get_xticklabels(), rotation=45)
    ax.set_title(f"Confusion matrix, test set ({len(actual)} images)")
    fig.tight_layout()
    return fig


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", help="the download stage's .npz (for the first training images)")
    parser.add_argument("test", help="test split (a shard folder from preprocess)")
    parser.add_argument("log_dir", help="the train stage's DVCLive folder")
    parser.add_argument("predictions", help="the evaluate stage's predictions (.csv)")
    parser.add_argument("output_dir", help="folder for the PNG files")
    args = parser.parse_args(argv)
    params = load_params()["plot"]
    dpi = params["dpi"]

    # Read every input before writing anything, so a missing one leaves no partial set of figures.
    raw = load_npz(args.raw, "dvc repro download")
    class_names = [str(c) for c in raw["class_names"]]
    history = {(split, metric): read_history(args.log_dir, split, metric)
               for split in ("train", "eval") for metric in ("accuracy", "loss")}
    actual, predicted = read_predictions(args.predictions)
    test = open_split(args.test)
    if test.images != len(actual):
        raise UserError(f"{args.predictions} has {len(actual)} rows for {test.images} test images: "
                               f"run `dvc repro` to bring them in step")
    unknown = sorted(set(actual + predicted) - set(class_names))
    if unknown:
        raise UserError(f"{args.predictions} names classes the dataset does not have ({', '.join(unknown[:3])}): "
                        f"run `dvc repro` to bring them in step")

    count = params["samples"]
    save(image_grid(raw["x_train"][:count], [class_names[y] for y in raw["y_train"][:count]],
                    f"First {count} training images"),
         os.path.join(args.output_dir, "samples.png"), dpi)
    save(training_curves(history), os.path.join(args.output_dir, "training_curves.png"), dpi)
    save(confusion_matrix(actual, predicted, class_names), os.path.join(args.output_dir, "confusion_matrix.png"),
         dpi)
    wrong = [i for i, (a, p) in enumerate(zip(actual, predicted)) if a != p][: params["misclassified"]]
    title = f"Misclassified test images (first {len(wrong)}, true -> predicted)" if wrong else "No errors"
    save(image_grid(read_images(test, wrong), [f"{actual[i]} -> {predicted[i]}" for i in wrong], title),
         os.path.join(args.output_dir, "misclassified.png"), dpi)
    print(f"plot: wrote 4 figures to {args.output_dir}/")


if __name__ == "__main__":
    run(main)
