"""Same results across runs, clones and machines: remotes, the run cache, the tolerance, byte-identical reruns.

A baseline project (generated data, one short epoch) is run once, committed and pushed to a
local-directory remote (conftest's baseline fixture); each test works in its own `git clone` of it.
"""
import json
import os
import sys

import pytest

from conftest import REPO, STAGES, set_param, sh, stages_run

pytestmark = pytest.mark.slow
CHECK = [sys.executable, os.path.join(REPO, "tools", "check_reproduction.py")]


def test_pull_gives_a_clone_everything_without_rerunning(clone):
    assert not (clone / "models" / "model.keras").exists()
    sh(clone, "dvc", "pull")
    for path in ("data/raw/dataset.npz", "data/processed/train.npz", "models/model.keras", "metrics/evaluate.json",
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

