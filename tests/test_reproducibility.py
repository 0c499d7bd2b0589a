"""Same results across runs, clones, branches and machines: the DVC workflows of the README, for real.

A baseline project (generated data, one short epoch) is run once, committed and pushed to a
local-directory remote; each test works in its own `git clone` of it.
"""
import json
import os
import sys
import time

import pytest
import yaml

from conftest import GIT, REPO, STAGES, make_tiny_project, sh, stages_run
from mnist_cnn.params import set_dotted

CHECK = [sys.executable, os.path.join(REPO, "tools", "check_reproduction.py")]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """A committed tiny run, pushed with its run cache to a local remote: (repo, remote)."""
    root = make_tiny_project(tmp_path_factory.mktemp("baseline"))
    remote = tmp_path_factory.mktemp("remote")
    sh(root, "dvc", "remote", "add", "-d", "storage", str(remote))
    sh(root, "dvc", "repro")
    sh(root, *GIT, "add", "-A")
    sh(root, *GIT, "commit", "-qm", "baseline run")
    sh(root, "dvc", "push", "--run-cache")
    return root, remote


@pytest.fixture
def clone(baseline, tmp_path):
    root = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(baseline[0]), str(root))
    return root


def set_param(root, key, value):
    """Change one dotted param in a project's params.yaml, as a user editing it would."""
    path = root / "params.yaml"
    params = set_dotted(yaml.safe_load(path.read_text()), {key: value})
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def test_pull_gives_a_clone_everything_without_rerunning(clone):
    assert not (clone / "models" / "model.keras").exists()
    sh(clone, "dvc", "pull")
    for path in ("data/raw/npz.npz", "data/processed/train.npz", "models/model.keras", "metrics/evaluate.json",
                 "plots/confusion_matrix.png"):
        assert (clone / path).exists(), path
    assert "Data and pipelines are up to date" in sh(clone, "dvc", "status").stdout
    assert stages_run(sh(clone, "dvc", "repro").stdout) == []


def test_repro_pull_skips_stages_computed_elsewhere(clone):
    output = sh(clone, "dvc", "repro", "--pull").stdout
    assert stages_run(output) == []
    assert (clone / "models" / "model.keras").exists()


def test_run_cache_skips_work_done_before_here_and_elsewhere(baseline, clone, tmp_path):
    # Machine A tries another validation split, then goes back and forth: the second visit of a
    # configuration restores every stage from the local run cache instead of running it.
    machine_a = tmp_path / "machine_a"
    sh(tmp_path, "git", "clone", "-q", str(baseline[0]), str(machine_a))
    sh(machine_a, "dvc", "pull")
    set_param(machine_a, "data.val_split", 0.25)
    assert stages_run(sh(machine_a, "dvc", "repro").stdout) == ["preprocess", "train", "evaluate", "plot"]
    set_param(machine_a, "data.val_split", 0.2)
    sh(machine_a, "dvc", "repro")
    set_param(machine_a, "data.val_split", 0.25)
    output = sh(machine_a, "dvc", "repro").stdout
    assert stages_run(output) == []
    for stage in ("preprocess", "train", "evaluate", "plot"):
        assert f"Stage '{stage}' is cached - skipping run" in output
    sh(machine_a, "dvc", "push", "--run-cache")
    # Machine B asks for the same split: the data stage comes from the remote's run cache. DVC does
    # not push the `cache: false` metrics of a run-cache entry, so stages with metrics run again.
    set_param(clone, "data.val_split", 0.25)
    output = sh(clone, "dvc", "repro", "--pull").stdout
    assert "Stage 'preprocess' is cached - skipping run" in output
    assert stages_run(output) == ["train", "evaluate", "plot"]
    assert (clone / "metrics" / "evaluate.json").read_text() == (machine_a / "metrics" / "evaluate.json").read_text()


def test_branch_comparison_diffs_metrics_params_and_plots(clone):
    sh(clone, "dvc", "pull")
    sh(clone, *GIT, "checkout", "-q", "-b", "more-epochs")
    set_param(clone, "train.epochs", 2)
    assert stages_run(sh(clone, "dvc", "repro").stdout) == ["train", "evaluate", "plot"]
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


def test_experiment_run_and_show(clone):
    sh(clone, "dvc", "pull")
    output = sh(clone, "dvc", "exp", "run", "-n", "two-epochs", "-S", "train.epochs=2").stdout
    assert stages_run(output) == ["train", "evaluate", "plot"]
    shown = json.loads(sh(clone, "dvc", "exp", "show", "--json").stdout)
    experiments = {exp["name"]: exp for commit in shown for exp in commit.get("experiments") or []}
    data = experiments["two-epochs"]["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["train"]["epochs"] == 2
    assert 0 <= data["metrics"]["metrics/evaluate.json"]["data"]["accuracy"] <= 1
    table = sh(clone, "dvc", "exp", "show", "--md").stdout
    assert "train.epochs" in table and "accuracy" in table


@pytest.mark.parametrize("preset", ["fast", "best"])
def test_preset_runs_as_an_experiment(clone, preset):
    """docs, "Presets": dvc exp run -n NAME $(python -m tools.preset NAME) sets exactly the preset's params."""
    sh(clone, "dvc", "pull")
    options = sh(REPO, sys.executable, "-m", "tools.preset", preset).stdout.split()
    output = sh(clone, "dvc", "exp", "run", "-n", preset, *options).stdout
    assert stages_run(output) == ["train", "evaluate", "plot"]
    with open(os.path.join(REPO, "presets", f"{preset}.yaml")) as f:
        wanted = yaml.safe_load(f)
    shown = json.loads(sh(clone, "dvc", "exp", "show", "--json").stdout)
    experiments = {exp["name"]: exp for commit in shown for exp in commit.get("experiments") or []}
    params = experiments[preset]["revs"][0]["data"]["params"]["params.yaml"]["data"]
    for key, value in wanted.items():
        node = params
        for part in key.split("."):
            node = node[part]
        assert node == value, key


def test_queued_experiments_all_complete(clone):
    sh(clone, "dvc", "pull")
    for dpi in ("60", "70"):  # plot params: only the plot stage runs, so the queue itself is what is timed
        sh(clone, "dvc", "exp", "run", "--queue", "-n", f"dpi-{dpi}", "-S", f"plot.dpi={dpi}")
    sh(clone, "dvc", "queue", "start", "--jobs", "1")
    deadline = time.time() + 300
    while time.time() < deadline:
        status = sh(clone, "dvc", "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    assert status.count("Success") == 2, status
    shown = json.loads(sh(clone, "dvc", "exp", "show", "--json").stdout)
    names = {exp["name"] for commit in shown for exp in commit.get("experiments") or []}
    assert {"dpi-60", "dpi-70"} <= names


def test_check_tolerates_other_threads_and_onednn_but_not_real_changes(clone):
    sh(clone, "dvc", "pull")
    assert sh(clone, *CHECK).returncode == 0  # the pulled run is the committed one
    set_param(clone, "train.threads", 1)
    assert stages_run(sh(clone, "dvc", "repro", env={"TF_ENABLE_ONEDNN_OPTS": "0"}).stdout)[:2] == [
        "train", "evaluate"]
    # Generated data and one short epoch move more than MNIST does: a tolerance scaled for them.
    result = sh(clone, *CHECK, "--accuracy-tolerance", "0.1", "--loss-tolerance", "0.1")
    assert result.returncode == 0 and result.stdout.count(" ok") == 2, result.stdout
    path = clone / "metrics" / "evaluate.json"
    metrics = json.loads(path.read_text())
    metrics["accuracy"] -= 0.2
    path.write_text(json.dumps(metrics))
    result = sh(clone, *CHECK, "--accuracy-tolerance", "0.1", "--loss-tolerance", "0.1", check=False)
    assert result.returncode == 1 and "OUT OF TOLERANCE" in result.stdout
    assert result.stderr.strip() == "error: metrics/evaluate.json differs from HEAD by more than the tolerance"


def test_forced_rerun_is_bit_identical_on_the_same_machine(clone):
    sh(clone, "dvc", "pull")
    lock = (clone / "dvc.lock").read_text()
    assert stages_run(sh(clone, "dvc", "repro", "--force").stdout) == list(STAGES)
    assert (clone / "dvc.lock").read_text() == lock
    assert sh(clone, *CHECK, "--accuracy-tolerance", "0", "--loss-tolerance", "0").returncode == 0
