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
import contextlib
import json
import math
import os
import signal
import socket
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
                 and task.get("type") == "worker" and type(index) is int and 0 <= index < len(workers)
                 and set(config["cluster"]) == {"worker"})  # type(): JSON's true is a bool, and bools are ints
    except (ValueError, KeyError, TypeError, AttributeError):
        valid = False
    if not valid:
        raise UserError(f"TF_CONFIG = {raw[:200]!r} is not a worker cluster: it must look like "
                        f"'{TF_CONFIG_EXAMPLE}', with this worker's index (0 on the machine that runs dvc repro)")
    for address in workers:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UserError(f"TF_CONFIG names the worker {address!r}: each worker must be host:port, with a port "
                            f"from 1 to 65535 (e.g. 'host1:12345')")
    return index, len(workers)


def workers_addresses():
    """The host:port of every worker, from TF_CONFIG (cluster() has checked it)."""
    return json.loads(os.environ["TF_CONFIG"])["cluster"]["worker"]


def strategy(timeout, worker):
    """The strategy, created first thing (TensorFlow requires it before other ops), once every worker is up.
    worker: (index, count) of this worker, as cluster() read them."""
    index, count = worker
    addresses = workers_addresses()
    print(f"train: worker {index} of {count}, waiting for the others (TF_CONFIG; at most {timeout:g} s)", flush=True)
    meet(addresses, index, timeout)
    print(f"train: worker {index} of {count}, connecting to the others", flush=True)
    with signals_kill():
        return tf.distribute.MultiWorkerMirroredStrategy()


def meet(addresses, index, timeout):
    """Wait until every other worker's port accepts a connection, for at most `timeout` seconds
    (train.worker_timeout), listening on this worker's own port meanwhile so the others see it.

    TensorFlow's own wait for the workers happens in C++ holding Python's lock: it has no deadline, and no
    signal handler or thread can run during it, so a worker that never comes would keep the others waiting
    for ever, deaf to Ctrl-C. This wait is Python's; TensorFlow then starts with everyone there. A worker
    that has gone on to TensorFlow answers on the same port (its gRPC server)."""
    listener = listen(addresses[index], index)
    waiting = [address for i, address in enumerate(addresses) if i != index]
    deadline = time.monotonic() + timeout
    with listener:
        while waiting:
            waiting = [address for address in waiting if not answers(address)]
            drain(listener)
            if waiting and time.monotonic() > deadline:
                raise UserError(f"worker {index} of {len(addresses)}: {', '.join(waiting)} did not come within "
                                f"{timeout:g} s (train.worker_timeout); start every worker TF_CONFIG names, each with "
                                f"its own index, and check that their ports are open between the machines")
            time.sleep(0.2)
        time.sleep(0.5)  # the last ones to look for this worker find it still listening


def listen(address, index):
    """A socket listening on this worker's port on every address of the machine, as TensorFlow's server will;
    one line when the port is taken."""
    port = int(address.rpartition(":")[2])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC's own socket
    try:
        listener.bind(("", port))
        listener.listen()
    except OSError as e:
        listener.close()
        raise UserError(f"worker {index} cannot listen on port {port} ({address} in TF_CONFIG): "
                        f"{e.strerror or e}; stop what uses it or give this worker another port in TF_CONFIG")
    listener.setblocking(False)
    return listener


def answers(address):
    """Whether host:port accepts a connection now; one line for a host name that does not resolve."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except socket.gaierror as e:
        raise UserError(f"TF_CONFIG names the worker {address}, but {host!r} is not a known host ({e.strerror}); "
                        f"fix the address") from None
    except OSError:
        return False


def drain(listener):
    """Accept and close the other workers' knocks on this worker's port."""
    while True:
        try:
            connection, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        connection.close()


@contextlib.contextmanager
def signals_kill():
    """Ctrl-C and SIGTERM end the process at once during the block: TensorFlow's C++ holds Python's lock while
    it connects, so Python's handlers would not run until it returned, which it may never do."""
    previous = {number: signal.signal(number, signal.SIG_DFL) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


PEER_FAILURES = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError,
                 tf.errors.CancelledError, tf.errors.InternalError)


@contextlib.contextmanager
def peers_lost(worker):
    """A worker that dies (or stops answering TensorFlow's heartbeats) makes every collective of the others fail
    with a page of TensorFlow traceback: one line instead, naming what TensorFlow saw."""
    try:
        yield
    except PEER_FAILURES as e:
        text = e.message
        if "Collective ops is aborted" not in text and not isinstance(e, tf.errors.UnavailableError):
            raise  # not a lost peer: our bug, with its traceback
        reason = " ".join(text.split("Collective ops is aborted by:", 1)[-1].split())
        reason = reason.split(" The tasks have crashed")[0].split(" Additional GRPC")[0][:300]
        index, count = worker
        raise UserError(f"worker {index} of {count}: another worker stopped or cannot be reached ({reason}); "
                        f"nothing was saved: start every worker again") from None


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
    val_accuracy and val_loss per epoch; the batch hooks get no logs). worker: (index, count) from
    cluster(). Returns the images trained on per epoch (all workers together)."""
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
    with peers_lost(worker):  # a worker that dies stops the others at their next step
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
                callbacks.on_train_batch_end(done)  # train's StopOnSignal: Ctrl-C stops at the next step
            seen = steps * batch_size
            val_loss = val_correct = 0.0
            for batch, (x, y) in enumerate(validation):
                step_loss, step_correct = val_step(x, y)
                val_loss, val_correct = val_loss + float(step_loss), val_correct + float(step_correct)
                callbacks.on_test_batch_end(batch)
            logs = {"accuracy": correct / seen, "loss": loss_sum / seen,
                    "val_accuracy": val_correct / val_split.images, "val_loss": val_loss / val_split.images}
            print(f"Epoch {epoch + 1}/{epochs} - {time.perf_counter() - start:.0f}s - "
                  + " - ".join(f"{key}: {value:.4f}" for key, value in logs.items()), flush=True)
            callbacks.on_epoch_end(epoch, logs)
        callbacks.on_train_end(logs)
        return steps * batch_size
