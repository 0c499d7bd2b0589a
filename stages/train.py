"""Stage train: build the notebook's CNN from model.* params and fit it, validating on the held-out split.

Logs accuracy and loss per epoch for train and validation with DVCLive, and saves the model in
the native Keras format. The test set is never read here.
"""
import argparse
import json
import math
import os
import re
import sys
import time
import zipfile

import common

tf = common.quiet_tensorflow()
import keras  # noqa: E402
from dvclive import Live  # noqa: E402
from dvclive.keras import DVCLiveCallback  # noqa: E402
from keras import layers  # noqa: E402


class RandomAffine(layers.Layer):
    """Random rotation, zoom and shift of each training image, composed into one affine map and
    resampled once (bilinear, black outside); the identity at inference, and left out of the saved
    model (inference_model). Keras' RandomRotation, RandomZoom and RandomTranslation in a row would
    interpolate three times, blurring the training images away from the crisp test images.

    rotation: up to this many degrees either way; zoom: scale by 1 +- up to this fraction (same for
    both axes); shift: up to this fraction of the height and width. Draws come from a seeded Keras
    SeedGenerator, so a seeded run repeats them. Every draw is scaled by `strength`: 1, or 0 to pass
    the images through unchanged (AugmentationOff sets it for the last epochs).
    """

    def __init__(self, rotation=0.0, zoom=0.0, shift=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rotation, self.zoom, self.shift, self.seed = rotation, zoom, shift, seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.strength = self.add_weight(shape=(), initializer="ones", trainable=False, name="strength")

    def call(self, inputs, training=None):
        if not training:
            return inputs
        batch, height, width = tf.shape(inputs)[0], inputs.shape[1], inputs.shape[2]

        def uniform(limit):
            return keras.random.uniform((batch,), -limit, limit, seed=self.seed_generator) * self.strength

        angle = uniform(self.rotation * math.pi / 180)
        scale = 1 + uniform(self.zoom)  # input pixels per output pixel: > 1 zooms out
        dx, dy = uniform(self.shift * width), uniform(self.shift * height)
        cx, cy = (width - 1) / 2, (height - 1) / 2
        a0, a1 = scale * tf.cos(angle), -scale * tf.sin(angle)  # output (x, y) -> input point, about the centre
        b0, b1 = -a1, a0
        zeros = tf.zeros_like(angle)
        transforms = tf.stack([a0, a1, cx - a0 * cx - a1 * cy - dx, b0, b1, cy - b0 * cx - b1 * cy - dy,
                               zeros, zeros], axis=1)
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=inputs, transforms=transforms, output_shape=[height, width], fill_value=0.0,
            interpolation="BILINEAR", fill_mode="CONSTANT")

    def get_config(self):
        return {**super().get_config(), "rotation": self.rotation, "zoom": self.zoom, "shift": self.shift,
                "seed": self.seed}


class AugmentationOff(keras.callbacks.Callback):
    """model.augment.off_last_epochs: the model's RandomAffine passes the images through unchanged
    from epoch `first` (0-based) on, so training ends on images like the ones it will be tested on."""

    def __init__(self, first):
        super().__init__()
        self.first = first

    def on_epoch_begin(self, epoch, logs=None):
        for layer in self.model.layers:
            if isinstance(layer, RandomAffine):
                layer.strength.assign(0.0 if epoch >= self.first else 1.0)


def augments(augment):
    return any(augment[key] for key in ("rotation", "shift", "zoom"))


def augmentation(augment):
    """RandomAffine in front of the net when any of model.augment's transforms is on; nothing by
    default. float32 whatever the precision: the image transform has no bfloat16 kernel on CPU."""
    if not augments(augment):
        return []
    return [RandomAffine(augment["rotation"], augment["zoom"], augment["shift"], dtype="float32")]


class FusedBatchNormalization(layers.BatchNormalization):
    """Keras' BatchNormalization, trained with TensorFlow's fused kernel on 4-D inputs (one oneDNN op
    on a CPU, cuDNN on a GPU) where Keras computes a dozen elementwise ops: on a 2-core CPU, batch
    normalisation cost the notebook's net +20 ms per step of 128 that way, +2 ms fused
    (bench/batch_norm.py). The same statistics, weights and moving averages; inference is Keras' own,
    and the saved model has plain BatchNormalization layers (inference_model), so loading it needs
    nothing from here."""

    def call(self, inputs, training=None, mask=None):
        if not training or len(inputs.shape) != 4 or self.axis not in (-1, 3) or mask is not None:
            return super().call(inputs, training=training, mask=mask)
        empty = tf.constant([], tf.float32)
        outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=tf.cast(self.gamma, tf.float32), offset=tf.cast(self.beta, tf.float32), mean=empty,
            variance=empty, epsilon=self.epsilon, data_format="NHWC", is_training=True)
        count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:3]), tf.float32)
        variance = variance * (count - 1) / count  # the kernel returns the unbiased variance; Keras keeps the other
        for average, value in ((self.moving_mean, mean), (self.moving_variance, variance)):
            average.assign(average * self.momentum + tf.stop_gradient(value) * (1 - self.momentum))
        return outputs


def inference_model(model):
    """What is saved: the trained network without its augmentation layers (the identity at inference),
    with Keras' own BatchNormalization for FusedBatchNormalization (same name and weights): a model
    that loads with Keras alone. The model itself where it has neither."""
    if not any(isinstance(layer, (RandomAffine, FusedBatchNormalization)) for layer in model.layers):
        return model

    def plain(layer):
        if not isinstance(layer, FusedBatchNormalization):
            return layer  # the same layer, weights shared
        copy = layers.BatchNormalization.from_config(layer.get_config())
        copy.build(layer.input.shape)
        copy.set_weights(layer.get_weights())
        return copy

    kept = [plain(layer) for layer in model.layers if not isinstance(layer, RandomAffine)]
    return keras.Sequential([keras.Input(shape=model.input_shape[1:])] + kept, name=model.name)


def build_model(model_params, input_shape, num_classes, dtype="float32"):
    """Conv-pool blocks, dropout, dense layers with dropout, softmax: the notebook's net by default.

    Options beyond the notebook: several convolutions per block, "same" padding, batch normalisation
    (conv/dense, then BatchNormalization, then relu) and augmentation layers in front. dtype is the
    Keras dtype policy of the hidden layers (train.precision); the softmax layer stays float32, as
    Keras' mixed-precision guide advises, so probabilities and the loss are computed exactly.
    """
    def relu_layer(layer, *args, **kwargs):  # Conv2D or Dense, then relu; with batch_norm: no bias, BN, relu
        if not model_params["batch_norm"]:
            return [layer(*args, activation="relu", dtype=dtype, **kwargs)]
        return [layer(*args, use_bias=False, dtype=dtype, **kwargs), FusedBatchNormalization(dtype=dtype),
                layers.Activation("relu", dtype=dtype)]

    stack = [keras.Input(shape=input_shape)] + augmentation(model_params["augment"])
    for filters in model_params["conv_filters"]:
        for _ in range(model_params["convs_per_block"]):
            stack += relu_layer(layers.Conv2D, filters, model_params["kernel_size"], padding=model_params["padding"])
        stack.append(layers.MaxPooling2D(model_params["pool_size"], dtype=dtype))
    stack += [layers.Dropout(model_params["conv_dropout"], dtype=dtype), layers.Flatten(dtype=dtype)]
    for units in model_params["dense_units"]:
        stack += relu_layer(layers.Dense, units) + [layers.Dropout(model_params["dense_dropout"], dtype=dtype)]
    stack.append(layers.Dense(num_classes, activation="softmax", dtype="float32"))
    return keras.Sequential(stack, name="cnn")


def cpu_has_bf16(cpuinfo="/proc/cpuinfo"):
    """True where the CPU computes bfloat16 natively: x86 AVX512-BF16 or AMX, Arm BF16."""
    try:
        with open(cpuinfo) as f:
            text = f.read()
    except OSError:  # not Linux: no cheap way to tell, so no
        return False
    flags = set()
    for line in re.findall(r"^(?:flags|Features)\s*:(.*)$", text, re.MULTILINE):
        flags.update(line.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_precision(choice):
    """train.precision -> a Keras dtype policy. auto: mixed_float16 on a GPU, mixed_bfloat16 on a CPU
    with native bfloat16, float32 elsewhere (bfloat16 emulated in software is slower than float32)."""
    if choice != "auto":
        return choice
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_has_bf16() else "float32"


def learning_rate(train, train_size):
    """Adam's learning rate: constant, or cosine decay to 0 after a linear warm-up from 0 (one cycle)."""
    if train["schedule"] == "constant":
        return train["learning_rate"]
    steps = train["epochs"] * math.ceil(train_size / train["batch_size"])
    warmup = int(train["warmup"] * steps)
    if not warmup:
        return keras.optimizers.schedules.CosineDecay(train["learning_rate"], steps)
    return keras.optimizers.schedules.CosineDecay(0.0, steps - warmup, warmup_target=train["learning_rate"],
                                                  warmup_steps=warmup)


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
    x, y, class_names = common.load_split(path)
    return x, keras.utils.to_categorical(y, len(class_names)), class_names


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
    train, augment = params["train"], params["model"]["augment"]
    off = augment["off_last_epochs"] if augments(augment) else 0
    if off >= train["epochs"]:
        raise common.UserError(f"model.augment.off_last_epochs = {off} leaves no augmented epoch of train.epochs = "
                               f"{train['epochs']}; make it smaller than train.epochs")

    set_threads(train["threads"])
    seed_everything(params["seed"])
    precision = resolve_precision(train["precision"])
    x_train, y_train, class_names = load_split(args.train)
    x_val, y_val, _ = load_split(args.val)
    strategy = distribution_strategy(train["distribute"])
    steps_per_execution = train["steps_per_execution"]
    if strategy.num_replicas_in_sync > 1 and steps_per_execution > 1:
        # Keras 3.15's multi-step loop fails under MirroredStrategy ("You must feed a value for
        # placeholder tensor"); one step per call is the same training, only slower
        print(f"train: steps_per_execution {steps_per_execution} -> 1 under {type(strategy).__name__}")
        steps_per_execution = 1
    with strategy.scope():  # variables are created on (mirrored across) the strategy's devices
        try:
            model = build_model(params["model"], x_train.shape[1:], len(class_names), precision)
        except ValueError as e:  # e.g. too many pooling layers for a 28x28 input
            raise common.UserError(f"model.* params give an impossible network ({str(e).splitlines()[0]}); "
                                   f"use fewer conv_filters or smaller kernel_size/pool_size")
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate(train, len(x_train)))
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

    callbacks = [DVCLiveCallback(live=Live(args.log_dir, dvcyaml=False, save_dvc_exp=False))]
    if off:
        callbacks.append(AugmentationOff(train["epochs"] - off))
        print(f"train: augmentation off for the last {off} of {train['epochs']} epochs")
    start = time.perf_counter()
    model.fit(
        x_train,
        y_train,
        batch_size=train["batch_size"],
        epochs=train["epochs"],
        validation_data=(x_val, y_val),
        validation_batch_size=train["val_batch_size"],
        shuffle=True,
        callbacks=callbacks,
        verbose=1 if sys.stdout.isatty() else 2,
    )
    seconds = time.perf_counter() - start
    print(f"train: fit took {seconds:.1f} s, {train['epochs'] * len(x_train) / seconds:.0f} training images/s "
          f"(validation included)")
    save_model(inference_model(model), args.model)
    common.write_json(os.path.join(os.path.dirname(args.model), "classes.json"), class_names)
    print(f"train: saved {args.model} ({os.path.getsize(args.model) / 1e6:.1f} MB)")


if __name__ == "__main__":
    common.run(main)
