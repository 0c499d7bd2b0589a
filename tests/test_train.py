"""The train stage: the notebook's network, every param used, real learning, deterministic results."""
import json
import os
import signal

import keras
import numpy as np
import pytest

import common
import train
from conftest import REPO, mounted_tmpfs, run_stage, start_stage, wait_for_line, write_params

DEFAULTS = common.load_params(f"{REPO}/params.yaml")


def test_default_model_is_the_notebooks_network():
    model = train.build_model(DEFAULTS["model"], (28, 28, 1), 10)
    summary = [(type(layer).__name__, layer.output.shape[1:]) for layer in model.layers]
    assert summary == [
        ("Conv2D", (26, 26, 32)), ("MaxPooling2D", (13, 13, 32)),
        ("Conv2D", (11, 11, 64)), ("MaxPooling2D", (5, 5, 64)),
        ("Dropout", (5, 5, 64)), ("Flatten", (1600,)),
        ("Dense", (128,)), ("Dropout", (128,)), ("Dense", (10,)),
    ]
    assert [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)] == [0.25, 0.5]
    assert model.layers[0].kernel_size == (3, 3) and model.layers[1].pool_size == (2, 2)
    assert model.layers[-1].activation.__name__ == "softmax"
    assert model.count_params() == 225_034


@pytest.mark.parametrize("key, value", [
    ("conv_filters", [16, 32]), ("conv_filters", [32, 64, 64]), ("kernel_size", 5), ("pool_size", 3),
    ("conv_dropout", 0.1), ("dense_units", [256]), ("dense_units", [128, 64]), ("dense_dropout", 0.3),
    ("convs_per_block", 2), ("padding", "same"), ("batch_norm", True),
    ("augment", {"rotation": 10, "shift": 0, "zoom": 0}), ("augment", {"rotation": 0, "shift": 0.1, "zoom": 0}),
    ("augment", {"rotation": 0, "shift": 0, "zoom": 0.1}),
])
def test_every_model_param_changes_the_network(key, value):
    default = train.build_model(DEFAULTS["model"], (28, 28, 1), 10).get_config()
    changed = train.build_model({**DEFAULTS["model"], key: value}, (28, 28, 1), 10).get_config()
    assert default != changed


def test_options_beyond_the_notebook_build_the_network_they_name():
    params = {**DEFAULTS["model"], "convs_per_block": 2, "padding": "same", "batch_norm": True,
              "augment": {"rotation": 10, "shift": 0.1, "zoom": 0.1}}
    model = train.build_model(params, (28, 28, 1), 10)
    names = [type(layer).__name__ for layer in model.layers]
    assert names[0] == "RandomAffine"
    conv = ["Conv2D", "FusedBatchNormalization", "Activation"]
    assert names[1:] == conv * 2 + ["MaxPooling2D"] + conv * 2 + ["MaxPooling2D", "Dropout", "Flatten", "Dense",
                                                                    "FusedBatchNormalization", "Activation",
                                                                    "Dropout", "Dense"]
    assert model.layers[2].output.shape[1:] == (28, 28, 32)  # same padding keeps 28 x 28
    x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    augment = model.layers[0]  # random in training, the identity at inference
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(augment(x, training=False)), x)
    assert not np.array_equal(keras.ops.convert_to_numpy(augment(x, training=True)), x)


def test_augmentation_off_passes_the_images_through_unchanged_from_its_epoch_on():
    params = {**DEFAULTS["model"], "augment": {"rotation": 10, "shift": 0.1, "zoom": 0.1, "off_last_epochs": 1}}
    model = train.build_model(params, (28, 28, 1), 10)
    callback = train.AugmentationOff(first=2)
    callback.set_model(model)
    x = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
    for epoch, unchanged in ((0, False), (1, False), (2, True), (3, True)):
        callback.on_epoch_begin(epoch)
        y = keras.ops.convert_to_numpy(model.layers[0](x, training=True))
        assert np.array_equal(y, x) is unchanged, epoch  # exactly the pixels: no resampling blur


def test_augmentation_off_ends_training_on_unaugmented_images(processed_dir, workdir):
    augment = {"model__augment__rotation": 10, "model__augment__shift": 0.1, "train__epochs": 2}
    on, _ = train_once(processed_dir, workdir, **augment)
    off, log = train_once(processed_dir, workdir, **augment, model__augment__off_last_epochs=1)
    assert not all(np.array_equal(a, b) for a, b in zip(on, off))  # the second epoch saw other images
    assert json.loads(log)["step"] == 1  # both epochs ran


def test_augmentation_off_for_every_epoch_is_a_user_error(processed_dir, workdir):
    write_params(workdir, model__augment__zoom=0.1, model__augment__off_last_epochs=10)
    result = run_stage("train.py", processed_dir / "train.npz", processed_dir / "val.npz", "m.keras", "log",
                       cwd=workdir)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: model.augment.off_last_epochs = 10 leaves no augmented epoch of train.epochs = 10; "
        "make it smaller than train.epochs"]
    assert not (workdir / "m.keras").exists()


def centroids(images):
    """(row, column) of each image's centre of brightness, from the image's centre."""
    rows, cols = np.mgrid[:28, :28] - 13.5
    mass = images[..., 0].sum(axis=(1, 2))
    return np.stack([(images[..., 0] * rows).sum(axis=(1, 2)) / mass,
                     (images[..., 0] * cols).sum(axis=(1, 2)) / mass], axis=1)


@pytest.mark.parametrize("rotation, zoom, shift", [(10, 0, 0), (0, 0.1, 0), (0, 0, 0.1)])
def test_random_affine_rotates_zooms_and_shifts_within_its_limits(rotation, zoom, shift):
    x = np.zeros((256, 28, 28, 1), np.float32)
    x[:, 13:15, 19:21] = 1  # a 2x2 dot 6 pixels right of the centre
    keras.utils.set_random_seed(0)
    y = keras.ops.convert_to_numpy(train.RandomAffine(rotation, zoom, shift)(x, training=True))
    row, col = centroids(y).T
    radius, angle = np.hypot(row, col), np.degrees(np.arctan2(row, col))
    if rotation:  # on a circle around the centre, turned both ways up to 10 degrees
        np.testing.assert_allclose(radius, 6, atol=0.05)
        assert angle.min() < -8 and angle.max() > 8 and np.abs(angle).max() <= 10
    if zoom:  # along its ray, closer and further, by up to 10%
        np.testing.assert_allclose(angle, 0, atol=0.01)
        assert radius.min() < 6 / 1.08 and radius.max() > 6 / 0.92
        assert radius.min() >= 6 / 1.1 - 0.01 and radius.max() <= 6 / 0.9 + 0.01
    if shift:  # moved by up to 10% of 28 pixels on each axis
        assert np.abs(row).max() <= 2.8 + 0.01 and np.abs(col - 6).max() <= 2.8 + 0.01
        assert row.min() < -2.4 and row.max() > 2.4 and (col - 6).min() < -2.4 and (col - 6).max() > 2.4
    keras.utils.set_random_seed(0)
    again = keras.ops.convert_to_numpy(train.RandomAffine(rotation, zoom, shift)(x, training=True))
    np.testing.assert_array_equal(again, y)  # seeded: the same draws


def test_random_affine_resamples_once_so_images_stay_sharper_than_keras_three_layers():
    rng = np.random.default_rng(0)
    x = np.zeros((256, 28, 28, 1), np.float32)
    for image, (row, col) in zip(x, rng.integers(8, 20, (256, 2))):
        image[row - 1:row + 1, 4:24] = 1  # a 2-pixel stroke
        image[4:24, col - 1:col + 1] = 1
    keras.utils.set_random_seed(0)
    once = keras.ops.convert_to_numpy(train.RandomAffine(10, 0.1, 0.1)(x, training=True))
    three = x
    for layer in (keras.layers.RandomRotation(10 / 360, fill_mode="constant"),
                  keras.layers.RandomZoom(0.1, fill_mode="constant"),
                  keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant")):
        three = keras.ops.convert_to_numpy(layer(three, training=True))

    def peak(images):  # the mean of each image's 20 brightest pixels: 1 before any blur
        return np.sort(images.reshape(len(images), -1), axis=1)[:, -20:].mean()

    assert peak(once) > peak(three) + 0.03


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_fused_batch_norm_computes_what_keras_batch_norm_does(precision):
    fused = train.FusedBatchNormalization(momentum=0.9, dtype=precision)
    plain = keras.layers.BatchNormalization(momentum=0.9, dtype=precision)
    rng = np.random.default_rng(0)
    x, weights = rng.normal(2, 3, (2, 16, 7, 7, 8)).astype(np.float32)
    for layer in (fused, plain):
        layer.build(x.shape)
        layer.set_weights([np.linspace(0.5, 2, 8), np.linspace(-1, 1, 8), np.zeros(8), np.ones(8)])
    outputs = []
    for layer in (fused, plain):
        with train.tf.GradientTape() as tape:
            inputs = train.tf.constant(x)
            tape.watch(inputs)
            y = layer(inputs, training=True)
            loss = train.tf.reduce_sum(train.tf.cast(y, "float32") * weights)
        outputs.append([keras.ops.convert_to_numpy(v).astype(np.float32)
                        for v in [y, *tape.gradient(loss, [inputs, layer.gamma, layer.beta])]])
    tolerance = 1e-4 if precision == "float32" else 0.05  # bfloat16 keeps 8 bits of mantissa
    for a, b in zip(*outputs):  # outputs, then the gradients of the input, gamma and beta
        np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance * np.abs(b).max())
    for a, b in zip(fused.get_weights()[2:], plain.get_weights()[2:]):  # moving mean and variance
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_saved_model_has_keras_own_layers_only_and_predicts_the_same(tmp_path):
    params = {**DEFAULTS["model"], "batch_norm": True,
              "augment": {"rotation": 10, "shift": 0.1, "zoom": 0.1}}
    model = train.build_model(params, (28, 28, 1), 10)
    x = np.random.default_rng(0).random((64, 28, 28, 1), dtype=np.float32)
    model.compile("adam", "categorical_crossentropy")
    model.fit(x, keras.utils.to_categorical(np.arange(64) % 10, 10), epochs=1, verbose=0)
    train.save_model(train.inference_model(model), tmp_path / "m.keras")
    loaded = common.load_model(tmp_path / "m.keras")  # safe mode, nothing from train.py registered
    names = [type(layer).__name__ for layer in loaded.layers]
    assert "BatchNormalization" in names and "FusedBatchNormalization" not in names
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers[1:]]  # no augmentation
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    without_batch_norm = train.build_model(DEFAULTS["model"], (28, 28, 1), 10)
    assert train.inference_model(without_batch_norm) is without_batch_norm  # saved as before


def test_precision_sets_the_hidden_layers_dtype_and_keeps_softmax_float32():
    model = train.build_model(DEFAULTS["model"], (28, 28, 1), 10, "mixed_bfloat16")
    assert {layer.compute_dtype for layer in model.layers[:-1]} == {"bfloat16"}
    assert {layer.variable_dtype for layer in model.layers} == {"float32"}  # weights stay float32
    assert model.layers[-1].compute_dtype == "float32"
    assert model(np.zeros((2, 28, 28, 1), np.float32)).dtype == "float32"


@pytest.mark.parametrize("cpuinfo, native", [
    ("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n", True),  # AMD Zen 4, Cooper Lake
    ("flags\t\t: fpu avx512f amx_bf16 amx_tile\n", True),  # Sapphire Rapids
    ("Features\t: fp asimd sve bf16 i8mm\n", True),  # Arm: Graviton 3, Neoverse V1
    ("flags\t\t: fpu sse avx2 avx512f avx512_vnni\n", False),  # Skylake-X: no bfloat16
    ("Features\t: fp asimd\n", False),
])
def test_bfloat16_is_native_only_where_the_cpu_says_so(tmp_path, cpuinfo, native):
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    assert train.cpu_has_bf16(tmp_path / "cpuinfo") is native


def test_auto_precision_follows_the_hardware(tmp_path):
    assert train.cpu_has_bf16(tmp_path / "no such file") is False  # not Linux: float32
    expected = "mixed_bfloat16" if train.cpu_has_bf16() else "float32"  # the tests run without a GPU
    assert train.resolve_precision("auto") == expected
    for choice in ("float32", "mixed_bfloat16", "mixed_float16"):
        assert train.resolve_precision(choice) == choice


def test_cosine_schedule_warms_up_then_decays_to_zero():
    params = {**DEFAULTS["train"], "schedule": "cosine", "warmup": 0.1, "learning_rate": 0.004, "epochs": 2,
              "batch_size": 100}
    schedule = train.learning_rate(params, train_size=1000)  # 10 steps per epoch: 20 steps, 2 warming up
    rates = [float(schedule(step)) for step in range(21)]
    assert rates[0] == 0 and rates[1] == pytest.approx(0.002) and rates[2] == pytest.approx(0.004)
    assert all(a > b for a, b in zip(rates[2:], rates[3:])) and rates[20] == pytest.approx(0, abs=1e-9)
    assert train.learning_rate({**params, "schedule": "constant"}, 1000) == 0.004


def test_impossible_network_is_a_user_error(processed_dir, workdir):
    write_params(workdir, model__conv_filters=[8, 8, 8, 8], model__pool_size=3)
    result = run_stage("train.py", processed_dir / "train.npz", processed_dir / "val.npz", "m.keras", "log",
                       cwd=workdir)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: model.* params give an impossible network")
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
    train.main([str(processed_dir / "train.npz"), str(processed_dir / "val.npz"), str(directory / "m.keras"),
                str(directory / "log")])
    weights = keras.saving.load_model(directory / "m.keras").get_weights()
    return weights, (directory / "log" / "metrics.json").read_text()


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


def test_missing_training_data_is_one_line(workdir):
    result = run_stage("train.py", "nope/train.npz", "nope/val.npz", "m.keras", "log", cwd=workdir)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: nope/train.npz not found: run `dvc repro preprocess` to create it"]


@pytest.fixture
def previous_model(workdir):
    """A models/ folder holding the 'previous run' model, to be left intact by a failed run."""
    models = workdir / "models"
    models.mkdir()
    (models / "model.keras").write_bytes(b"previous model")
    return models


def ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def interrupt_training(processed_dir, workdir, signal_number, started_ignoring_sigint=False):
    write_params(workdir, train__epochs=200, train__batch_size=8)
    process = start_stage("train.py", processed_dir / "train.npz", processed_dir / "val.npz",
                          "models/model.keras", "log", cwd=workdir,
                          preexec_fn=ignore_sigint if started_ignoring_sigint else None)
    wait_for_line(process, "Epoch 2/")
    process.send_signal(signal_number)
    stdout, stderr = process.communicate(timeout=60)
    return process.returncode, stderr


@pytest.mark.parametrize("signal_number, started_ignoring_sigint", [
    (signal.SIGINT, False), (signal.SIGTERM, False),
    (signal.SIGINT, True),  # as a background job of a script starts: Python alone would ignore Ctrl-C
])
def test_interrupted_training_leaves_the_previous_model(processed_dir, workdir, previous_model, signal_number,
                                                        started_ignoring_sigint):
    returncode, stderr = interrupt_training(processed_dir, workdir, signal_number, started_ignoring_sigint)
    assert returncode == 130
    assert stderr.strip().splitlines()[-1].startswith("interrupted: outputs from before this run are left as they were")
    assert "Traceback" not in stderr
    assert os.listdir(previous_model) == ["model.keras"]
    assert (previous_model / "model.keras").read_bytes() == b"previous model"


def test_full_disk_is_one_line_and_keeps_the_previous_model(processed_dir, workdir):
    with mounted_tmpfs(workdir / "models", "size=1m") as models:
        (models / "model.keras").write_bytes(b"previous model")
        result = run_stage("train.py", processed_dir / "train.npz", processed_dir / "val.npz",
                           "models/model.keras", "log", cwd=workdir)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1].startswith("error: cannot write ")
        assert "the disk is full" in result.stderr and "Traceback" not in result.stderr
        assert os.listdir(models) == ["model.keras"]
        assert (models / "model.keras").read_bytes() == b"previous model"


def test_read_only_output_folder_is_one_line(processed_dir, workdir):
    with mounted_tmpfs(workdir / "models", "ro", "size=1m") as models:
        result = run_stage("train.py", processed_dir / "train.npz", processed_dir / "val.npz",
                           "models/model.keras", "log", cwd=workdir)
        assert result.returncode == 1
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: cannot write ") and "read-only" in last, result.stderr
        assert os.listdir(models) == []


def test_network_takes_input_shape_and_class_count_from_the_data():
    model = train.build_model(DEFAULTS["model"], (32, 32, 3), 5)
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 5)
