"""The GitHub Actions workflow we ship for users: valid against the workflow schema, and doing its job."""
import os
import subprocess
import sys

import yaml

from conftest import REPO

WORKFLOW = os.path.join(REPO, ".github", "workflows", "pull-request.yaml")


def test_workflow_is_valid_against_the_github_schema():
    checker = os.path.join(os.path.dirname(sys.executable), "check-jsonschema")
    result = subprocess.run([checker, "--builtin-schema", "vendor.github-workflows", WORKFLOW],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_tests_reproduces_and_comments_the_diffs():
    with open(WORKFLOW) as f:
        workflow = yaml.safe_load(f)
    assert "pull_request" in workflow[True]  # YAML 1.1 reads the key `on` as True
    assert workflow["permissions"]["pull-requests"] == "write"
    steps = workflow["jobs"]["run"]["steps"]
    runs = "\n".join(step.get("run", "") for step in steps)
    for command in ("pip install -r requirements-dev.txt", "pytest", "dvc repro",
                    'dvc metrics diff "$BASE" --md', 'dvc params diff "$BASE" --md', "gh pr comment"):
        assert command in runs, command
    checkout = next(step for step in steps if step.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0
    assert all(os.path.exists(os.path.join(REPO, name)) for name in
               ("requirements.txt", "requirements-dev.txt", "constraints.txt"))
