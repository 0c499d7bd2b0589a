"""train.distribute: multi_worker: one model trained by several processes, on one machine or many.

TensorFlow's MultiWorkerMirroredStrategy keeps a copy of the model in every worker and all-reduces
the gradients of each step between them; TF_CONFIG tells each worker the addresses of all and its
own index. Keras 3's fit() fails under this strategy (keras-team/keras#20585), so `fit` here is a
training loop of its own around Keras' model, optimizer and callbacks: each step runs
`strategy.run` on a replica function (GradientTape, a per-example loss averaged over the global
batch, optimizer.apply_gradients, which all-reduces). Each worker streams its own part of the
training shards (mnist_cnn/streaming.py), every worker takes the same number of steps per epoch,
and every worker validates on the whole validation split, so all hold the same model and logs.
Worker 0 (the chief) writes the model and the log; the others write nothing.
"""
import json
import math
import os
import time

import keras
import tensorflow as tf

from mnist_cnn.errors import UserError
from mnist_cnn.streaming import stream

TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}')


def cluster():
    """(index, count) of this worker, from TF_CONFIG; one line when it is missing or malformed."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        raise UserError(f"train.distribute = multi_worker needs TF_CONFIG in every worker's environment, e.g. "
                        f"TF_CONFIG='{TF_CONFIG_EXAMPLE}' (index 1 on the second machine); see docs/scaling.md")
    try:
        config = json.loads(raw)
        workers, task = config["cluster"]["worker"], config["task"]
        index = task["index"]
        valid = (isinstance(workers, list) and workers and all(isinstance(w, str) and ":" in w for w in workers)
                 and task.get("type") == "worker" and isinstance(index, int) and 0 <= index < len(workers)
                 and set(config["cluster"]) == {"worker"})
    except (ValueError, KeyError, TypeError, AttributeError):
        valid = False
    if not valid:
        raise UserError(f"TF_CONFIG = {raw[:200]!r} is not a worker cluster: it must look like "
                        f"'{TF_CONFIG_EXAMPLE}', with this worker's index (0 on the machine that runs dvc repro)")
    return index, len(workers)


def strategy():
    """The strategy, created first thing (TensorFlow requires it before other ops); it waits for all workers."""
    index, count = cluster()
    print(f"train: worker {index} of {count}, connecting to the others (TF_CONFIG)", flush=True)
    return tf.distribute.MultiWorkerMirroredStrategy()


def steps_per_epoch(split, batch_size, count):
    """Steps every worker takes per epoch: as many full per-worker batches as the smallest part holds."""
    if len(split.files) < count:
        raise UserError(f"{split.folder} has {len(split.files)} shard(s) for {count} workers, and each worker reads "
                        f"shards of its own: lower data.shard_mb to {fitting_shard_mb(split, count)} "
                        f"or less, so there are at least {count}")
    if batch_size % count:
        raise UserError(f"train.batch_size = {batch_size} does not split evenly over {count} workers: make it a "
                        f"multiple of {count}")
    smallest = min(split.part(index, count)[1] for index in range(count))
    steps = smallest // (batch_size // count)
    if steps == 0:
        raise UserError(f"a worker's part of {split.folder} ({smallest} images) holds no full batch of "
                        f"{batch_size // count}: lower train.batch_size or use fewer workers")
    return steps


def fitting_shard_mb(split, count):
    """A data.shard_mb that cuts this split into at least `count` shards (to 1/1000 MiB, rounded down)."""
    image_bytes = math.prod(split.image_shape)
    return math.floor(split.images // count * image_bytes / 2**20 * 1000) / 1000


def fit(model, strategy, optimizer, train_split, val_split, train, seed, callbacks, worker, steps):
    """Train model for train.epochs over train_split, `steps` steps an epoch (steps_per_epoch), validating on
    val_split after each; calls the callbacks as Keras' fit() would (DVCLive gets accuracy, loss,
    val_accuracy and val_loss per epoch). worker: (index, count) from cluster(). Returns the images
    trained on per epoch (all workers together)."""
    index, count = worker
    batch_size, epochs = train["batch_size"], train["epochs"]
    files, images = train_split.part(index, count)
    print(f"train: worker {index} of {count} reads {', '.join(os.path.basename(f) for f in files)} ({images} images); "
          f"{steps} steps of {batch_size // count} images per worker and epoch", flush=True)
    per_example = keras.losses.CategoricalCrossentropy(label_smoothing=train["label_smoothing"], reduction=None)

    def inputs(context):
        return stream(train_split, context.get_per_replica_batch_size(batch_size), seed=seed,
                      shuffle_buffer=train["shuffle_buffer"], drop_remainder=True, steps=steps,
                      worker=(context.input_pipeline_id, context.num_input_pipelines))

    data = strategy.distribute_datasets_from_function(inputs)

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            probabilities = model(x, training=True)
            losses = per_example(y, probabilities)
            loss = tf.nn.compute_average_loss(losses, global_batch_size=batch_size)
            scaled = optimizer.scale_loss(loss)  # mixed_float16's loss scaling; the loss itself otherwise
        gradients = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))  # all-reduced across the workers
        correct = tf.cast(tf.argmax(probabilities, axis=1) == tf.argmax(y, axis=1), tf.float32)
        return tf.reduce_sum(losses), tf.reduce_sum(correct)

    @tf.function
    def train_steps(iterator, count):  # `count` steps in one call into TensorFlow (train.steps_per_execution)
        loss_total, correct_total = tf.constant(0.0), tf.constant(0.0)
        for _ in tf.range(count):
            loss_sum, correct = strategy.run(replica_step, args=next(iterator))
            loss_total += strategy.reduce(tf.distribute.ReduceOp.SUM, loss_sum, axis=None)
            correct_total += strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None)
        return loss_total, correct_total

    @tf.function
    def val_step(x, y):
        probabilities = model(x, training=False)
        correct = tf.cast(tf.argmax(probabilities, axis=1) == tf.argmax(y, axis=1), tf.float32)
        return tf.reduce_sum(per_example(y, probabilities)), tf.reduce_sum(correct)

    validation = stream(val_split, train["val_batch_size"])
    callbacks = keras.callbacks.CallbackList(callbacks, model=model)
    callbacks.on_train_begin()
    logs = {}
    for epoch in range(epochs):
        callbacks.on_epoch_begin(epoch)
        start = time.perf_counter()
        loss_sum = correct = 0.0
        iterator = iter(data)
        for done in range(0, steps, train["steps_per_execution"]):
            count = tf.constant(min(train["steps_per_execution"], steps - done))
            step_loss, step_correct = train_steps(iterator, count)
            loss_sum, correct = loss_sum + float(step_loss), correct + float(step_correct)
        seen = steps * batch_size
        val_loss = val_correct = 0.0
        for x, y in validation:
            step_loss, step_correct = val_step(x, y)
            val_loss, val_correct = val_loss + float(step_loss), val_correct + float(step_correct)
        logs = {"accuracy": correct / seen, "loss": loss_sum / seen,
                "val_accuracy": val_correct / val_split.images, "val_loss": val_loss / val_split.images}
        print(f"Epoch {epoch + 1}/{epochs} - {time.perf_counter() - start:.0f}s - "
              + " - ".join(f"{key}: {value:.4f}" for key, value in logs.items()), flush=True)
        callbacks.on_epoch_end(epoch, logs)
    callbacks.on_train_end(logs)
    return steps * batch_size
