"""The GitHub Actions workflow we ship for users: valid against the workflow schema, and doing its job."""
import os
import re
import shlex
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


def readme_test_commands():
    """The README's way to run the tests (Quickstart): the commands of its line that installs requirements-dev.txt."""
    with open(os.path.join(REPO, "README.md")) as f:
        quickstart = f.read().split("## Quickstart", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    line = next(line for line in quickstart.splitlines() if "requirements-dev.txt" in line)
    return [command.strip() for command in line.split("&&")]


# What a run step may hold, line by line: simple commands (words, quoted strings, redirections), and a group
# `{ ... } > file`. GitHub runs a step as `bash -e {0}`, without pipefail: a pipe (`pytest | tee log`), `||`, `&&`,
# `;`, `&`, `!`, a command substitution, a conditional, `set`, `trap` or `exit` can each let a failure pass
ALLOWED_OPERATORS = {"<", ">", ">>"}
REFUSED_WORDS = {"set", "trap", "exit", "return", "if", "then", "else", "elif", "fi", "while", "until", "do", "done",
                 "for", "case", "esac", "!", "true", ":", "eval", "exec", "source", ".", "function"}


def unchecked_line(line):
    """Why a line of a run step could end without failing on a failed command, or None when it cannot."""
    try:
        lexer = shlex.shlex(re.sub(r"\$\{\{.*?\}\}", "expression", line), posix=True, punctuation_chars=";&|()<>!")
        tokens = list(lexer)
    except ValueError as e:
        return f"cannot be read as simple commands ({e})"
    operators = [token for token in tokens if token and set(token) <= set(";&|()<>!")]
    if set(operators) - ALLOWED_OPERATORS:
        return f"operator {' '.join(sorted(set(operators) - ALLOWED_OPERATORS))}"
    words = [token for token in tokens if token not in ("{", "}")]
    if words and words[0] in REFUSED_WORDS:
        return f"{words[0]}"
    if re.search(r"(?<!\\)(\$\(|`)", line):  # an escaped \` is a backquote character
        return "a command substitution"
    return None


def failures_are_hidden(workflow):
    """Where a failing command would not fail the job: anything outside the allow-list above, a step or job that
    may fail (continue-on-error) or runs under another shell, and a test step that is not the README's."""
    hidden = []
    if "defaults" in workflow:
        hidden.append("workflow defaults (a shell of its own)")
    for name, job in workflow["jobs"].items():
        for key in ("continue-on-error", "defaults"):
            if key in job:
                hidden.append(f"job {name}: {key}")
        steps = job["steps"]
        for step in steps:
            label = step.get("name", step.get("run", step.get("uses")))
            for key in ("continue-on-error", "shell"):
                if key in step:
                    hidden.append(f"step {label}: {key}")
            joined = re.sub(r"\\\n", " ", step.get("run", ""))
            for line in joined.splitlines():
                problem = unchecked_line(line)
                if problem:
                    hidden.append(f"step {label}: {line.strip()!r}: {problem}")
        install, test = readme_test_commands()
        runs = [step.get("run", "").strip() for step in steps]
        if install not in runs or runs[runs.index(install) + 1:][:1] != [test]:
            hidden.append(f"job {name}: no step runs {test!r} alone, right after {install!r}, as the README says")
        elif "if" in steps[runs.index(test)]:
            hidden.append(f"job {name}: the test step runs only if {steps[runs.index(test)]['if']}")
    return hidden


def test_workflow_lets_every_failure_fail_the_job():
    assert readme_test_commands() == ["pip install -r requirements-dev.txt", "pytest"]
    assert failures_are_hidden(load_workflow()) == []


@pytest.mark.parametrize("run, step_options", [
    ("pytest | tee log", {}), ("pytest || echo failed", {}), ("pytest || true", {}), ("pytest || :", {}),
    ("set +e\npytest", {}), ("pytest; true", {}), ("pytest &", {}), ("! pytest", {}), ("echo $(pytest)", {}),
    ("if pytest; then echo ok; fi", {}), ("pytest -x", {}), ("pytest -m 'not slow'", {}), ("pytest\nexit 0", {}),
    ("pytest", {"continue-on-error": True}), ("pytest", {"shell": "bash {0}"}), ("pytest", {"if": "false"}),
])
def test_a_workflow_that_hides_failures_is_caught(run, step_options):
    workflow = load_workflow()
    step = next(step for step in workflow["jobs"]["run"]["steps"] if step.get("run") == "pytest")
    step.update(run=run, **step_options)
    assert failures_are_hidden(workflow) != []


@pytest.mark.parametrize("run", ["dvc repro | tee repro.log", "dvc repro || echo failed", "dvc repro &&\\\n echo ok",
                                 "{\n  dvc repro\n} || true"])
def test_any_step_that_hides_a_failure_is_caught(run):
    workflow = load_workflow()
    next(step for step in workflow["jobs"]["run"]["steps"] if step.get("run") == "dvc repro")["run"] = run
    assert failures_are_hidden(workflow) != []


def test_workflow_tests_reproduces_and_reports_the_diffs():
    workflow = load_workflow()
    assert "pull_request" in workflow[True]  # YAML 1.1 reads the key `on` as True
    assert workflow["permissions"]["pull-requests"] == "write"
    steps = workflow["jobs"]["run"]["steps"]
    runs = "\n".join(step.get("run", "") for step in steps)
    for command in ("pip install -r requirements-dev.txt", "pytest", "dvc repro",
                    'dvc metrics diff "$BASE" --md', 'dvc params diff "$BASE" --md', "gh pr comment",
                    'dvc metrics diff "$BASE" --all --md --targets metrics/robustness.json metrics/evaluate.json'):
        assert command in runs, command
    assert 'dvc plots diff "$BASE" -o plots-diff' in runs
    upload = next(step for step in steps if step.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["with"]["path"] == "plots-diff" and upload["id"] == "plots"
    assert steps.index(upload) < steps.index(report_step(steps))
    checkout = next(step for step in steps if step.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0
    assert all(os.path.exists(os.path.join(REPO, name)) for name in
               ("requirements.txt", "requirements-dev.txt", "constraints.txt"))


def report_step(steps):
    return next(step for step in steps if "> report.md" in step.get("run", ""))


def comment_step(steps):
    return next(step for step in steps if "gh pr comment" in step.get("run", ""))


# The `${{ ... }}` expressions the run steps use, for pull request 7 into main
EXPRESSIONS = {"github.base_ref": "main", "github.event.pull_request.number": "7", "github.token": "a-token",
               "steps.plots.outputs.artifact-url": "https://github.com/alice/mnist-cnn/actions/runs/1/artifacts/2"}


def run_step(step, cwd, stand_ins):
    """A run step as GitHub runs it (bash -eo pipefail), its expressions filled in, stand-ins first on PATH."""
    def fill(text):
        return re.sub(r"\$\{\{\s*(.+?)\s*\}\}", lambda match: EXPRESSIONS[match[1]], text)
    env = {**os.environ, **{name: fill(value) for name, value in step.get("env", {}).items()},
           "GITHUB_STEP_SUMMARY": str(cwd / "summary.md"), "PATH": f"{stand_ins}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", fill(step["run"])], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=60)


def stand_in(folder, name, script):
    path = folder / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


def test_the_report_goes_to_the_job_summary_and_the_comment(tmp_path):
    """The report step's script with a dvc that prints what it was asked; then the comment step's gh gets it."""
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    stand_in(stand_ins, "dvc", 'echo "| dvc $* |"')
    stand_in(stand_ins, "gh", 'printf "%s\\n" "$@" > gh-args; cp "$5" gh-body')
    (tmp_path / "summary.md").write_text("earlier step\n")
    steps = load_workflow()["jobs"]["run"]["steps"]
    result = run_step(report_step(steps), tmp_path, stand_ins)
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("## Pipeline results against `main`\n") and result.stdout == report
    lines = report.splitlines()
    assert "| dvc metrics diff origin/main --md |" in lines and "| dvc params diff origin/main --md |" in lines
    # robustness and calibration, whether they changed or not: the mean accuracy under corruption and the ECE
    targets = "--targets metrics/robustness.json metrics/evaluate.json"
    assert f"| dvc metrics diff origin/main --all --md {targets} |" in lines
    assert lines.index("### Robustness and calibration") > lines.index("### Metrics")
    assert f"[`dvc plots diff` against `main`]({EXPRESSIONS['steps.plots.outputs.artifact-url']})" in report
    assert (tmp_path / "summary.md").read_text() == "earlier step\n" + report  # appended: other steps write there too
    result = run_step(comment_step(steps), tmp_path, stand_ins)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "gh-args").read_text().split() == ["pr", "comment", "7", "--body-file", "report.md"]
    assert (tmp_path / "gh-body").read_text() == report


def condition_holds(condition, context):
    """A step's `if:` as GitHub evaluates it: here only `path == path` or `!=`, strings compared ignoring case."""
    match = re.fullmatch(r"\s*([\w.]+)\s*(==|!=)\s*([\w.]+)\s*", condition)
    assert match, f"condition_holds cannot read {condition!r}: teach it"

    def value(path):
        node = context
        for key in path.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        return node.lower() if isinstance(node, str) else node
    return (value(match[1]) == value(match[3])) == (match[2] == "==")


def pull_request_from(head):
    """The `github` context of a pull request into alice/mnist-cnn from the repository head."""
    return {"github": {"repository": "alice/mnist-cnn", "event": {"pull_request": {
        "number": 7, "head": {"repo": {"full_name": head, "fork": head != "alice/mnist-cnn"}},
        "base": {"repo": {"full_name": "alice/mnist-cnn"}}}}}}


@pytest.mark.parametrize("head, comments", [("alice/mnist-cnn", True), ("Alice/MNIST-cnn", True),
                                            ("bob/mnist-cnn", False)])
def test_only_a_pull_request_from_this_repository_is_commented(head, comments):
    """A fork's pull request gets a read-only token, so `gh pr comment` would fail: that step is skipped there,
    and every other step (tests, pipeline, report to the job summary) runs for it all the same."""
    steps = load_workflow()["jobs"]["run"]["steps"]
    assert condition_holds(comment_step(steps)["if"], pull_request_from(head)) is comments
    assert [step for step in steps if "if" in step] == [comment_step(steps)]


SKIPPING = '''
import pytest

@pytest.mark.ci_prerequisite
def test_needs_root():
    pytest.skip("cannot mount a tmpfs here")

def test_plain_skip():
    pytest.skip("not a prerequisite of CI")
'''


ONLY_CI = {"CI": "true", "GITHUB_ACTIONS": "true"}  # a GitHub runner: CI, but nobody installed the prerequisites


@pytest.mark.stage
@pytest.mark.parametrize("env, outcome", [({"MNIST_CNN_CI_PREREQUISITES": "1", **ONLY_CI}, "1 failed, 1 skipped"),
                                          (ONLY_CI, "2 skipped"), ({}, "2 skipped")])
def test_a_skipped_ci_prerequisite_fails_only_where_ci_run_provides_it(tmp_path, env, outcome):
    """tests/ci_prerequisites.py: a skipped ci_prerequisite test fails where .ci/run installed its prerequisites
    (MNIST_CNN_CI_PREREQUISITES=1), and skips anywhere else, CI=true or not; a plain skip is always a skip."""
    (tmp_path / "test_skips.py").write_text(SKIPPING)
    inherited = {name: value for name, value in os.environ.items()
                 if name not in ("MNIST_CNN_CI_PREREQUISITES", *ONLY_CI)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "ci_prerequisites", "-m", "",
                             "-o", "markers=ci_prerequisite", "-rfs", "test_skips.py"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300,
                            env={**inherited, **env, "PYTHONPATH": os.path.join(REPO, "tests")})
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("=" * 5) and f" {outcome} in " in summary, result.stdout
    if "failed" in outcome:
        assert ("FAILED test_skips.py::test_needs_root - skipped where .ci/run provides its prerequisite "
                "(MNIST_CNN_CI_PREREQUISITES=1): cannot mount a tmpfs here") in result.stdout, result.stdout


def test_only_ci_run_as_root_says_it_provided_the_prerequisites():
    """The shipped workflow runs on GitHub's runners, which have none of them: it must not claim them."""
    with open(WORKFLOW) as f:
        assert "MNIST_CNN_CI_PREREQUISITES" not in f.read()
    with open(os.path.join(REPO, ".ci", "run")) as f:
        script = f.read()
    as_root = re.search(r'^if \[ "\$\(id -u\)" = 0 \].*?^fi$', script, re.DOTALL | re.MULTILINE)[0]
    assert script.count("export MNIST_CNN_CI_PREREQUISITES=") == 1
    assert "  export MNIST_CNN_CI_PREREQUISITES=1\n" in as_root
