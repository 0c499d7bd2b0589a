"""The GitHub Actions workflow we ship for users: valid against the workflow schema, and doing its job."""
import os
import re
import subprocess
import sys

import pytest
import yaml

from conftest import REPO

WORKFLOW = os.path.join(REPO, ".github", "workflows", "pull-request.yaml")


def test_workflow_is_valid_against_the_github_schema():
    checker = os.path.join(os.path.dirname(sys.executable), "check-jsonschema")
    result = subprocess.run([checker, "--builtin-schema", "vendor.github-workflows", WORKFLOW],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def load_workflow(path=WORKFLOW):
    with open(path) as f:
        return yaml.safe_load(f)


def failures_are_hidden(workflow):
    """Where a failing step would not fail the job: continue-on-error, or a command made to succeed anyway."""
    hidden = []
    for name, job in workflow["jobs"].items():
        if job.get("continue-on-error"):
            hidden.append(f"job {name}: continue-on-error")
        for step in job["steps"]:
            command = " ".join(step.get("run", "").split())
            if step.get("continue-on-error"):
                hidden.append(f"step {step.get('name', command)}: continue-on-error")
            if re.search(r"\|\|\s*(true|:|exit 0)(\s|$)|;\s*(true|exit 0)\s*$|set \+e", command):
                hidden.append(f"step {step.get('name', command)}: {command}")
    return hidden


def test_workflow_lets_every_failure_fail_the_job():
    assert failures_are_hidden(load_workflow()) == []


@pytest.mark.parametrize("run, step_options", [
    ("pytest || true", {}), ("pytest || :", {}), ("set +e\npytest", {}), ("pytest; true", {}),
    ("pytest", {"continue-on-error": True}),
])
def test_a_workflow_that_hides_failures_is_caught(run, step_options):
    workflow = load_workflow()
    step = next(step for step in workflow["jobs"]["run"]["steps"] if step.get("run") == "pytest")
    step.update(run=run, **step_options)
    assert failures_are_hidden(workflow) != []


def test_workflow_tests_reproduces_and_comments_the_diffs():
    workflow = load_workflow()
    assert "pull_request" in workflow[True]  # YAML 1.1 reads the key `on` as True
    assert workflow["permissions"]["pull-requests"] == "write"
    steps = workflow["jobs"]["run"]["steps"]
    runs = "\n".join(step.get("run", "") for step in steps)
    for command in ("pip install -r requirements-dev.txt", "pytest", "dvc repro",
                    'dvc metrics diff "$BASE" --md', 'dvc params diff "$BASE" --md', "gh pr comment"):
        assert command in runs, command
    assert 'dvc plots diff "$BASE" -o plots-diff' in runs
    upload = next(step for step in steps if step.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["with"]["path"] == "plots-diff" and upload["id"] == "plots"
    comment = next(step for step in steps if "report.md" in step.get("run", "") and "PLOTS_URL" in step.get("env", {}))
    assert comment["env"]["PLOTS_URL"] == "${{ steps.plots.outputs.artifact-url }}" and "($PLOTS_URL)" in comment["run"]
    assert steps.index(upload) < steps.index(comment)
    checkout = next(step for step in steps if step.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0
    assert all(os.path.exists(os.path.join(REPO, name)) for name in
               ("requirements.txt", "requirements-dev.txt", "constraints.txt"))


SKIPPING = '''
import pytest

@pytest.mark.ci_prerequisite
def test_needs_root():
    pytest.skip("cannot mount a tmpfs here")

def test_plain_skip():
    pytest.skip("not a prerequisite of CI")
'''


@pytest.mark.parametrize("ci, outcome", [("true", "1 failed, 1 skipped"), ("", "2 skipped")])
def test_a_skipped_ci_prerequisite_fails_under_ci_only(tmp_path, ci, outcome):
    """tests/ci_prerequisites.py: where CI=true, a skip of a test whose prerequisite .ci/run installs is a failure."""
    (tmp_path / "test_skips.py").write_text(SKIPPING)
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "ci_prerequisites", "-m", "",
                             "-o", "markers=ci_prerequisite", "test_skips.py"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "CI": ci,
                                                         "PYTHONPATH": os.path.join(REPO, "tests")})
    assert result.stdout.strip().splitlines()[-1].startswith(f"{'=' * 5}") and outcome in result.stdout, result.stdout
