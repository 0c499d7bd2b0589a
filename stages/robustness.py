"""Stage robustness: the model's accuracy on the test set under MNIST-C's corruptions, streamed block by block.

Writes the metrics (clean accuracy, the accuracy under each corruption, their mean and the mean error
relative to the clean one: `dvc metrics diff` and `dvc exp show` compare runs by them), the accuracy per
corruption as a table (a DVC plot: `dvc plots diff` draws it as bars) and a figure of the first test
images under each corruption. The corruptions and their parameters: mnist_cnn/corruptions.py.
"""
import argparse
import csv

from mnist_cnn.runner import quiet_tensorflow, run

quiet_tensorflow()  # before keras, so TensorFlow starts without its log lines
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from mnist_cnn.corruptions import accuracy_under_corruptions  # noqa: E402
from mnist_cnn.errors import UserError  # noqa: E402
from mnist_cnn.files import atomic_path, write_json  # noqa: E402
from mnist_cnn.model_files import check_fits, load_model  # noqa: E402
from mnist_cnn.params import load_params  # noqa: E402
from mnist_cnn.shards import open_split  # noqa: E402

CELL = 112  # pixels each example image is drawn across, about (a whole multiple of its size)
GAP, HEADER = 8, 34  # pixels between images; above them, for each column's name and accuracy


def batched(model, batch_size):
    """images -> class probabilities, batch_size images at a time: memory bounded by a batch."""
    def predict(images):
        return np.concatenate([model.predict_on_batch(images[start:start + batch_size])
                               for start in range(0, len(images), batch_size)])
    return predict


def summary(accuracies, images):
    """The metrics: clean accuracy, the mean accuracy over the corruptions (`corrupted`), the mean error under
    corruption relative to the clean error (`error_ratio`; a clean error of 0 counts as one image, so the ratio
    stays finite), and each corruption's accuracy."""
    corrupted = {name: value for name, value in accuracies.items() if name != "clean"}
    mean = sum(corrupted.values()) / len(corrupted)
    clean_error = max(1 - accuracies["clean"], 1 / images)
    return {"clean_accuracy": accuracies["clean"], "corrupted": mean, "error_ratio": (1 - mean) / clean_error,
            "per_corruption": corrupted}


def write_table(path, accuracies):
    """The accuracy clean and under each corruption, one row each, for DVC's bar chart."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["corruption", "accuracy"])
            writer.writerows(accuracies.items())


def examples_figure(shown, accuracies, path):
    """One column per corruption (the clean images first), one row per example image, each column headed by
    its name and accuracy: drawn with Pillow, a pixel of an image as a square of pixels."""
    names, (rows, height, width) = list(shown), shown["clean"].shape[:3]
    zoom = max(1, round(CELL / max(height, width)))
    cell_width, cell_height = width * zoom, height * zoom
    canvas = Image.new("RGB", (GAP + len(names) * (cell_width + GAP), HEADER + rows * (cell_height + GAP)), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default(size=12)
    for column, name in enumerate(names):
        left = GAP + column * (cell_width + GAP)
        draw.multiline_text((left + cell_width // 2, 4), f"{name}\n{accuracies[name]:.3f}", fill="black", font=font,
                            anchor="ma", align="center")
        for row, image in enumerate(shown[name]):
            top = HEADER + row * (cell_height + GAP)
            picture = Image.fromarray(image.squeeze(axis=-1) if image.shape[-1] == 1 else image).convert("RGB")
            canvas.paste(picture.resize((cell_width, cell_height), Image.Resampling.NEAREST), (left, top))
            # a grey frame, so that an image's white edge (stripe's) does not melt into the page
            draw.rectangle((left - 1, top - 1, left + cell_width, top + cell_height), outline="grey")
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the trained model (.keras)")
    parser.add_argument("test", help="test split (a shard folder from preprocess)")
    parser.add_argument("metrics", help="where to write the metrics (.json)")
    parser.add_argument("table", help="where to write the accuracy per corruption (.csv)")
    parser.add_argument("figure", help="where to draw the test images under each corruption (.png)")
    args = parser.parse_args(argv)
    robustness = load_params()["robustness"]

    model = load_model(args.model)
    test = open_split(args.test)
    check_fits(model, args.model, test)

    accuracies, skipped, shown = accuracy_under_corruptions(
        batched(model, robustness["batch_size"]), args.test, robustness["corruptions"], robustness["seed"],
        robustness["examples"])
    for name, reason in skipped.items():
        print(f"robustness: {name} skipped: {reason}")
    if len(accuracies) == 1:
        raise UserError(f"params.yaml: robustness.corruptions = {robustness['corruptions']} holds none that fits "
                        f"the images of {args.test}: add others (docs/robustness.md lists them)")
    metrics = summary(accuracies, test.images)
    write_json(args.metrics, metrics)
    write_table(args.table, accuracies)
    examples_figure(shown, accuracies, args.figure)
    print(f"robustness: clean accuracy {metrics['clean_accuracy']:.4f}, {metrics['corrupted']:.4f} on average under "
          f"{len(accuracies) - 1} corruptions (error x{metrics['error_ratio']:.1f}), {test.images} images")


if __name__ == "__main__":
    run(main)
