"""Stage train: build the notebook's CNN from model.* params and fit it, validating on the held-out split.

Logs accuracy and loss per epoch for train and validation with DVCLive, and saves the model in
the native Keras format. The test set is never read here.
"""
import argparse
import json
import os
import sys
import zipfile

import common

tf = common.quiet_tensorflow()
import keras  # noqa: E402
from dvclive import Live  # noqa: E402
from dvclive.keras import DVCLiveCallback  # noqa: E402
from keras import layers  # noqa: E402


def build_model(model_params, input_shape, num_classes):
    """Conv-pool blocks, dropout, dense layers with dropout, softmax: the notebook's net by default."""
    stack = [keras.Input(shape=input_shape)]
    for filters in model_params["conv_filters"]:
        stack += [
            layers.Conv2D(filters, model_params["kernel_size"], activation="relu"),
            layers.MaxPooling2D(model_params["pool_size"]),
        ]
    stack += [layers.Dropout(model_params["conv_dropout"]), layers.Flatten()]
    for units in model_params["dense_units"]:
        stack += [layers.Dense(units, activation="relu"), layers.Dropout(model_params["dense_dropout"])]
    stack.append(layers.Dense(num_classes, activation="softmax"))
    return keras.Sequential(stack, name="cnn")


def set_threads(threads):
    """Fix TensorFlow's CPU thread pools: float results depend on how work is split across threads."""
    if threads and tf.config.threading.get_intra_op_parallelism_threads() != threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def distribution_strategy(choice):
    """The tf.distribute strategy for train.distribute; the global batch is split across its replicas."""
    gpus = tf.config.list_logical_devices("GPU")
    if choice == "auto":
        choice = "mirrored" if len(gpus) > 1 else "none"
    if choice == "none":
        return tf.distribute.get_strategy()  # one device: TensorFlow's default placement
    if choice == "mirrored":  # every local GPU, else every logical CPU device
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    raise common.UserError(
        "train.distribute = multi_worker does not work with the pinned Keras 3.15: Keras 3's fit() "
        "fails under MultiWorkerMirroredStrategy (keras-team/keras#20585). Use mirrored (all GPUs of one "
        "machine) and see README, \"Scaling up\"")


def seed_everything(seed):
    """Seed Python, NumPy and TensorFlow, and make TensorFlow's ops deterministic."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def load_split(path):
    data = common.load_npz(path, "dvc repro preprocess")
    class_names = [str(c) for c in data["class_names"]]
    return data["x"], keras.utils.to_categorical(data["y"], len(class_names)), class_names


def renumber_shared_objects(node, numbers):
    """Replace Keras' shared_object_id (a memory address) with 0, 1, 2... in order of appearance."""
    if isinstance(node, dict):
        return {key: numbers.setdefault(value, len(numbers)) if key == "shared_object_id"
                else renumber_shared_objects(value, numbers) for key, value in node.items()}
    if isinstance(node, list):
        return [renumber_shared_objects(value, numbers) for value in node]
    return node


def save_model(model, path):
    """model.save, minus what differs between equal models (save time, memory addresses): equal bytes."""
    with common.atomic_path(path) as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp) as archive:
            members = [(info, archive.read(info)) for info in archive.infolist()]
        with zipfile.ZipFile(tmp, "w") as archive:
            for info, data in members:
                if info.filename == "metadata.json":
                    metadata = json.loads(data)
                    metadata.pop("date_saved", None)
                    data = json.dumps(metadata).encode()
                elif info.filename == "config.json":
                    data = json.dumps(renumber_shared_objects(json.loads(data), {})).encode()
                member = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
                member.compress_type = info.compress_type
                member.external_attr = 0o644 << 16
                archive.writestr(member, data)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train", help="training split (.npz from preprocess)")
    parser.add_argument("val", help="validation split (.npz from preprocess)")
    parser.add_argument("model", help="where to save the trained model (.keras); classes.json goes beside it")
    parser.add_argument("log_dir", help="DVCLive folder for the per-epoch metrics")
    args = parser.parse_args(argv)
    params = common.load_params()
    train = params["train"]

    set_threads(train["threads"])
    seed_everything(params["seed"])
    x_train, y_train, class_names = load_split(args.train)
    x_val, y_val, _ = load_split(args.val)
    strategy = distribution_strategy(train["distribute"])
    with strategy.scope():  # variables are created on (mirrored across) the strategy's devices
        try:
            model = build_model(params["model"], x_train.shape[1:], len(class_names))
        except ValueError as e:  # e.g. too many pooling layers for a 28x28 input
            raise common.UserError(f"model.* params give an impossible network ({str(e).splitlines()[0]}); "
                                   f"use fewer conv_filters or smaller kernel_size/pool_size")
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=train["learning_rate"]),
            loss="categorical_crossentropy",
            metrics=["accuracy"],
        )
    print(f"train: {strategy.num_replicas_in_sync} replica(s), global batch {train['batch_size']}")
    model.summary(print_fn=lambda line, **_: print(line))

    live = Live(args.log_dir, dvcyaml=False, save_dvc_exp=False)
    model.fit(
        x_train,
        y_train,
        batch_size=train["batch_size"],
        epochs=train["epochs"],
        validation_data=(x_val, y_val),
        shuffle=True,
        callbacks=[DVCLiveCallback(live=live)],
        verbose=1 if sys.stdout.isatty() else 2,
    )
    save_model(model, args.model)
    common.write_json(os.path.join(os.path.dirname(args.model), "classes.json"), class_names)
    print(f"train: saved {args.model} ({os.path.getsize(args.model) / 1e6:.1f} MB)")


if __name__ == "__main__":
    common.run(main)
