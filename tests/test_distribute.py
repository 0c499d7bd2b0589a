"""Scaling out with tf.distribute, shown on CPU: select with pytest -k "distribut or mirrored or multi_worker"."""
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import CODE_ENV, write_params
from mnist_cnn.errors import UserError
from stages import evaluate, train
from tools.project import free_ports

# Runs the train stage with the CPU split into two logical devices, as two GPUs would be.
TWO_DEVICES = textwrap.dedent("""
    from mnist_cnn.runner import quiet_tensorflow, run
    tf = quiet_tensorflow()
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from stages import train
    run(train.main)
""")


def evaluated(workdir, test):
    """The metrics of workdir's models/model.keras on the test split, by the evaluate stage in this process: the
    trained model is what these tests are about, not evaluate's process (tests/test_evaluate.py; its clean stderr:
    the first `dvc repro` in tests/test_pipeline.py)."""
    with contextlib.chdir(workdir):
        evaluate.main(["models/model.keras", str(test), "evaluate.json", "predictions.csv"])
    return json.loads((workdir / "evaluate.json").read_text())


def train_and_evaluate(workdir, processed_dir, script):
    """Train through a launcher script and evaluate; returns train's stdout and the metrics."""
    args = [processed_dir / "train", processed_dir / "val", "models/model.keras", "log"]
    result = subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=workdir,
                            env={**os.environ, **CODE_ENV}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # a run that succeeds prints nothing there (TensorFlow's C++ log lines included)
    return result.stdout, evaluated(workdir, processed_dir / "test")


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
    strategy = train.distribution_strategy({"distribute": choice, "worker_timeout": 300})
    assert strategy == expected if expected != "default" else strategy is train.tf.distribute.get_strategy()


def test_multi_worker_without_tf_config_is_one_line(processed_dir, workdir, monkeypatch, run_here):
    write_params(workdir, train__distribute="multi_worker")
    monkeypatch.setenv("TF_CONFIG", "")
    result = run_here("stages.train", processed_dir / "train", processed_dir / "val", "m.keras", "log", cwd=workdir)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "multi_worker needs TF_CONFIG in every worker's environment" in lines[0], lines
    assert "docs/scaling.md" in lines[0]
    assert not (workdir / "m.keras").exists() and not (workdir / "log").exists()


@pytest.mark.parametrize("tf_config", [
    "{not json", "[]", '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}',
    '{"cluster": {"worker": ["127.0.0.1:1"], "chief": ["127.0.0.1:2"]}, "task": {"type": "worker", "index": 0}}',
    '{"cluster": {"worker": "127.0.0.1:1"}, "task": {"type": "worker", "index": 0}}',
    '{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": true}}',
])
def test_a_malformed_tf_config_is_one_line(monkeypatch, tf_config):
    from mnist_cnn import multi_worker
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(UserError, match="is not a worker cluster: it must look like"):
        multi_worker.cluster()
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}')
    assert multi_worker.cluster() == (1, 2)


@pytest.mark.parametrize("address", ["127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:http", ":12345", "127.0.0.1:"])
def test_a_worker_address_without_a_usable_port_is_one_line(monkeypatch, address):
    from mnist_cnn import multi_worker
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:2222", address]},
                                                "task": {"type": "worker", "index": 0}}))
    with pytest.raises(UserError, match=f"names the worker '{address}': each worker must be host:port, with a port "
                                        f"from 1 to 65535"):
        multi_worker.cluster()


def test_workers_meet_before_tensorflow_starts_and_a_worker_that_never_comes_is_one_line():
    """meet() returns once every other worker's port answers; a missing one ends the wait at the deadline."""
    from mnist_cnn import multi_worker
    mine, theirs = (f"127.0.0.1:{port}" for port in free_ports(2))
    start = time.monotonic()
    with pytest.raises(UserError, match=rf"worker 0 of 2: {theirs} did not come within 0.5 s \(train.worker_timeout\)"):
        multi_worker.meet([mine, theirs], 0, timeout=0.5)
    assert 0.5 <= time.monotonic() - start < 3
    with socket.create_server(("127.0.0.1", int(theirs.split(":")[1]))):  # the other worker, listening
        multi_worker.meet([mine, theirs], 0, timeout=5)
    with socket.create_server(("", int(mine.split(":")[1]))):  # this worker's port taken by something else
        with pytest.raises(UserError, match=rf"worker 0 cannot listen on port {mine.split(':')[1]} \({mine} in "
                                            r"TF_CONFIG\): Address already in use; stop what uses it"):
            multi_worker.meet([mine, theirs], 0, timeout=5)


def test_while_tensorflow_connects_the_workers_ctrl_c_and_sigterm_end_the_process():
    """TensorFlow's wait holds Python's lock, so no Python handler could run: the default actions do."""
    from mnist_cnn import multi_worker
    before = [signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)]
    with multi_worker.signals_kill():
        assert [signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)] == [signal.SIG_DFL] * 2
    assert [signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)] == before


def start_workers(tmp_path, directory, count, started, **params):
    """Start the first `started` of `count` multi-worker train stages on 127.0.0.1; their Popen objects."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(count)]}
    workers = []
    for index in range(started):
        workdir = tmp_path / f"worker{index}"
        workdir.mkdir()
        write_params(workdir, train__batch_size=16, train__distribute="multi_worker", **params)
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "stages.train", directory / "train", directory / "val", "models/model.keras",
             "log"], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **CODE_ENV, "TF_CONFIG": tf_config, "TF_CPP_MIN_LOG_LEVEL": "3"}))
    return workers


def wait_for_line(process, text, limit=120):
    """Read process's stdout until a line holding `text`; the lines read."""
    lines, deadline = [], time.monotonic() + limit
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if text in line or not line:
            break
    assert text in lines[-1], lines
    return lines


@pytest.mark.stage
@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGINT])
def test_a_worker_waiting_for_the_others_stops_on_sigterm_and_ctrl_c(sharded_dir, tmp_path, number):
    """Only worker 0 of 2 started: it waits, and a signal ends the wait within seconds with one line."""
    (worker,) = start_workers(tmp_path, sharded_dir, 2, 1, train__worker_timeout=600)
    try:
        wait_for_line(worker, "waiting for the others (TF_CONFIG; at most 600 s)")
        time.sleep(0.5)
        worker.send_signal(number)
        start = time.monotonic()
        stdout, stderr = worker.communicate(timeout=60)
        assert time.monotonic() - start < 20  # 3 s idle; a process holding TensorFlow exits slowly under load
    finally:
        worker.kill()
    assert worker.returncode == 130 and stderr.startswith("interrupted: this run wrote none of its outputs"), stderr
    assert len(stderr.splitlines()) == 1


@pytest.mark.slow
def test_a_worker_that_dies_mid_training_stops_the_other_with_one_line(sharded_dir, tmp_path):
    """Ctrl-C stops a training worker within seconds; the other sees its peer gone: one line each, rc 130 and
    1, and the chief's previous model and log are kept."""
    chief = tmp_path / "worker0"
    workers = start_workers(tmp_path, sharded_dir, 2, 2, train__epochs=500)
    (chief / "models").mkdir()
    (chief / "models" / "model.keras").write_text("the previous model")
    try:
        wait_for_line(workers[1], "Epoch 1/500")
        workers[1].send_signal(signal.SIGINT)
        start = time.monotonic()
        outputs = [worker.communicate(timeout=60) for worker in reversed(workers)]
        assert time.monotonic() - start < 30
    finally:
        for worker in workers:
            worker.kill()
    (_, interrupted), (_, lost) = outputs
    assert workers[1].returncode == 130 and interrupted.startswith("interrupted: this run wrote none"), interrupted
    assert workers[0].returncode == 1, lost
    assert len(lost.splitlines()) == 1 and lost.startswith(
        "error: worker 0 of 2: another worker stopped or cannot be reached ("), lost
    assert lost.rstrip().endswith("); nothing was saved: start every worker again")
    assert (chief / "models" / "model.keras").read_text() == "the previous model"
    assert sorted(p.name for p in chief.iterdir()) == ["models", "params.yaml"]  # no log, no temporary folder


def test_multi_worker_needs_a_shard_per_worker_and_an_even_batch(processed_dir):
    from mnist_cnn import multi_worker
    from mnist_cnn.shards import open_split
    split = open_split(processed_dir / "train")  # one shard
    with pytest.raises(UserError, match=r"has 1 shard\(s\) for 2 workers.*lower data.shard_mb to 0.089 or less"):
        multi_worker.steps_per_epoch(split, 16, 2)
    two = dataclasses.replace(split, files=split.files * 2, sizes=split.sizes * 2)
    with pytest.raises(UserError, match="train.batch_size = 15 does not split evenly over 2 workers"):
        multi_worker.steps_per_epoch(two, 15, 2)
    assert multi_worker.steps_per_epoch(two, 16, 2) == split.images // 8


@pytest.mark.slow
def test_multi_worker_two_processes_train_one_model_together(sharded_dir, tmp_path, trained_run):
    """Two workers on 127.0.0.1, each streaming its own shards, train one model; worker 0 writes it."""
    single = json.loads(trained_run["metrics"].read_text())  # the same tiny run in one process
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    workers = []
    for index in range(2):
        workdir = tmp_path / f"worker{index}"
        workdir.mkdir()
        write_params(workdir, train__epochs=4, train__batch_size=16, train__distribute="multi_worker")
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "stages.train", sharded_dir / "train", sharded_dir / "val", "models/model.keras",
             "log"], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **CODE_ENV, "TF_CONFIG": tf_config, "TF_CPP_MIN_LOG_LEVEL": "3"}))
    try:
        outputs = [worker.communicate(timeout=300) for worker in workers]
    finally:  # a worker that failed to start leaves the other waiting for it
        for worker in workers:
            worker.kill()
    for worker, (stdout, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr
        assert stderr == ""  # tf.data's and the collectives' C++ log lines are not the user's business
        assert "train: 2 replica(s), global batch 16" in stdout
    first, second = (stdout for stdout, _ in outputs)
    assert "train: worker 0 of 2 reads part-00000.npz, part-00002.npz (132 images)" in first
    assert "train: worker 1 of 2 reads part-00001.npz, part-00003.npz (108 images)" in second

    def epochs(stdout):  # the per-epoch metrics, without the seconds
        return [line.split(" - ", 2)[2] for line in stdout.splitlines() if line.startswith("Epoch ")]

    assert len(epochs(first)) == 4 and epochs(first) == epochs(second)  # one model: the same metrics in both
    assert (tmp_path / "worker0" / "models" / "model.keras").exists()
    assert (tmp_path / "worker0" / "log" / "plots" / "metrics" / "eval" / "accuracy.tsv").exists()
    assert not (tmp_path / "worker1" / "models").exists() and not (tmp_path / "worker1" / "log").exists()
    assert "worker 0 writes the model and the log" in second
    accuracy = evaluated(tmp_path / "worker0", sharded_dir / "test")["accuracy"]
    assert abs(accuracy - single["accuracy"]) <= 0.15 and accuracy > 0.5, (accuracy, single["accuracy"])
