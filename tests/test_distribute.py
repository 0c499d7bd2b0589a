"""Scaling out with tf.distribute, shown on CPU: select with pytest -k "distribut or mirrored or multi_worker"."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from conftest import CODE_ENV, run_stage, write_params
from stages import train

# Runs the train stage with the CPU split into two logical devices, as two GPUs would be.
TWO_DEVICES = textwrap.dedent("""
    from mnist_cnn.runner import quiet_tensorflow, run
    tf = quiet_tensorflow()
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from stages import train
    run(train.main)
""")


def train_and_evaluate(workdir, processed_dir, script=None):
    """Train (optionally through a launcher script) and evaluate; returns train's stdout and the metrics."""
    args = [processed_dir / "train.npz", processed_dir / "val.npz", "models/model.keras", "log"]
    if script:
        result = subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=workdir,
                                env={**os.environ, **CODE_ENV}, capture_output=True, text=True, timeout=600)
    else:
        result = run_stage("stages.train", *args, cwd=workdir)
    assert result.returncode == 0, result.stderr
    evaluated = run_stage("stages.evaluate", "models/model.keras", processed_dir / "test.npz", "evaluate.json",
                          "predictions.csv", cwd=workdir)
    assert evaluated.returncode == 0, evaluated.stderr
    return result.stdout, json.loads((workdir / "evaluate.json").read_text())


@pytest.mark.slow
def test_distribute_mirrored_over_two_devices_reaches_single_device_accuracy(processed_dir, tmp_path, trained_run):
    single = json.loads(trained_run["metrics"].read_text())  # the same tiny run on one device
    workdir = tmp_path / "mirrored"
    workdir.mkdir()
    write_params(workdir, train__epochs=4, train__batch_size=16, train__distribute="mirrored")
    stdout, mirrored = train_and_evaluate(workdir, processed_dir, TWO_DEVICES)
    assert "train: 2 replica(s), global batch 16" in stdout
    assert abs(mirrored["accuracy"] - single["accuracy"]) <= 0.15, (mirrored["accuracy"], single["accuracy"])
    assert mirrored["accuracy"] > 0.5


class Device:
    def __init__(self, name):
        self.name = name


@pytest.mark.parametrize("choice, gpus, expected", [
    ("auto", 0, "default"), ("auto", 1, "default"),  # one device: no strategy needed
    ("auto", 2, ["/GPU:0", "/GPU:1"]), ("auto", 4, ["/GPU:0", "/GPU:1", "/GPU:2", "/GPU:3"]),
    ("mirrored", 0, ["/CPU:0"]), ("mirrored", 2, ["/GPU:0", "/GPU:1"]), ("none", 2, "default"),
])
def test_distribute_picks_devices_by_what_the_machine_has(monkeypatch, choice, gpus, expected):
    """Every branch of train.distribution_strategy, with the GPUs TensorFlow reports faked."""
    devices = {"GPU": [Device(f"/GPU:{i}") for i in range(gpus)], "CPU": [Device("/CPU:0")]}
    monkeypatch.setattr(train.tf.config, "list_logical_devices", lambda kind: devices[kind])
    monkeypatch.setattr(train.tf.distribute, "MirroredStrategy", lambda names: names)
    strategy = train.distribution_strategy(choice)
    assert strategy == expected if expected != "default" else strategy is train.tf.distribute.get_strategy()


@pytest.mark.slow
def test_distribute_multi_worker_is_refused_in_one_line(processed_dir, workdir):
    write_params(workdir, train__distribute="multi_worker")
    result = run_stage("stages.train", processed_dir / "train.npz", processed_dir / "val.npz", "m.keras", "log",
                       cwd=workdir)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "keras-team/keras#20585" in lines[0] and "Use mirrored" in lines[0], lines


# The smallest multi-worker Keras program: what train.distribute = multi_worker would need to work.
WORKER = textwrap.dedent("""
    import numpy as np, tensorflow as tf, keras
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = np.zeros((256, 28, 28, 1), "float32"), np.zeros(256, "int64")
    model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(64), epochs=1, verbose=0)
    print("trained with", strategy.num_replicas_in_sync, "replicas")
""")


class KerasMultiWorkerBug(Exception):
    """The known failure: PerReplica values reach convert_to_tensor inside Keras 3's fit()."""


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=KerasMultiWorkerBug,
                   reason="Keras 3.15 fit() fails under MultiWorkerMirroredStrategy (keras-team/keras#20585)")
def test_multi_worker_two_processes_train_one_model_together(tmp_path):
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = [subprocess.Popen(
        [sys.executable, "-c", WORKER], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
             "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})})
        for index in range(2)]
    results = [worker.communicate(timeout=300) for worker in workers]
    for worker, (stdout, stderr) in zip(workers, results):
        if worker.returncode != 0 and "PerReplica" in stderr and "to a Tensor" in stderr:
            raise KerasMultiWorkerBug(stderr.strip().splitlines()[-1])
        assert worker.returncode == 0, stderr  # any other failure is ours, not the known one
        assert "trained with 2 replicas" in stdout
