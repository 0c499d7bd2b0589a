"""Same results across runs, clones and machines: remotes, the run cache, the tolerance, byte-identical reruns.

A baseline project (generated data, one short epoch) is run once, committed and pushed to a
local-directory remote (conftest's baseline fixture); each test works in its own `git clone` of it.
"""
import json
import logging
import os
import sys

import pytest
import yaml

from conftest import GIT, REPO, STAGES, set_param, sh, stages_run

pytestmark = pytest.mark.slow
CHECK = [sys.executable, os.path.join(REPO, "tools", "check_reproduction.py")]


def test_pull_gives_a_clone_everything_without_rerunning(clone):
    assert not (clone / "models" / "model.keras").exists()
    sh(clone, "dvc", "pull")
    for path in ("data/raw/dataset.npz", "data/processed/train", "models/model.keras", "metrics/evaluate.json",
                 "plots/confusion_matrix.png"):
        assert (clone / path).exists(), path
    assert "Data and pipelines are up to date" in sh(clone, "dvc", "status").stdout
    assert stages_run(sh(clone, "dvc", "repro").stdout) == []


def test_repro_pull_skips_stages_computed_elsewhere(clone):
    output = sh(clone, "dvc", "repro", "--pull").stdout
    assert stages_run(output) == []
    assert (clone / "models" / "model.keras").exists()


def test_run_cache_skips_work_done_before_here_and_elsewhere(baseline, clone, tmp_path):
    # Machine A tries another validation split, goes back to the committed run (git and DVC checkouts: nothing
    # runs), then to the split it tried: the second visit restores every stage from the local run cache instead
    # of running it. (Up to evaluate: export and plot are stages like these, and the test is about DVC.)
    machine_a = tmp_path / "machine_a"
    sh(tmp_path, "git", "clone", "-q", str(baseline[0]), str(machine_a))
    sh(machine_a, "dvc", "pull")
    set_param(machine_a, "data.val_split", 0.25)
    assert stages_run(sh(machine_a, "dvc", "repro", "evaluate").stdout) == ["preprocess", "train", "evaluate"]
    sh(machine_a, *GIT, "checkout", "--", ".")  # params.yaml, dvc.lock and the metrics DVC leaves to git
    sh(machine_a, "dvc", "checkout")
    assert "Data and pipelines are up to date" in sh(machine_a, "dvc", "status").stdout
    set_param(machine_a, "data.val_split", 0.25)
    output = sh(machine_a, "dvc", "repro", "evaluate").stdout
    assert stages_run(output) == []
    for stage in ("preprocess", "train", "evaluate"):
        assert f"Stage '{stage}' is cached - skipping run" in output
    sh(machine_a, "dvc", "push", "--run-cache")
    # Machine B asks for the same split: the data stage comes from the remote's run cache. DVC does
    # not push the `cache: false` metrics of a run-cache entry, so stages with metrics run again.
    set_param(clone, "data.val_split", 0.25)
    output = sh(clone, "dvc", "repro", "--pull", "evaluate").stdout
    assert "Stage 'preprocess' is cached - skipping run" in output
    assert stages_run(output) == ["train", "evaluate"]
    assert (clone / "metrics" / "evaluate.json").read_text() == (machine_a / "metrics" / "evaluate.json").read_text()


def test_check_tolerates_other_threads_and_onednn_but_not_real_changes(clone):
    sh(clone, "dvc", "pull")
    assert sh(clone, *CHECK).returncode == 0  # the pulled run is the committed one
    set_param(clone, "train.threads", 1)
    assert stages_run(sh(clone, "dvc", "repro", "evaluate", env={"TF_ENABLE_ONEDNN_OPTS": "0"}).stdout) == [
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


# TensorFlow traces a function's variables in an order that follows memory addresses, and tf2onnx folds
# constants in one too: the SavedModel and ONNX files differ in bytes from run to run, never in what they
# compute (docs/export.md). Every other output, the LiteRT file and export.json included, is bit-identical.
VARYING_BYTES = ("models/saved_model", "models/model.onnx")


def lock_without_varying_bytes(root):
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    outs = lock["stages"]["export"]["outs"]
    assert {out["path"] for out in outs} >= set(VARYING_BYTES)
    lock["stages"]["export"]["outs"] = [out for out in outs if out["path"] not in VARYING_BYTES]
    return lock


def test_forced_rerun_is_bit_identical_on_the_same_machine(clone):
    sh(clone, "dvc", "pull")
    lock = lock_without_varying_bytes(clone)
    export_metrics = (clone / "metrics" / "export.json").read_bytes()
    assert stages_run(sh(clone, "dvc", "repro", "--force").stdout) == list(STAGES)
    assert lock_without_varying_bytes(clone) == lock
    assert (clone / "metrics" / "export.json").read_bytes() == export_metrics
    assert sh(clone, *CHECK, "--accuracy-tolerance", "0", "--loss-tolerance", "0").returncode == 0



@pytest.fixture
def s3_server():
    """A real S3-compatible server on 127.0.0.1 (moto's server mode) with an empty bucket: its endpoint URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **S3_KEYS).create_bucket(Bucket="mnist-cnn")
    try:
        yield endpoint
    finally:
        server.stop()


S3_KEYS = {"aws_access_key_id": "test-key-id", "aws_secret_access_key": "test-secret"}
S3_ENV = {"AWS_ACCESS_KEY_ID": S3_KEYS["aws_access_key_id"], "AWS_SECRET_ACCESS_KEY": S3_KEYS["aws_secret_access_key"],
          "AWS_EC2_METADATA_DISABLED": "true"}  # no network: never ask an EC2 metadata server for keys


def test_s3_remote_carries_a_run_to_another_machine_and_the_registry_finds_the_model(baseline, s3_server,
                                                                                       tmp_path):
    """docs/remotes.md's walk against a real S3 server: machine A pushes data, model and run cache with its keys
    in .dvc/config.local; machine B clones, pulls with its keys in the environment, and has nothing to rerun;
    `dvc artifacts get` fetches the registered model from the same remote."""
    machine_a, machine_b = tmp_path / "machine_a", tmp_path / "machine_b"
    sh(tmp_path, "git", "clone", "-q", str(baseline[0]), str(machine_a))
    sh(machine_a, "dvc", "pull")  # the committed run, from the project's first remote
    sh(machine_a, "dvc", "remote", "add", "-d", "s3", "s3://mnist-cnn/store")
    sh(machine_a, "dvc", "remote", "modify", "s3", "endpointurl", s3_server)
    sh(machine_a, "dvc", "remote", "modify", "--local", "s3", "access_key_id", S3_KEYS["aws_access_key_id"])
    sh(machine_a, "dvc", "remote", "modify", "--local", "s3", "secret_access_key", S3_KEYS["aws_secret_access_key"])
    pushed = sh(machine_a, "dvc", "push", "--run-cache").stdout
    assert "pushed" in pushed, pushed
    sh(machine_a, *GIT, "commit", "-qam", "S3 remote")
    committed = sh(machine_a, *GIT, "show", "HEAD:.dvc/config").stdout
    assert "endpointurl" in committed and "test-secret" not in committed and "test-key-id" not in committed
    assert ".dvc/config.local" not in sh(machine_a, *GIT, "ls-files", ".dvc").stdout

    sh(tmp_path, "git", "clone", "-q", str(machine_a), str(machine_b))
    (machine_b / ".dvc" / "config.local").unlink(missing_ok=True)
    sh(machine_b, "dvc", "pull", env=S3_ENV)
    assert (machine_b / "models" / "model.keras").read_bytes() == (machine_a / "models" / "model.keras").read_bytes()
    assert "Data and pipelines are up to date" in sh(machine_b, "dvc", "status").stdout
    assert stages_run(sh(machine_b, "dvc", "repro", env=S3_ENV).stdout) == []

    # docs/remotes.md, "Model registry": a version is a Git tag in GTO's form, as DVC Studio writes it
    sh(machine_a, *GIT, "tag", "-a", "mnist-cnn@v1.0.0", "-m", "the tiny run")
    fetched = tmp_path / "fetched.keras"
    sh(tmp_path, "dvc", "artifacts", "get", str(machine_a), "mnist-cnn", "-o", str(fetched), env=S3_ENV)
    assert fetched.read_bytes() == (machine_a / "models" / "model.keras").read_bytes()
