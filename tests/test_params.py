"""params.yaml: the schema, one-line errors for bad values, and the presets."""
import glob
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from bench.presets import CANDIDATES
from conftest import REPO, commit_all, run_stage, write_params
from mnist_cnn import datasets
from mnist_cnn.errors import UserError
from mnist_cnn.params import CUSTOM_NPZ, FOLDER, PARAMS_SCHEMA, PUBLISHED_DATASETS, flatten, load_params


def test_repository_params_are_valid():
    params = load_params(os.path.join(REPO, "params.yaml"))
    notebook = {"epochs": 10, "batch_size": 64, "learning_rate": 0.001, "schedule": "constant"}
    assert {key: params["train"][key] for key in notebook} == notebook
    assert params["data"]["val_split"] == 0.2
    assert params["model"]["augment"] == {"rotation": 0, "shift": 0, "zoom": 0, "noise": 0, "erase": 0,
                                          "stroke": 0, "solarize": 0, "elastic": 0, "elastic_sigma": 4,
                                          "off_last_epochs": 0}
    assert (params["model"]["batch_norm"], params["model"]["standardize"], params["model"]["convs_per_block"]) == (
        False, False, 1)


def test_presets_and_their_candidates_are_valid_params(tmp_path):
    """Each presets/*.yaml and each candidate bench/presets.py scored names existing params with allowed values,
    and changes what it says; each preset is one of the candidates, scored in a bench/results/presets*.json."""
    with open(CANDIDATES) as f:
        candidates = yaml.safe_load(f)
    scored = {}  # one results file per machine the bench ran on (bench/presets.py --results)
    for path in sorted(glob.glob(os.path.join(REPO, "bench", "results", "presets*.json"))):
        with open(path) as f:
            scored.update(json.load(f)["candidates"])
    presets = {}
    for name in os.listdir(os.path.join(REPO, "presets")):
        with open(os.path.join(REPO, "presets", name)) as f:
            presets[name] = yaml.safe_load(f)
    for name, preset in [*presets.items(), *candidates.items()]:
        overrides = {key.replace(".", "__"): value for key, value in preset.items()}
        write_params(tmp_path, **overrides)
        params = flatten(load_params(tmp_path / "params.yaml"))
        assert {key: params[key] for key in preset} == preset, name
    for name, preset in presets.items():
        chosen = [candidate for candidate, values in candidates.items() if values == preset]
        assert chosen and scored[chosen[0]]["params"] == preset, name


def test_preset_tool_prints_dvc_options_and_names_the_presets_it_knows():
    preset = [sys.executable, "-m", "tools.preset"]
    options = subprocess.run(preset + ["fast"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert options[:4] == ["-S", "model.standardize=true", "-S", "model.conv_filters=[16,32]"]  # no spaces: the
    assert options[::2] == ["-S"] * (len(options) // 2) and "train.epochs=4" in options  # shell keeps values whole
    best = subprocess.run(preset + ["best"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert ("-S model.augment.shift=0.05 -S model.augment.zoom=0.1 -S model.augment.noise=0.1 "
            "-S model.augment.erase=0.3") in best
    assert best.endswith(" -S model.conv_dropout=0.25 -S model.dense_dropout=0.5\n")  # fast's keys, as committed
    unknown = subprocess.run(preset + ["fastest"], cwd=REPO, capture_output=True, text=True)
    assert unknown.returncode == 1 and unknown.stderr.strip() == "preset: no preset 'fastest'; known: best, fast"


def test_a_preset_also_resets_what_only_other_presets_set_to_the_committed_params(tmp_path, monkeypatch):
    """`dvc exp run` leaves an experiment's params in the workspace: best after fast must not keep fast's dropout.
    Each key only another preset sets comes from params.yaml as last committed, not as the workspace has it;
    outside a git repository, from the workspace's."""
    from tools import preset
    for folder in ("repo", "plain"):
        (tmp_path / folder / "presets").mkdir(parents=True)
        (tmp_path / folder / "presets" / "small.yaml").write_text("model.conv_dropout: 0\ntrain.epochs: 4\n")
        (tmp_path / folder / "presets" / "big.yaml").write_text("model.convs_per_block: 2\ntrain.epochs: 9\n")
        (tmp_path / folder / "params.yaml").write_text(
            "model:\n  conv_dropout: 0.25\n  convs_per_block: 1\n  dense_dropout: 0.5\ntrain:\n  epochs: 10\n")
    commit_all(str(tmp_path / "repo"))
    for folder in ("repo", "plain"):  # the workspace as `dvc exp run -S ...` of small leaves it
        (tmp_path / folder / "params.yaml").write_text(
            "model:\n  conv_dropout: 0\n  convs_per_block: 1\n  dense_dropout: 0.5\ntrain:\n  epochs: 4\n")
    monkeypatch.setattr(preset, "REPO", str(tmp_path / "repo"))
    monkeypatch.setattr(preset, "PRESETS", str(tmp_path / "repo" / "presets"))
    assert preset.options("big") == ["-S model.convs_per_block=2", "-S train.epochs=9", "-S model.conv_dropout=0.25"]
    assert preset.options("small") == ["-S model.conv_dropout=0", "-S train.epochs=4", "-S model.convs_per_block=1"]
    monkeypatch.setattr(preset, "REPO", str(tmp_path / "plain"))
    monkeypatch.setattr(preset, "PRESETS", str(tmp_path / "plain" / "presets"))
    assert preset.options("big") == ["-S model.convs_per_block=2", "-S train.epochs=9", "-S model.conv_dropout=0"]
    (tmp_path / "plain" / "presets" / "small.yaml").unlink()  # a preset alone resets nothing: git is not asked
    monkeypatch.setattr(preset, "committed_params", None)
    assert preset.options("big") == ["-S model.convs_per_block=2", "-S train.epochs=9"]


def test_schema_covers_exactly_the_keys_of_params_yaml():
    with open(os.path.join(REPO, "params.yaml")) as f:
        keys = set(flatten(yaml.safe_load(f)))
    assert keys == set(PARAMS_SCHEMA)


def test_schema_names_every_dataset_of_the_registry():
    assert set(PUBLISHED_DATASETS) == set(datasets.DATASETS)
    assert {CUSTOM_NPZ, FOLDER}.isdisjoint(datasets.DATASETS)


@pytest.mark.parametrize("key, value, expected", [
    ("train__epochs", -1, "train.epochs = -1 is not allowed; it must be >= 1"),
    ("train__epochs", 2.5, "train.epochs = 2.5 is not allowed; it must be an integer"),
    ("data__val_split", 1.0, "data.val_split = 1.0 is not allowed; it must be < 1"),
    ("data__val_split", 0, "data.val_split = 0 is not allowed; it must be > 0"),
    ("data__dataset", "cifar",
     "data.dataset = 'cifar' is not allowed; it must be one of mnist, fashion_mnist, folder, npz"),
    ("model__conv_filters", [], "model.conv_filters = [] is not allowed; it must be a non-empty list"),
    ("train__learning_rate", "fast", "train.learning_rate = 'fast' is not allowed; it must be a number"),
    ("data__val_split", float("nan"), "data.val_split = nan is not allowed; it must be a finite number"),
    ("train__learning_rate", float("nan"), "train.learning_rate = nan is not allowed; it must be a finite number"),
    ("train__learning_rate", float("inf"), "train.learning_rate = inf is not allowed; it must be a finite number"),
    ("model__augment__rotation", float("-inf"), "model.augment.rotation = -inf is not allowed; it must be a finite"),
    ("train__learning_rate", 10**400, f"train.learning_rate = {10**400} is not allowed; it must be <= 1000000.0"),
    ("data__path", None, "data.path = None is not allowed; it must be a path (a non-empty string)"),
    ("data__path", "", "data.path = '' is not allowed; it must be a path (a non-empty string)"),
    ("robustness__corruptions", ["fog", "fog"], "robustness.corruptions = ['fog', 'fog'] is not allowed; it must be a "
                                                "list of one or more distinct names from shot_noise, impulse_noise, "),
    ("robustness__corruptions", ["snow"], "robustness.corruptions = ['snow'] is not allowed; it must be a list of"),
    ("robustness__corruptions", [], "robustness.corruptions = [] is not allowed; it must be a list of one or more"),
    ("robustness__examples", 11, "robustness.examples = 11 is not allowed; it must be <= 10"),
])
def test_bad_param_is_one_line_naming_key_value_and_rule(workdir, key, value, expected):
    write_params(workdir, **{key: value})
    with pytest.raises(UserError, match="^" + re.escape("params.yaml: " + expected)):
        load_params()


def test_unknown_and_missing_keys_are_reported(workdir):
    params = write_params(workdir)
    params["train"]["epoch"] = 3
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(UserError, match="unknown key 'train.epoch'"):
        load_params()
    del params["train"]["epoch"], params["train"]["epochs"]
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(UserError, match="missing key 'train.epochs'"):
        load_params()


def test_a_key_given_twice_is_one_line(workdir):
    text = (workdir / "params.yaml").read_text().replace("  epochs: 10\n", "  epochs: 10\n  epochs: 3\n", 1)
    (workdir / "params.yaml").write_text(text)
    line = text.splitlines().index("  epochs: 3") + 1
    with pytest.raises(UserError) as error:
        load_params()
    assert str(error.value) == f"params.yaml: key 'epochs' is given twice (again on line {line}); keep one of them"


def test_every_number_in_the_schema_refuses_nan_and_infinity():
    numbers = [key for key, check in PARAMS_SCHEMA.items() if check("x") in ("a number", "an integer")]
    assert len(numbers) >= 25
    for key in numbers:
        for value in (float("nan"), float("inf"), float("-inf")):
            assert PARAMS_SCHEMA[key](value) is not None, (key, value)


def test_every_number_in_the_schema_has_an_upper_bound():
    """10**21 as a batch size, steps_per_execution or shuffle buffer passed, then ended in a traceback."""
    numbers = [key for key, check in PARAMS_SCHEMA.items() if check("x") in ("a number", "an integer")]
    lists = [key for key, check in PARAMS_SCHEMA.items() if str(check("x")).startswith("a non-empty list")]
    assert lists == ["model.conv_filters", "model.dense_units"]
    for key in numbers:
        assert PARAMS_SCHEMA[key](10**21) is not None and PARAMS_SCHEMA[key](1e21) is not None, key
    for key in lists:
        assert PARAMS_SCHEMA[key]([10**21]) is not None and PARAMS_SCHEMA[key]([8, 10**6]) is not None, key


@pytest.mark.parametrize("value, read", [
    (1e-5, 1e-5),  # DVC writes 1e-05, which YAML 1.1 (PyYAML) reads as the string '1e-05'
    (2.5e-7, 2.5e-7),
    (3e-4, 3e-4),
    (1000.0, 1000.0),
    (12, 12),  # an int: the train stage turns it into the float Keras wants
])
def test_values_as_dvc_writes_them_are_read_as_dvc_reads_them(workdir, value, read):
    """`dvc exp run -S train.learning_rate=...` rewrites params.yaml with DVC's own YAML writer."""
    from dvc.utils.serialize import modify_yaml, parse_yaml
    with modify_yaml("params.yaml") as params:
        params["train"]["learning_rate"] = value
    text = (workdir / "params.yaml").read_text()
    assert load_params()["train"]["learning_rate"] == read == parse_yaml(text, "params.yaml")["train"]["learning_rate"]


@pytest.mark.parametrize("line, problem", [
    ("  epochs: 010", None),  # YAML 1.2: ten, as DVC reads it (YAML 1.1: eight)
    ("  epochs: 1:30", "train.epochs = '1:30' is not allowed; it must be an integer"),  # YAML 1.1: ninety
    ("  epochs: 1e21", "train.epochs = 1e+21 is not allowed; it must be an integer"),
    ("  epochs: 1000000000000000000000", "train.epochs = 1000000000000000000000 is not allowed; it must be <= 10000"),
    ("  epochs: yes", "train.epochs = 'yes' is not allowed; it must be an integer"),  # YAML 1.1: true
])
def test_params_yaml_is_read_as_yaml_1_2(workdir, line, problem):
    text = (workdir / "params.yaml").read_text().replace("  epochs: 10\n", line + "\n", 1)
    (workdir / "params.yaml").write_text(text)
    if problem is None:
        assert load_params()["train"]["epochs"] == 10
        return
    with pytest.raises(UserError) as error:
        load_params()
    assert str(error.value) == f"params.yaml: {problem}"


@pytest.mark.stage
def test_stage_reports_bad_param_in_one_line_without_traceback(workdir):
    write_params(workdir, data__val_split=1.5)
    result = run_stage("stages.preprocess", "raw.npz", "out", cwd=workdir)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml: data.val_split = 1.5 is not allowed; it must be < 1"]
    assert not (workdir / "out").exists()


def test_each_kind_of_rule_at_its_bounds():
    """The validators alone, at and just past each bound, open and closed, and with their defaults."""
    from mnist_cnn.params import _choice, _int_list, _number, _path
    closed = _number(1, 10, integer=True)
    assert (closed(1), closed(10), closed(0), closed(11)) == (None, None, ">= 1", "<= 10")
    assert (closed(2.0), closed(True), closed("3"), closed(None)) == ("an integer",) * 4
    between = _number(0, 1, low_open=True, high_open=True)
    assert (between(0), between(1), between(1e-9), between(1 - 1e-9), between(0.5)) == ("> 0", "< 1", None, None, None)
    real = _number(0, 1)  # floats allowed, both bounds closed, None refused: the defaults
    assert (real(0), real(1), real(0.25), real(False), real(None)) == (None, None, None, "a number", "a number")
    assert (real(float("nan")), real(float("inf"))) == ("a finite number",) * 2
    assert (_number()(-1e300), _number()(1e300)) == (None, None)  # no bounds: any finite number
    nullable = _number(1, 5, integer=True, nullable=True)
    assert (nullable(None), nullable(0), nullable(6)) == (None, ">= 1", "<= 5")
    sizes = _int_list()  # 1 to 4096, any length
    assert (sizes([1]), sizes([4096, 1, 7])) == (None, None)
    refused = "a non-empty list of integers from 1 to 4096"
    assert [sizes(v) for v in ([0], [4097], [], [True], [2.0], (1, 2), "12", None)] == [refused] * 8
    pair = _int_list(2, low=5, high=6)
    assert (pair([5, 6]), pair([5]), pair([5, 6, 6]), pair([4, 5])) == (
        None, "a list of 2 integers", "a list of 2 integers", "a non-empty list of integers from 5 to 6")
    assert (_choice("a", 1)("a"), _choice("a", 1)(1), _choice("a", 1)("b")) == (None, None, "one of a, 1")
    assert (_path("data/own"), _path(" "), _path(""), _path(None), _path(3)) == (
        None, *["a path (a non-empty string)"] * 4)


def test_flatten_and_set_dotted_name_params_at_any_depth():
    from mnist_cnn.params import set_dotted
    tree = {"a": {"b": {"c": 1}, "d": [2]}, "e": 3}
    assert flatten(tree) == {"a.b.c": 1, "a.d": [2], "e": 3}
    assert flatten({"x": {"y": 1}}, "p.") == {"p.x.y": 1}
    assert set_dotted(tree, {"a.b.c": 4, "e": 5, "a.f": 6}) is tree
    assert tree == {"a": {"b": {"c": 4}, "d": [2], "f": 6}, "e": 5}


def test_a_missing_broken_or_shapeless_params_file_is_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    with pytest.raises(UserError) as error:
        load_params(path)
    assert str(error.value) == f"{path} not found: run the stages from the repository root (dvc repro does)"
    path.write_text("train: [1, 2\n")
    with pytest.raises(UserError) as error:
        load_params(path)
    assert str(error.value) == f"{path} is not valid YAML (while parsing a flow sequence): fix the syntax"
    path.write_text("- train\n- data\n")
    with pytest.raises(UserError) as error:
        load_params(path)
    assert str(error.value) == f"{path} must hold a mapping of sections (data, model, train, ...)"


def test_an_unknown_or_missing_key_is_named_with_the_keys_known(workdir):
    params = write_params(workdir)
    params["seed2"] = 1
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(UserError) as error:
        load_params()
    assert str(error.value) == "params.yaml: unknown key 'seed2'; known keys: " + ", ".join(PARAMS_SCHEMA)
    assert ", data.dataset, data.path, " in str(error.value)
    del params["seed2"], params["plot"]["dpi"]
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(UserError) as error:
        load_params()
    assert str(error.value) == "params.yaml: missing key 'plot.dpi'; restore it from the repository's params.yaml"


def test_params_are_plain_python_values(workdir):
    """Read with the safe loader: dicts, lists, floats and ints (the round-trip loader's subclasses carry comments)."""
    params = load_params()
    assert type(params) is dict and type(params["train"]) is dict
    assert type(params["model"]["conv_filters"]) is list and type(params["train"]["learning_rate"]) is float
    assert type(params["train"]["epochs"]) is int
