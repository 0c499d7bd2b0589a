"""The shared module: params validation, atomic and deterministic writing."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

import common
from conftest import REPO, run_stage, write_params


def test_repository_params_are_valid():
    params = common.load_params(os.path.join(REPO, "params.yaml"))
    notebook = {"epochs": 10, "batch_size": 64, "learning_rate": 0.001, "schedule": "constant"}
    assert {key: params["train"][key] for key in notebook} == notebook
    assert params["data"]["val_split"] == 0.2
    assert params["model"]["augment"] == {"rotation": 0, "shift": 0, "zoom": 0, "off_last_epochs": 0}
    assert (params["model"]["batch_norm"], params["model"]["convs_per_block"]) == (False, 1)


def test_presets_are_valid_params(tmp_path):
    """Each presets/*.yaml names existing params with allowed values, and changes what it says."""
    for name in os.listdir(os.path.join(REPO, "presets")):
        with open(os.path.join(REPO, "presets", name)) as f:
            preset = yaml.safe_load(f)
        overrides = {key.replace(".", "__"): value for key, value in preset.items()}
        write_params(tmp_path, **overrides)
        params = common._flatten(common.load_params(tmp_path / "params.yaml"))
        assert {key: params[key] for key in preset} == preset, name


def test_preset_tool_prints_dvc_options_and_names_the_presets_it_knows():
    preset = [sys.executable, os.path.join(REPO, "tools", "preset.py")]
    options = subprocess.run(preset + ["fast"], capture_output=True, text=True, check=True).stdout.split()
    assert options[:2] == ["-S", "model.conv_filters=[24,48]"] and options[::2] == ["-S"] * (len(options) // 2)
    assert "train.epochs=2" in options
    best = subprocess.run(preset + ["best"], capture_output=True, text=True, check=True).stdout
    assert "-S model.conv_filters=[32,64]" in best  # no spaces: the shell keeps each value whole
    unknown = subprocess.run(preset + ["fastest"], capture_output=True, text=True)
    assert unknown.returncode == 1 and unknown.stderr.strip() == "preset: no preset 'fastest'; known: best, fast"


def test_schema_covers_exactly_the_keys_of_params_yaml():
    with open(os.path.join(REPO, "params.yaml")) as f:
        keys = set(common._flatten(yaml.safe_load(f)))
    assert keys == set(common.PARAMS_SCHEMA)


@pytest.mark.parametrize("key, value, expected", [
    ("train__epochs", -1, "train.epochs = -1 is not allowed; it must be >= 1"),
    ("train__epochs", 2.5, "train.epochs = 2.5 is not allowed; it must be an integer"),
    ("data__val_split", 1.0, "data.val_split = 1.0 is not allowed; it must be < 1"),
    ("data__val_split", 0, "data.val_split = 0 is not allowed; it must be > 0"),
    ("data__dataset", "cifar", "data.dataset = 'cifar' is not allowed; it must be one of mnist, fashion_mnist, folder, npz"),
    ("model__conv_filters", [], "model.conv_filters = [] is not allowed; it must be a non-empty list"),
    ("train__learning_rate", "fast", "train.learning_rate = 'fast' is not allowed; it must be a number"),
])
def test_bad_param_is_one_line_naming_key_value_and_rule(workdir, key, value, expected):
    write_params(workdir, **{key: value})
    with pytest.raises(common.UserError, match="^params.yaml: " + expected.replace("[", r"\[").replace(
            "]", r"\]").replace(".", r"\.")):
        common.load_params()


def test_unknown_and_missing_keys_are_reported(workdir):
    params = write_params(workdir)
    params["train"]["epoch"] = 3
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(common.UserError, match="unknown key 'train.epoch'"):
        common.load_params()
    del params["train"]["epoch"], params["train"]["epochs"]
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(common.UserError, match="missing key 'train.epochs'"):
        common.load_params()


def test_stage_reports_bad_param_in_one_line_without_traceback(workdir):
    write_params(workdir, data__val_split=1.5)
    result = run_stage("preprocess.py", "raw.npz", "out", cwd=workdir)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: data.val_split = 1.5 is not allowed; it must be < 1"]
    assert not (workdir / "out").exists()


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with common.atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("crash in the middle")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["result.json"]


def test_write_npz_is_byte_deterministic_and_loadable(tmp_path):
    arrays = {"x": np.arange(12, dtype=np.float32).reshape(3, 4), "names": np.array(["a", "b"])}
    common.write_npz(tmp_path / "a.npz", arrays)
    os.utime(tmp_path / "a.npz", (0, 0))
    common.write_npz(tmp_path / "b.npz", {k: v.copy() for k, v in arrays.items()})
    digest = [hashlib.md5((tmp_path / n).read_bytes()).hexdigest() for n in ("a.npz", "b.npz")]
    assert digest[0] == digest[1]
    loaded = common.load_npz(tmp_path / "b.npz")
    np.testing.assert_array_equal(loaded["x"], arrays["x"])
    assert loaded["names"].tolist() == ["a", "b"]


def test_load_npz_explains_missing_and_broken_files(tmp_path):
    with pytest.raises(common.UserError, match="not found: run `dvc repro`"):
        common.load_npz(tmp_path / "none.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(common.UserError, match="is not a readable .npz file"):
        common.load_npz(tmp_path / "bad.npz")
