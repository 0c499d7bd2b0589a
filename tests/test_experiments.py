"""The DVC workflows for comparing runs, for real: branches, experiments, presets and the queue.

Each test works in its own `git clone` of a committed, pushed tiny run (conftest's baseline fixture).
"""
import csv
import io
import json
import os
import sys
import time

import pytest
import yaml

from conftest import GIT, REPO, set_param, sh, stages_run

pytestmark = pytest.mark.slow


def test_branch_comparison_diffs_metrics_params_and_plots(clone):
    sh(clone, "dvc", "pull")
    sh(clone, *GIT, "checkout", "-q", "-b", "more-epochs")
    set_param(clone, "train.epochs", 2)
    assert stages_run(sh(clone, "dvc", "repro").stdout) == ["train", "evaluate", "export", "plot"]
    sh(clone, *GIT, "commit", "-qam", "two epochs")

    params = json.loads(sh(clone, "dvc", "params", "diff", "main", "--json").stdout)
    assert params["params.yaml"] == {"train.epochs": {"old": 1, "new": 2, "diff": 1}}
    metrics = json.loads(sh(clone, "dvc", "metrics", "diff", "main", "--json").stdout)
    evaluate = metrics["metrics/evaluate.json"]
    assert {"old", "new", "diff"} <= set(evaluate["loss"])
    assert evaluate["loss"]["old"] != evaluate["loss"]["new"]
    assert metrics["metrics/train/metrics.json"]["step"] == {"old": 0, "new": 1, "diff": 1}
    table = sh(clone, "dvc", "metrics", "diff", "main", "--md").stdout
    assert "| metrics/evaluate.json" in table and "loss" in table

    sh(clone, "dvc", "plots", "diff", "main", "-o", "compare")
    page = (clone / "compare" / "index.html").read_text()
    assert "main" in page and "workspace" in page and "Confusion matrix" in page


# best trains 12 epochs, the last 3 unaugmented; here 2 and 1: the test is about DVC taking the preset
SHORTER = {"best": {"train.epochs": 2, "model.augment.off_last_epochs": 1}}


# best only: it uses every option fast does (a slimmer net, the cosine schedule) and more, and the queue is
# the slowest test of the suite; tests/test_params.py checks both presets' params
PRESETS = ("best",)


def preset_options(name):
    """docs, "Presets": the -S options of `python -m tools.preset NAME`, split as the shell splits them."""
    options = sh(REPO, sys.executable, "-m", "tools.preset", name).stdout.split()
    return options + [word for key, value in SHORTER.get(name, {}).items() for word in ("-S", f"{key}={value}")]


def wait_for_queue(clone, count, timeout=600):
    """dvc queue status until nothing is queued or running; the status table, after checking count succeeded."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = sh(clone, "dvc", "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    assert status.count("Success") == count, status
    return status


def test_presets_and_a_grid_sweep_from_the_queue_all_land_in_exp_show(clone):
    """A preset (dvc exp run --queue -n NAME $(python -m tools.preset NAME)) and a 2x2 grid in DVC's sweep
    syntax (docs/reproducing.md, "Sweeps") queued together and run by two workers: every experiment completes
    with its params, and `dvc exp show --csv` holds every grid point with its metrics, sorted by validation
    accuracy (never test accuracy)."""
    sh(clone, "dvc", "pull")
    for name in PRESETS:
        sh(clone, "dvc", "exp", "run", "--queue", "-n", name, *preset_options(name))
    sh(clone, "dvc", "exp", "run", "--queue", "-S", "train.learning_rate=0.0005,0.001", "-S", "train.batch_size=16,32")
    assert sh(clone, "dvc", "queue", "status").stdout.count("Queued") == len(PRESETS) + 4
    sh(clone, "dvc", "queue", "start", "-j", "2")
    wait_for_queue(clone, len(PRESETS) + 4)

    shown = json.loads(sh(clone, "dvc", "exp", "show", "--json").stdout)
    experiments = {exp["name"]: exp for commit in shown for exp in commit.get("experiments") or []}
    for name in PRESETS:
        with open(os.path.join(REPO, "presets", f"{name}.yaml")) as f:
            wanted = {**yaml.safe_load(f), **SHORTER.get(name, {})}
        data = experiments[name]["revs"][0]["data"]
        for key, value in wanted.items():
            node = data["params"]["params.yaml"]["data"]
            for part in key.split("."):
                node = node[part]
            assert node == value, (name, key)
        assert 0 <= data["metrics"]["metrics/evaluate.json"]["data"]["accuracy"] <= 1, name
    table = sh(clone, "dvc", "exp", "show", "--md").stdout
    assert all(name in table for name in PRESETS) and "train.epochs" in table and "accuracy" in table

    shown = sh(clone, "dvc", "exp", "show", "--csv", "--sort-by", "metrics/train/metrics.json:eval.accuracy",
               "--sort-order", "desc").stdout
    rows = [row for row in csv.DictReader(io.StringIO(shown))
            if row["Experiment"] and row["Experiment"] not in PRESETS]
    assert sorted((float(r["train.learning_rate"]), int(r["train.batch_size"])) for r in rows) == [
        (0.0005, 16), (0.0005, 32), (0.001, 16), (0.001, 32)]
    validation = [float(r["eval.accuracy"]) for r in rows]
    assert validation == sorted(validation, reverse=True)
    for row in rows:
        assert 0 <= float(row["accuracy"]) <= 1 and float(row["loss"]) > 0  # test metrics, from evaluate
        assert float(row["onnx.agreement"]) >= 0.999  # every point was exported and checked
