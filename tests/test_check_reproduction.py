"""tools/check_reproduction.py in-process on a tiny git repository: tolerances, the table, the exit codes."""
import json

import pytest

from tools import check_reproduction
from tools.project import commit_all


def write_metrics(root, accuracy, loss, path="metrics/evaluate.json"):
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(json.dumps({"accuracy": accuracy, "loss": loss}))


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A git repository whose HEAD holds accuracy 0.5 and loss 0.25 (exact in binary, so is every change below)."""
    write_metrics(tmp_path, 0.5, 0.25)
    commit_all(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def check(capsys, *argv):
    """Exit code, stdout lines and stderr of one check."""
    code = check_reproduction.main(list(argv))
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_the_table_shows_baseline_run_change_and_tolerance_of_each_metric(repo, capsys):
    write_metrics(repo, 0.75, 0.125)
    code, lines, err = check(capsys, "--accuracy-tolerance", "0.25", "--loss-tolerance", "0.5")
    # a change exactly at the tolerance passes; the loss compares with its own tolerance, not accuracy's
    assert (code, err) == (0, "")
    assert lines == ["metric      baseline  this run    change   allowed",
                     "accuracy      0.5000    0.7500   +0.2500    0.2500  ok",
                     "loss          0.2500    0.1250   -0.1250    0.5000  ok"]


@pytest.mark.parametrize("accuracy, loss, bad", [(0.25, 0.25, "accuracy"), (0.5, 0.0, "loss"), (0.5, 0.5, "loss"),
                                                 (0.625, 0.25, "accuracy")])
def test_a_change_past_its_tolerance_either_way_fails(repo, capsys, accuracy, loss, bad):
    write_metrics(repo, accuracy, loss)
    code, lines, err = check(capsys, "--accuracy-tolerance", "0.0625", "--loss-tolerance", "0.125")
    assert code == 1
    assert err == "error: metrics/evaluate.json differs from HEAD by more than the tolerance\n"
    verdicts = {line.split()[0]: line.endswith("OUT OF TOLERANCE") for line in lines[1:]}
    assert verdicts == {"accuracy": bad == "accuracy", "loss": bad == "loss"}


@pytest.mark.parametrize("change, code", [(0.0029, 0), (0.0031, 1)])
def test_the_default_accuracy_tolerance_is_three_tenths_of_a_point(repo, capsys, change, code):
    write_metrics(repo, 0.5 - change, 0.25)
    assert check(capsys)[0] == code


@pytest.mark.parametrize("change, code", [(0.0079, 0), (0.0081, 1)])
def test_the_default_loss_tolerance_is_0_008(repo, capsys, change, code):
    write_metrics(repo, 0.5, 0.25 + change)
    assert check(capsys)[0] == code


def test_the_baseline_and_the_metrics_file_can_be_named(repo, capsys):
    first = check_reproduction.subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    write_metrics(repo, 0.875, 0.25)
    write_metrics(repo, 0.5, 0.25, path="other.json")
    commit_all(repo, "a better run")
    code, lines, _ = check(capsys, "--baseline", first.strip(), "--accuracy-tolerance", "0.25")
    assert code == 1 and lines[1].startswith("accuracy      0.5000    0.8750   +0.3750")
    write_metrics(repo, 0.875, 0.25, path="other.json")
    code, lines, _ = check(capsys, "other.json", "--accuracy-tolerance", "0.25")
    assert code == 1 and lines[1].startswith("accuracy      0.5000    0.8750")


def test_a_missing_run_or_baseline_is_one_line_and_exit_2(repo, capsys):
    assert check(capsys, "nothing.json") == (2, [], "error: nothing.json not found: run `dvc repro` first\n")
    write_metrics(repo, 0.5, 0.25, path="new.json")
    code, lines, err = check(capsys, "new.json")
    assert (code, lines) == (2, [])
    assert err.startswith("error: no new.json at git revision 'HEAD' (fatal: ") and err.count("\n") == 1
    code, _, err = check(capsys, "--baseline", "no-such-branch")
    assert code == 2 and err.startswith("error: no metrics/evaluate.json at git revision 'no-such-branch' (")


def test_help_says_what_it_does_and_what_each_option_is(capsys):
    with pytest.raises(SystemExit) as stop:
        check_reproduction.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width
    assert stop.value.code == 0
    assert "Compare a fresh run's test metrics with the committed ones, within the measured tolerance." in text
    assert "metrics the fresh run's metrics" in text
    assert "--baseline BASELINE git revision holding the reference metrics" in text
