"""Stage train: build the notebook's CNN from model.* params and fit it, validating on the held-out split.

A split of one shard (MNIST's) is read whole and shuffled whole each epoch, as the notebook's fit()
did; a larger one is streamed shard by shard through a shuffle buffer (mnist_cnn/streaming.py).
With train.distribute: multi_worker, several processes train one model (mnist_cnn/multi_worker.py).
Logs accuracy and loss per epoch for train and validation with DVCLive, and saves the model in
the native Keras format. The test set is never read here.
"""
import argparse
import math
import os
import sys
import tempfile
import time

from mnist_cnn.runner import deferred_interrupts, quiet_tensorflow, run, stop_if_interrupted

tf = quiet_tensorflow()
import keras  # noqa: E402
from dvclive import Live  # noqa: E402
from dvclive.keras import DVCLiveCallback  # noqa: E402

from mnist_cnn import multi_worker  # noqa: E402
from mnist_cnn.errors import UserError  # noqa: E402
from mnist_cnn.files import atomic_dir, write_json  # noqa: E402
from mnist_cnn.machine import cpu_has_bf16  # noqa: E402
from mnist_cnn.model_files import save_model  # noqa: E402
from mnist_cnn.network import AugmentationOff, augments, build_model, inference_model  # noqa: E402
from mnist_cnn.params import load_params  # noqa: E402
from mnist_cnn.prepare import one_hot, scale  # noqa: E402
from mnist_cnn.shards import open_split, read_all  # noqa: E402
from mnist_cnn.streaming import stream  # noqa: E402

DIVERGED_FACTOR = 3  # times ln K, the loss of a uniform guess over K classes


class StopOnDivergence(keras.callbacks.Callback):
    """A run that diverges ends the stage with one line, before a broken model is saved.

    Diverged: a loss that turns NaN or infinite (float32 overflows), or an epoch's mean training loss over
    DIVERGED_FACTOR * ln K. An untrained network's softmax is near uniform, so training starts at about
    ln K and a run that learns goes down from there; in bfloat16 the exploded weights keep a finite loss
    (1e30 and more) and a chance-level model would otherwise be saved as a success. The validation loss
    is only checked for NaN: a model overfitting a small dataset can score far above ln K on it.
    """

    def __init__(self, num_classes):
        super().__init__()
        self.uniform_loss = math.log(num_classes)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        for key, name in (("loss", "training loss"), ("val_loss", "validation loss")):
            value = logs.get(key)
            if value is None:
                continue
            value = float(value)
            if not math.isfinite(value):
                self.diverged(epoch, f"the {name} became {value}")
            if key == "loss" and value > DIVERGED_FACTOR * self.uniform_loss:
                self.diverged(epoch, f"the training loss reached {value:.4g}, over {DIVERGED_FACTOR} times the "
                                     f"{self.uniform_loss:.3f} of a uniform guess")

    @staticmethod
    def diverged(epoch, what):
        raise UserError(f"training diverged in epoch {epoch + 1}: {what}; no model was saved. Lower "
                        f"train.learning_rate (or use train.schedule: cosine with a warm-up) and run again")


class StopOnSignal(keras.callbacks.Callback):
    """Ctrl-C and SIGTERM stop training at the next step: during fit the runner only records them
    (deferred_interrupts), and this raises them between steps, where nothing of TensorFlow's is half done
    (mnist_cnn/runner.py)."""

    def on_train_batch_end(self, batch, logs=None):
        stop_if_interrupted()

    def on_test_batch_end(self, batch, logs=None):
        stop_if_interrupted()


def resolve_precision(choice):
    """train.precision -> a Keras dtype policy. auto: mixed_float16 on a GPU, mixed_bfloat16 on a CPU
    with native bfloat16, float32 elsewhere (bfloat16 emulated in software is slower than float32)."""
    if choice != "auto":
        return choice
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_has_bf16() else "float32"


def learning_rate(train, steps_per_epoch):
    """Adam's learning rate: constant, or cosine decay to 0 after a linear warm-up from 0 (one cycle)."""
    peak = float(train["learning_rate"])  # Keras refuses an int (`-S train.learning_rate=1` gives one)
    if train["schedule"] == "constant":
        return peak
    steps = train["epochs"] * steps_per_epoch
    warmup = int(train["warmup"] * steps)
    if not warmup:
        return keras.optimizers.schedules.CosineDecay(peak, steps)
    return keras.optimizers.schedules.CosineDecay(0.0, steps - warmup, warmup_target=peak,
                                                  warmup_steps=warmup)


def set_threads(threads):
    """Fix TensorFlow's CPU thread pools: float results depend on how work is split across threads."""
    if threads and tf.config.threading.get_intra_op_parallelism_threads() != threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def distribution_strategy(train, workers=None):
    """The tf.distribute strategy for train.distribute; the global batch is split across its replicas.
    workers: (index, count) of this worker under multi_worker (multi_worker.cluster())."""
    choice = train["distribute"]
    if choice == "multi_worker":  # created before any other TensorFlow op, as the strategy requires
        return multi_worker.strategy(train["worker_timeout"], workers)
    gpus = tf.config.list_logical_devices("GPU")
    if choice == "auto":
        choice = "mirrored" if len(gpus) > 1 else "none"
    if choice == "none":
        return tf.distribute.get_strategy()  # one device: TensorFlow's default placement
    if choice == "mirrored":  # every local GPU, else every logical CPU device
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    raise ValueError(f"unknown train.distribute {choice!r}")  # params.py allows no other


def seed_everything(seed):
    """Seed Python, NumPy and TensorFlow, and make TensorFlow's ops deterministic."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def training_data(train_split, val_split, train, seed):
    """fit()'s data arguments: arrays for a split of one shard (the notebook's fit, shuffled whole each epoch),
    a tf.data stream for a larger one (a shuffle buffer of train.shuffle_buffer images)."""
    num_classes = len(train_split.class_names)
    if len(train_split.files) == 1:
        x, labels = read_all(train_split)
        data = {"x": scale(x), "y": one_hot(labels, num_classes), "batch_size": train["batch_size"], "shuffle": True}
        print(f"train: {train_split.images} training images in memory")
    else:
        data = {"x": stream(train_split, train["batch_size"], shuffle_buffer=train["shuffle_buffer"], seed=seed),
                "shuffle": False}  # the stream shuffles itself (fit's default would warn on stderr that it can't)
        print(f"train: {train_split.images} training images streamed from {len(train_split.files)} shards, "
              f"shuffled through a buffer of {train['shuffle_buffer']}")
    if len(val_split.files) == 1:
        x_val, val_labels = read_all(val_split)
        data.update(validation_data=(scale(x_val), one_hot(val_labels, num_classes)),
                    validation_batch_size=train["val_batch_size"])
    else:
        data["validation_data"] = stream(val_split, train["val_batch_size"])
    return data


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train", help="training split (a shard folder from preprocess)")
    parser.add_argument("val", help="validation split (a shard folder from preprocess)")
    parser.add_argument("model", help="where to save the trained model (.keras); classes.json goes beside it")
    parser.add_argument("log_dir", help="DVCLive folder for the per-epoch metrics")
    args = parser.parse_args(argv)
    params = load_params()
    train, augment = params["train"], params["model"]["augment"]
    off = augment["off_last_epochs"] if augments(augment) else 0
    if off >= train["epochs"]:
        raise UserError(f"model.augment.off_last_epochs = {off} leaves no augmented epoch of train.epochs = "
                               f"{train['epochs']}; make it smaller than train.epochs")
    train_split, val_split = open_split(args.train), open_split(args.val)
    class_names = list(train_split.class_names)
    workers = multi_worker.cluster() if train["distribute"] == "multi_worker" else None
    if workers:
        steps_per_epoch = multi_worker.steps_per_epoch(train_split, train["batch_size"], workers[1])
    else:
        steps_per_epoch = math.ceil(train_split.images / train["batch_size"])

    set_threads(train["threads"])
    strategy = distribution_strategy(train, workers)
    seed_everything(params["seed"])
    precision = resolve_precision(train["precision"])
    steps_per_execution = train["steps_per_execution"]
    if strategy.num_replicas_in_sync > 1 and steps_per_execution > 1 and not workers:
        # Keras 3.15's multi-step loop fails under MirroredStrategy ("You must feed a value for
        # placeholder tensor"); one step per call is the same training, only slower
        print(f"train: steps_per_execution {steps_per_execution} -> 1 under {type(strategy).__name__}")
        steps_per_execution = 1
    with strategy.scope():  # variables are created on (mirrored across) the strategy's devices
        try:
            model = build_model(params["model"], train_split.image_shape, len(class_names), precision,
                                steps=train["epochs"] * steps_per_epoch)
        except ValueError as e:  # e.g. too many pooling layers for a 28x28 input
            raise UserError(f"model.* params give an impossible network ({str(e).splitlines()[0]}); "
                                   f"use fewer conv_filters or smaller kernel_size/pool_size")
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate(train, steps_per_epoch))
        if precision == "mixed_float16":  # float16 gradients underflow without loss scaling
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=train["label_smoothing"]),
            metrics=["accuracy"],
            steps_per_execution=steps_per_execution,
        )
    print(f"train: {strategy.num_replicas_in_sync} replica(s), global batch {train['batch_size']}, "
          f"precision {precision}")
    model.summary(print_fn=lambda line, **_: print(line))
    chief = not workers or workers[0] == 0

    # DVCLive logs into a temporary folder that replaces log_dir only when training completes; a worker
    # other than the chief logs into one that is thrown away: worker 0 writes the model and the log
    with atomic_dir(args.log_dir) if chief else tempfile.TemporaryDirectory() as log_dir:
        callbacks = [DVCLiveCallback(live=Live(log_dir, dvcyaml=False, save_dvc_exp=False)),
                     StopOnDivergence(len(class_names)), StopOnSignal()]
        if off:
            callbacks.append(AugmentationOff(train["epochs"] - off))
            print(f"train: augmentation off for the last {off} of {train['epochs']} epochs")
        start = time.perf_counter()
        with deferred_interrupts():  # Ctrl-C stops training between steps (StopOnSignal), never inside TensorFlow
            if workers:
                per_epoch = multi_worker.fit(model, strategy, optimizer, train_split, val_split, train,
                                             params["seed"], callbacks, workers, steps_per_epoch)
            else:
                model.fit(
                    **training_data(train_split, val_split, train, params["seed"]),
                    epochs=train["epochs"],
                    callbacks=callbacks,
                    verbose=1 if sys.stdout.isatty() else 2,
                )
                per_epoch = train_split.images
        seconds = time.perf_counter() - start
        print(f"train: fit took {seconds:.1f} s, {train['epochs'] * per_epoch / seconds:.0f} training images/s "
              f"(validation included)")
        if not chief:
            print(f"train: worker {workers[0]} of {workers[1]} done; worker 0 writes the model and the log")
            return
        save_model(inference_model(model), args.model)  # before the log lands: no log without its model
        write_json(os.path.join(os.path.dirname(args.model), "classes.json"), class_names)
    print(f"train: saved {args.model} ({os.path.getsize(args.model) / 1e6:.1f} MB)")


if __name__ == "__main__":
    run(main)
