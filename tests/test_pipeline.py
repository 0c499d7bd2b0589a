"""End to end: the real `dvc` commands on a copy of the project with generated data."""
import csv
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import copy_project, tiny_arrays, write_params

STAGES = ("download", "preprocess", "train", "evaluate", "plot")
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]


def sh(cwd, *command):
    """Run a command in the project with the test's Python first on PATH, as an activated venv would."""
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def stages_run(output):
    return [s for s in STAGES if f"Running stage '{s}'" in output]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A fresh clone's files plus a generated dataset, in a git repo, after one `dvc repro`."""
    root = tmp_path_factory.mktemp("project")
    copy_project(root)
    np.savez(root / "tiny.npz", **tiny_arrays(n_train=300, n_test=100))
    write_params(root, data__dataset="npz", data__path="tiny.npz", train__epochs=1, train__batch_size=16)
    sh(root, *GIT, "init", "-q")
    sh(root, *GIT, "add", "-A")
    sh(root, *GIT, "commit", "-qm", "tiny project")
    first = sh(root, "dvc", "repro")
    return root, first


def test_repro_runs_every_stage_and_writes_every_output(project):
    root, first = project
    assert stages_run(first) == list(STAGES)
    with open(root / "dvc.yaml") as f:
        pipeline = yaml.safe_load(f)
    for stage in pipeline["stages"].values():
        for section in ("outs", "metrics"):
            for out in stage.get(section, []):
                path = next(iter(out)) if isinstance(out, dict) else out
                path = path.replace("${data.dataset}", "npz")
                assert (root / path).exists(), path
    metrics = json.loads((root / "metrics" / "evaluate.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1 and metrics["loss"] > 0
    assert json.loads((root / "metrics" / "train" / "metrics.json").read_text())["step"] == 0
    with open(root / "metrics" / "predictions.csv") as f:
        assert len(list(csv.DictReader(f))) == 100
    for png in ("samples", "training_curves", "confusion_matrix", "misclassified"):
        with Image.open(root / "plots" / f"{png}.png") as image:
            assert image.format == "PNG"


def test_metrics_and_plots_commands_work(project):
    root, _ = project
    shown = json.loads(sh(root, "dvc", "metrics", "show", "--json"))
    files = next(iter(shown.values()))["data"]
    assert "accuracy" in files["metrics/evaluate.json"]["data"]
    assert "eval" in files["metrics/train/metrics.json"]["data"]
    sh(root, "dvc", "plots", "show", "-o", "html")
    page = (root / "html" / "index.html").read_text()
    assert "Confusion matrix" in page and "Accuracy" in page and "samples.png" in page


def test_lock_records_params_and_interpolated_dataset(project):
    root, _ = project
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert lock["stages"]["download"]["params"]["params.yaml"] == {"data.dataset": "npz", "data.path": "tiny.npz"}
    assert set(lock["stages"]["train"]["params"]["params.yaml"]) == {"seed", "model", "train"}


def test_second_repro_runs_nothing_quickly(project):
    root, _ = project
    start = time.perf_counter()
    output = sh(root, "dvc", "repro")
    elapsed = time.perf_counter() - start
    assert stages_run(output) == [] and "Data and pipelines are up to date" in output
    assert elapsed < 5, elapsed


def test_plot_param_reruns_only_plot(project):
    root, _ = project
    write_params(root, data__dataset="npz", data__path="tiny.npz", train__epochs=1, train__batch_size=16,
                 plot__dpi=80)
    assert stages_run(sh(root, "dvc", "repro")) == ["plot"]


def test_epochs_rerun_train_evaluate_plot_only(project):
    root, _ = project
    write_params(root, data__dataset="npz", data__path="tiny.npz", train__epochs=2, train__batch_size=16,
                 plot__dpi=80)
    assert stages_run(sh(root, "dvc", "repro")) == ["train", "evaluate", "plot"]
    assert json.loads((root / "metrics" / "train" / "metrics.json").read_text())["step"] == 1


def test_forced_rerun_reproduces_every_output_byte_for_byte(project):
    root, _ = project
    before = (root / "dvc.lock").read_text()
    pngs = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in (root / "plots").iterdir()}
    assert stages_run(sh(root, "dvc", "repro", "--force")) == list(STAGES)
    assert (root / "dvc.lock").read_text() == before  # every md5 of every output is the same
    assert {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in (root / "plots").iterdir()} == pngs
