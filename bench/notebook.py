"""The original notebook's experiment, verbatim in spirit: the baseline the pipeline is measured against.

Usage: python bench/notebook.py [--epochs N] [--mnist PATH] [--seed S] [--precision POLICY] [--figures DIR]
Loads MNIST from a local mnist.npz (Keras layout) instead of the network. With --figures it also
draws the notebook's figures (first 25 training images, accuracy and loss curves side by side, the
test set's confusion matrix) into DIR, as bench/speed.py does to time the whole notebook. It uses Keras alone, so
it also runs on another backend: KERAS_BACKEND=jax python bench/notebook.py (the GPU figures in
bench/results/gpu.json). --seed and --precision are off by default, as in the notebook.
"""
import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--mnist", default="../shared/datasets/mnist.npz")
parser.add_argument("--seed", type=int, default=None, help="seed Keras' random generators")
parser.add_argument("--precision", default="float32", help="Keras dtype policy, e.g. mixed_float16")
parser.add_argument("--figures", help="folder for the notebook's figures (PNG); none by default")
args = parser.parse_args()
if args.seed is not None:
    keras.utils.set_random_seed(args.seed)
keras.mixed_precision.set_global_policy(args.precision)

with np.load(args.mnist) as f:
    x_train, y_train, x_test, y_test = f["x_train"], f["y_train"], f["x_test"], f["y_test"]
if args.figures:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay
    os.makedirs(args.figures, exist_ok=True)
    fig, axes = plt.subplots(5, 5, figsize=(8, 8))
    for i, ax in enumerate(axes.flat):
        ax.imshow(x_train[i], cmap="binary")
        ax.set_title(f"Label: {y_train[i]}")
        ax.axis("off")
    fig.savefig(os.path.join(args.figures, "samples.png"))
x_train = x_train.reshape(-1, 28, 28, 1).astype("float32") / 255
x_test = x_test.reshape(-1, 28, 28, 1).astype("float32") / 255
y_train = keras.utils.to_categorical(y_train, 10)
y_test = keras.utils.to_categorical(y_test, 10)

model = keras.Sequential([
    keras.Input(shape=(28, 28, 1)),
    layers.Conv2D(32, (3, 3), activation="relu"),
    layers.MaxPooling2D((2, 2)),
    layers.Conv2D(64, (3, 3), activation="relu"),
    layers.MaxPooling2D((2, 2)),
    layers.Dropout(0.25),
    layers.Flatten(),
    layers.Dense(128, activation="relu"),
    layers.Dropout(0.5),
    layers.Dense(10, activation="softmax"),
])
model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
start = time.perf_counter()
history = model.fit(x_train, y_train, epochs=args.epochs, batch_size=64, validation_split=0.2, verbose=2)
train_s = time.perf_counter() - start
loss, acc = model.evaluate(x_test, y_test, verbose=0)
if args.figures:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, metric in zip(axes, ("accuracy", "loss")):
        ax.plot(history.history[metric], label="train")
        ax.plot(history.history[f"val_{metric}"], label="validation")
        ax.set_title(metric)
        ax.legend()
    fig.savefig(os.path.join(args.figures, "training_curves.png"))
    predicted = model.predict(x_test, verbose=0).argmax(axis=1)
    ConfusionMatrixDisplay.from_predictions(y_test.argmax(axis=1), predicted).figure_.savefig(
        os.path.join(args.figures, "confusion_matrix.png"))
print(json.dumps({"backend": keras.backend.backend(), "precision": args.precision, "epochs": args.epochs,
                  "train_seconds": round(train_s, 2), "test_accuracy": acc, "test_loss": loss}))
