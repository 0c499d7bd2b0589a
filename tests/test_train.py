"""The train stage: real learning, every train param used, deterministic results, clean failures."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from conftest import CODE_ENV, REPO, mounted_tmpfs, start_stage, wait_for_line, write_params
from mnist_cnn import network, runner
from mnist_cnn.errors import UserError
from mnist_cnn.params import load_params
from stages import train

DEFAULTS = load_params(f"{REPO}/params.yaml")


@pytest.mark.slow
def test_augmentation_off_ends_training_on_unaugmented_images(processed_dir, workdir):
    augment = {"model__augment__rotation": 10, "model__augment__shift": 0.1, "train__epochs": 2}
    on, _ = train_once(processed_dir, workdir, **augment)
    off, log = train_once(processed_dir, workdir, **augment, model__augment__off_last_epochs=1)
    assert not all(np.array_equal(a, b) for a, b in zip(on, off))  # the second epoch saw other images
    assert json.loads(log)["step"] == 1  # both epochs ran


def test_augmentation_off_for_every_epoch_is_a_user_error(processed_dir, workdir, run_here):
    write_params(workdir, model__augment__zoom=0.1, model__augment__off_last_epochs=10)
    result = run_here("stages.train", processed_dir / "train", processed_dir / "val", "m.keras", "log",
                      cwd=workdir)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: model.augment.off_last_epochs = 10 leaves no augmented epoch of train.epochs = 10; "
        "make it smaller than train.epochs"]
    assert not (workdir / "m.keras").exists()


@pytest.mark.parametrize("gpus, bf16, expected", [
    (["GPU:0"], True, "mixed_float16"),  # a GPU wins: float16 with loss scaling
    (["GPU:0"], False, "mixed_float16"),
    ([], True, "mixed_bfloat16"),  # a CPU with AVX512-BF16, AMX or Arm BF16
    ([], False, "float32"),  # a plain CPU: bfloat16 emulated in software would be slower
])
def test_auto_precision_covers_gpu_bf16_cpu_and_plain_cpu(monkeypatch, gpus, bf16, expected):
    monkeypatch.setattr(train.tf.config, "list_physical_devices", lambda kind=None: gpus if kind == "GPU" else [])
    monkeypatch.setattr(train, "cpu_has_bf16", lambda: bf16)
    assert train.resolve_precision("auto") == expected
    for choice in ("float32", "mixed_bfloat16", "mixed_float16"):  # an explicit choice is kept as it is
        assert train.resolve_precision(choice) == choice


def test_cosine_schedule_warms_up_then_decays_to_zero():
    params = {**DEFAULTS["train"], "schedule": "cosine", "warmup": 0.1, "learning_rate": 0.004, "epochs": 2,
              "batch_size": 100}
    schedule = train.learning_rate(params, steps_per_epoch=10)  # 20 steps, 2 warming up
    rates = [float(schedule(step)) for step in range(21)]
    assert rates[0] == 0 and rates[1] == pytest.approx(0.002) and rates[2] == pytest.approx(0.004)
    assert all(a > b for a, b in zip(rates[2:], rates[3:])) and rates[20] == pytest.approx(0, abs=1e-9)
    assert train.learning_rate({**params, "schedule": "constant"}, 1000) == 0.004


def test_impossible_network_is_a_user_error(processed_dir, workdir, run_here):
    write_params(workdir, model__conv_filters=[8, 8, 8, 8], model__pool_size=3)
    result = run_here("stages.train", processed_dir / "train", processed_dir / "val", "m.keras", "log",
                      cwd=workdir)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model.* params give an impossible network"), lines
    assert not (workdir / "m.keras").exists()


def test_training_learns_and_logs_every_epoch(trained_run):
    history = json.loads((trained_run["log_dir"] / "metrics.json").read_text())
    assert history["step"] == 3  # four epochs: steps 0 to 3
    assert history["eval"]["accuracy"] > 0.5  # ten classes: chance is 0.1
    for split in ("train", "eval"):
        for metric in ("accuracy", "loss"):
            rows = (trained_run["log_dir"] / "plots" / "metrics" / split / f"{metric}.tsv").read_text().splitlines()
            assert rows[0] == f"step\t{metric}" and len(rows) == 5
    model = keras.saving.load_model(trained_run["model"])
    assert model.count_params() == 225_034
    assert float(model.optimizer.learning_rate) == pytest.approx(0.001)


def train_once(processed_dir, directory, **overrides):
    write_params(directory, **{"train__epochs": 1, **overrides})
    train.main([str(processed_dir / "train"), str(processed_dir / "val"), str(directory / "m.keras"),
                str(directory / "log")])
    weights = keras.saving.load_model(directory / "m.keras").get_weights()
    return weights, (directory / "log" / "metrics.json").read_text()


@pytest.mark.slow
def test_a_short_run_with_batch_norm_saves_moving_statistics_of_its_own_data(processed_dir, workdir):
    """A run of a few steps saves each BatchNormalization layer's moving mean and variance close to those of
    its inputs over the training images (with Keras' momentum 0.99 they stayed near their starting 0 and 1:
    a model at 10% accuracy that trained at 98%, experiments log 2026-11-30)."""
    train_once(processed_dir, workdir, model__batch_norm=True, model__dense_units=[8])
    model = keras.saving.load_model(workdir / "m.keras")
    x = np.concatenate([np.load(path)["x"] for path in sorted((processed_dir / "train").glob("*.npz"))])
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)][:2]
    assert len(norms) == 2  # the convolutions' (the dense layer's: too few images for a close variance)
    for index, layer in enumerate(norms):
        inputs = keras.Model(model.inputs, layer.input).predict(x.astype("float32") / 255, verbose=0)
        inputs = inputs.astype(np.float64)  # bfloat16 where training was: its sums lose all but 8 bits
        mean, variance = inputs.mean(axis=(0, 1, 2)), inputs.var(axis=(0, 1, 2))
        assert index or variance.max() < 0.1  # the first's far from the starting 1, so a stale average shows
        moving_mean, moving_variance = keras.ops.convert_to_numpy(layer.moving_mean), \
            keras.ops.convert_to_numpy(layer.moving_variance)
        np.testing.assert_allclose(moving_variance, variance, rtol=0.5)
        assert np.all(np.abs(moving_mean - mean) < 0.2 * np.sqrt(variance))  # within a fifth of a deviation


def test_batch_norm_momentum_forgets_the_starting_values_within_the_run():
    assert network.batch_norm_momentum(2256) == 0.99  # full `best` (12 epochs of 188 steps): Keras' own
    for steps in (1, 4, 376, 900):
        momentum = network.batch_norm_momentum(steps)
        assert momentum < 0.99 and momentum ** steps == pytest.approx(1e-4, rel=1e-9)


@pytest.mark.slow
def test_same_params_give_identical_weights_and_metrics(processed_dir, workdir):
    first = train_once(processed_dir, workdir)
    second = train_once(processed_dir, workdir)
    assert all(np.array_equal(a, b) for a, b in zip(first[0], second[0]))
    assert first[1] == second[1]
    for overrides in ({"seed": 7}, {"train__batch_size": 32}, {"train__learning_rate": 0.003},
                      {"train__schedule": "cosine"}, {"train__label_smoothing": 0.1},
                      {"train__precision": "mixed_bfloat16"},
                      {"train__precision": "float32"}):
        if overrides.get("train__precision") == train.resolve_precision("auto"):
            continue  # the default already is this precision here
        other = train_once(processed_dir, workdir, **overrides)
        assert not all(np.array_equal(a, b) for a, b in zip(first[0], other[0])), overrides


@pytest.mark.slow
def test_speed_knobs_do_not_change_the_results(processed_dir, workdir):
    """steps_per_execution and val_batch_size change how fast, not what is learnt."""
    first = train_once(processed_dir, workdir, train__batch_size=8)
    other = train_once(processed_dir, workdir, train__batch_size=8, train__steps_per_execution=1,
                       train__val_batch_size=7)
    assert all(np.array_equal(a, b) for a, b in zip(first[0], other[0]))
    first_log, other_log = json.loads(first[1]), json.loads(other[1])
    assert first_log["train"] == other_log["train"]
    assert first_log["eval"]["accuracy"] == other_log["eval"]["accuracy"]
    assert other_log["eval"]["loss"] == pytest.approx(first_log["eval"]["loss"], rel=1e-5)  # summed in another order


def test_missing_training_data_is_one_line(workdir, run_here):
    result = run_here("stages.train", "nope/train", "nope/val", "m.keras", "log", cwd=workdir)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: nope/train is not a folder of shards: run `dvc repro preprocess` to create it"]


@pytest.fixture
def previous_model(workdir):
    """A models/ folder holding the 'previous run' model, to be left intact by a failed run."""
    models = workdir / "models"
    models.mkdir()
    (models / "model.keras").write_bytes(b"previous model")
    return models


@pytest.fixture
def previous_log(workdir):
    """The 'previous run' training log (DVCLive's folder), to be left exactly as it was by a failed run."""
    log = workdir / "log"
    (log / "plots" / "metrics" / "train").mkdir(parents=True)
    (log / "metrics.json").write_text('{"step": 9}\n')
    (log / "plots" / "metrics" / "train" / "loss.tsv").write_text("step\tloss\n0\t0.5\n")
    return log


def tree(folder):
    """Every file under folder with its bytes."""
    return {os.path.relpath(os.path.join(root, name), folder): open(os.path.join(root, name), "rb").read()
            for root, _, files in os.walk(folder) for name in files}


def ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def interrupt_training(processed_dir, workdir, signal_number, started_ignoring_sigint=False):
    write_params(workdir, train__epochs=200, train__batch_size=8)
    process = start_stage("stages.train", processed_dir / "train", processed_dir / "val",
                          "models/model.keras", "log", cwd=workdir,
                          preexec_fn=ignore_sigint if started_ignoring_sigint else None)
    wait_for_line(process, "Epoch 2/")
    process.send_signal(signal_number)
    stdout, stderr = process.communicate(timeout=60)
    return process.returncode, stderr


@pytest.mark.slow
@pytest.mark.parametrize("signal_number, started_ignoring_sigint", [
    (signal.SIGINT, False), (signal.SIGTERM, False),
    (signal.SIGINT, True),  # as a background job of a script starts: Python alone would ignore Ctrl-C
])
def test_interrupted_training_leaves_the_previous_model_and_log(processed_dir, workdir, previous_model, previous_log,
                                                                signal_number, started_ignoring_sigint):
    log_before = tree(previous_log)
    returncode, stderr = interrupt_training(processed_dir, workdir, signal_number, started_ignoring_sigint)
    assert returncode == 130
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: this run wrote none of its outputs"), lines
    assert "`dvc checkout`" in lines[0] and "`git checkout metrics plots`" in lines[0]
    assert os.listdir(previous_model) == ["model.keras"]
    assert (previous_model / "model.keras").read_bytes() == b"previous model"
    assert tree(previous_log) == log_before  # not the interrupted run's first epochs
    assert sorted(os.listdir(workdir)) == ["log", "models", "params.yaml"]  # no temporary folder left behind


# The train stage, with a SIGINT that lands in a __del__ after its first steps: Python prints "Exception ignored"
# and goes on, as it lost 7 of 5361 signals sent during tf.function calls (bench/lost_interrupts.py)
LOSES_A_SIGINT = textwrap.dedent("""
    import os, signal
    from mnist_cnn.runner import run
    from stages import train

    class Victim:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10000):  # Python runs the handler here: its KeyboardInterrupt goes nowhere
                pass

    class LosesASignal(train.StopOnDivergence):
        def on_train_batch_end(self, batch, logs=None):
            if not hasattr(self, "lost"):  # at the end of the first call into TensorFlow
                self.lost = Victim()
                del self.lost
                print("lost a SIGINT", flush=True)

    train.StopOnDivergence = LosesASignal
    run(train.main)
""")


@pytest.mark.slow
def test_a_sigint_whose_keyboardinterrupt_python_lost_still_stops_the_stage(processed_dir, workdir, previous_model,
                                                                            previous_log):
    log_before = tree(previous_log)
    write_params(workdir, train__epochs=20, train__batch_size=8)
    result = subprocess.run([sys.executable, "-c", LOSES_A_SIGINT, str(processed_dir / "train"),
                             str(processed_dir / "val"), "models/model.keras", "log"], cwd=workdir,
                            env={**os.environ, **CODE_ENV}, capture_output=True, text=True, timeout=300)
    assert "lost a SIGINT" in result.stdout and "Epoch 2/20" not in result.stdout  # stopped within epoch 1
    assert result.returncode == 130
    lines = result.stderr.splitlines()  # no "Exception ignored in" report: one line
    assert len(lines) == 1 and lines[0].startswith("interrupted: this run wrote none of its outputs"), lines
    assert (previous_model / "model.keras").read_bytes() == b"previous model"
    assert tree(previous_log) == log_before


@pytest.mark.slow
@pytest.mark.parametrize("precision, rate, loss", [  # both precisions that auto picks on a CPU
    ("float32", 10, "reached "),  # the weights explode, the loss stays finite (about 5e9): caught by its size
    ("mixed_bfloat16", 10, "reached "),
    ("float32", 1e5, ""),  # NaN (1e30 in bfloat16 on a CPU with AVX512-BF16 kept a finite loss of 2e30)
])
def test_a_run_that_diverges_stops_training_without_a_model(processed_dir, workdir, previous_log, precision, rate,
                                                             loss, run_here):
    log_before = tree(previous_log)
    write_params(workdir, train__epochs=3, train__learning_rate=rate, train__precision=precision)
    result = run_here("stages.train", processed_dir / "train", processed_dir / "val", "models/model.keras",
                      "log", cwd=workdir)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: training diverged in epoch 1: the training loss {loss}"), lines
    assert lines[0].endswith("no model was saved. Lower train.learning_rate (or use train.schedule: cosine with a "
                             "warm-up) and run again"), lines
    assert not (workdir / "models").exists() and tree(previous_log) == log_before


@pytest.mark.parametrize("classes, logs, message", [
    (10, {"loss": float("nan")}, "training diverged in epoch 2: the training loss became nan"),
    (10, {"loss": 0.3, "val_loss": float("inf")}, "training diverged in epoch 2: the validation loss became inf"),
    (10, {"loss": 1.977e30}, "training diverged in epoch 2: the training loss reached 1.977e+30, over 3 times "
                             "the 2.303 of a uniform guess"),
    (10, {"loss": 6.91}, "training diverged in epoch 2: the training loss reached 6.91, over 3 times "
                         "the 2.303 of a uniform guess"),  # 3 ln 10 = 6.908
    (2, {"loss": 2.1}, "training diverged in epoch 2: the training loss reached 2.1, over 3 times "
                       "the 0.693 of a uniform guess"),  # 3 ln 2 = 2.079: the bound follows the class count
    (10, {"loss": 6.9, "val_loss": 50.0}, None),  # under the bound; a validation loss far above ln K is no divergence
    (2, {"loss": 2.07}, None),
    (10, {"accuracy": 0.1}, None),
])
def test_divergence_is_a_non_finite_loss_or_a_training_loss_over_three_uniform_guesses(classes, logs, message):
    stop = train.StopOnDivergence(classes)
    if message is None:
        stop.on_epoch_end(1, logs)
        return
    with pytest.raises(UserError) as raised:
        stop.on_epoch_end(1, logs)
    assert str(raised.value).startswith(message + "; no model was saved")


@pytest.mark.slow
@pytest.mark.ci_prerequisite
def test_full_disk_is_one_line_and_keeps_the_previous_model(processed_dir, workdir, run_here):
    write_params(workdir, train__epochs=1)
    with mounted_tmpfs(workdir / "models", "size=1m") as models:
        (models / "model.keras").write_bytes(b"previous model")
        result = run_here("stages.train", processed_dir / "train", processed_dir / "val",
                          "models/model.keras", "log", cwd=workdir)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: cannot write ") and "the disk is full" in lines[0], lines
        assert os.listdir(models) == ["model.keras"]
        assert (models / "model.keras").read_bytes() == b"previous model"


@pytest.mark.slow
@pytest.mark.ci_prerequisite
def test_read_only_output_folder_is_one_line(processed_dir, workdir, run_here):
    write_params(workdir, train__epochs=1)
    with mounted_tmpfs(workdir / "models", "ro", "size=1m") as models:
        result = run_here("stages.train", processed_dir / "train", processed_dir / "val",
                          "models/model.keras", "log", cwd=workdir)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: cannot write ") and "read-only" in lines[0], lines
        assert os.listdir(models) == []


class SignalAt(keras.callbacks.Callback):
    """Records each batch hook called; at batch `at` of the first epoch, a signal arrives whose KeyboardInterrupt
    was lost (as in a __del__), leaving only runner.RECEIVED to tell."""

    def __init__(self, at):
        super().__init__()
        self.at, self.seen = at, []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append(("train", batch))
        if batch == self.at:
            runner.RECEIVED.append("SIGINT")

    def on_test_batch_end(self, batch, logs=None):
        self.seen.append(("test", batch))


@pytest.fixture
def lost_signal(monkeypatch):
    monkeypatch.setattr(runner, "RECEIVED", [])


def test_a_signal_whose_keyboardinterrupt_was_lost_stops_keras_fit_at_the_next_batch(lost_signal):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    x = np.random.default_rng(0).random((64, 4), dtype=np.float32)
    y = np.eye(2, dtype=np.float32)[np.arange(64) % 2]
    signal_at = SignalAt(2)
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):
        model.fit(x, y, batch_size=8, epochs=3, validation_data=(x, y), verbose=0,
                  callbacks=[signal_at, train.StopOnSignal()])
    assert signal_at.seen == [("train", 0), ("train", 1), ("train", 2)]


@pytest.mark.slow  # a multi-worker fit in process: about 3 CPU-s
def test_a_signal_whose_keyboardinterrupt_was_lost_stops_multi_worker_fit_at_the_next_step(sharded_dir,
                                                                                           lost_signal):
    """multi_worker.fit's own loop calls the batch hooks, as Keras' fit() does: here on one worker, with the
    default strategy, on the sharded split (16 of its images a step)."""
    from mnist_cnn import multi_worker
    from mnist_cnn.shards import open_split
    split = open_split(sharded_dir / "train")
    params = {**DEFAULTS["train"], "batch_size": 16, "steps_per_execution": 1, "epochs": 2}
    model = network.build_model(DEFAULTS["model"], (28, 28, 1), 10)
    steps = multi_worker.steps_per_epoch(split, 16, 1)
    signal_at = SignalAt(3)
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):
        multi_worker.fit(model, train.tf.distribute.get_strategy(), keras.optimizers.Adam(), split,
                         open_split(sharded_dir / "val"), params, 0, [signal_at, train.StopOnSignal()], (0, 1),
                         steps)
    assert steps > 4 and signal_at.seen == [("train", 0), ("train", 1), ("train", 2), ("train", 3)]
