"""The DVC workflows for comparing runs, for real: branches, experiments, presets and the queue.

Each test works in its own `git clone` of a committed, pushed tiny run (conftest's baseline fixture).
"""
import csv
import io
import json
import os
import re
import shlex
import sys
import time

import pytest
import yaml

from conftest import GIT, REPO, sh, stages_run

pytestmark = pytest.mark.slow


def code_block(page, first):
    """The commands of the page's bash block that starts with `first`, one per line (continuations joined)."""
    with open(os.path.join(REPO, page)) as f:
        block = re.search(rf"```bash\n({re.escape(first)}.*?)```", f.read(), re.DOTALL).group(1)
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def compare_block(page="README.md"):
    """README's "Change params and compare runs" (docs/pipeline.md repeats it)."""
    return code_block(page, "dvc exp run -S ")


def markdown_rows(text):
    """A Markdown table as rows of cells, the header first and the |---| line left out."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in text.splitlines() if line.strip()]
    return [rows[0], *rows[2:]]


def exp_show_on_screen(clone, command, columns=120):
    """`command` (a `dvc exp show ...` line) as a terminal `columns` wide shows it, as rows of cells, the header
    first; each line fits, and no row wraps onto a second line (a cell that wrapped or was cut would not match
    the Markdown table). Also the same table as Markdown (`--md`), which has no width to fit. The one exception
    is DVC's fold, the `…` column the params that do not fit are squeezed into: a list param there
    (`model.conv_filters` is `[16, 64]`) wraps at its space, so a row can have a second line holding only `…`."""
    options = shlex.split(command, comments=True)[3:]
    shown = sh(clone, "dvc", "exp", "show", "--no-pager", *options, env={"COLUMNS": str(columns)}).stdout
    lines = [line for line in shown.splitlines() if line.strip() not in ("", "…") and set(line.strip()) != {"─"}]
    assert max(map(len, lines)) <= columns, shown
    on_screen = [re.split(r" {2,}", line.strip()) for line in lines]  # rich pads each cell: 3+ spaces between
    return on_screen, markdown_rows(sh(clone, "dvc", "exp", "show", "--md", *options).stdout)


def column(rows, name):
    """One column of a table (rows of cells, the header first), from the row below the header."""
    return [row[rows[0].index(name)] for row in rows[1:]]


def test_readme_compare_commands_fit_a_120_column_terminal_and_diff_a_branch_against_main(clone):
    """README's "Change params and compare runs" (docs/pipeline.md repeats it), run as written: its
    `dvc exp show` at COLUMNS=120 shows every experiment with the params that differ, validation accuracy, test
    accuracy, ECE and the mean accuracy under corruption, each cell whole; the detail stays out of it and in
    `dvc metrics diff` and `dvc plots`. Then the experiment, committed on a branch, compared with main as one
    compares branches: params, every metric (losses, calibration, robustness) and every plot, old and new."""
    block = compare_block()
    assert compare_block("docs/pipeline.md") == block
    show = next(line for line in block if line.startswith("dvc exp show"))
    sh(clone, "dvc", "pull")
    ran = {line: sh(clone, "bash", "-c", line).stdout for line in block
           if line != show and not line.startswith("dvc exp run -n")}  # the presets: the queue test runs best
    # train's params changed: DVC reran train and what depends on it, never the data stages before it
    assert stages_run(ran[block[0]]) == ["train", "evaluate", "robustness", "export", "plot"]

    on_screen, markdown = exp_show_on_screen(clone, show)
    assert on_screen == markdown  # nothing folded, cut or wrapped
    assert on_screen[0] == ["Experiment", "eval.accuracy", "accuracy", "ece", "corrupted", "model.dense_units",
                            "train.epochs"]
    assert column(on_screen, "train.epochs") == ["3", "1", "3"]  # the workspace, main, the experiment
    tested = json.loads((clone / "metrics" / "evaluate.json").read_text())
    assert column(on_screen, "accuracy")[0] == f"{tested['accuracy']:.5g}"
    assert column(on_screen, "ece")[0] == f"{tested['ece']:.5g}"
    robust = json.loads((clone / "metrics" / "robustness.json").read_text())
    assert column(on_screen, "corrupted")[0] == f"{robust['corrupted']:.5g}"

    assert "per_class" not in sh(clone, "dvc", "metrics", "show").stdout
    page = (clone / "plots_html" / "index.html").read_text()
    assert "F1 per class (test set)" in page, sh(clone, "dvc", "plots", "diff", "main", "--json").stdout[:3000]

    # the experiment's workspace (params, dvc.lock, metrics) committed on a branch, compared with main
    sh(clone, *GIT, "checkout", "-q", "-b", "wider")
    sh(clone, *GIT, "commit", "-qam", "three epochs, 256 units")
    params = json.loads(sh(clone, "dvc", "params", "diff", "main", "wider", "--json").stdout)
    assert params["params.yaml"] == {"train.epochs": {"old": 1, "new": 3, "diff": 2},
                                     "model.dense_units": {"old": "[128]", "new": "[256]"}}
    metrics = json.loads(sh(clone, "dvc", "metrics", "diff", "main", "wider", "--json").stdout)
    evaluate = metrics["metrics/evaluate.json"]
    assert evaluate["loss"]["new"] == tested["loss"] and evaluate["loss"]["old"] != evaluate["loss"]["new"]
    assert evaluate["ece"]["new"] == tested["ece"] and {"old", "new", "diff"} <= set(evaluate["nll"])
    assert metrics["metrics/train/metrics.json"]["step"] == {"old": 0, "new": 2, "diff": 2}
    corrupted = metrics["metrics/robustness.json"]["corrupted"]
    assert corrupted["new"] == robust["corrupted"] and corrupted["diff"] == pytest.approx(
        corrupted["new"] - corrupted["old"])
    assert "per_corruption.fog" in metrics["metrics/robustness.json"]
    table = sh(clone, "dvc", "metrics", "diff", "main", "wider", "--md").stdout
    assert "| metrics/evaluate.json" in table and "loss" in table and "| metrics/robustness.json" in table
    sh(clone, "dvc", "plots", "diff", "main", "wider", "-o", "compare")
    page = (clone / "compare" / "index.html").read_text()
    assert "main" in page and "wider" in page and "Confusion matrix" in page and "F1 per class" in page
    assert "Accuracy per corruption" in page and "Reliability diagram" in page and "corruptions.png" in page


# best trains 9 epochs; here 2: the test is about DVC taking the preset
SHORTER = {"best": {"train.epochs": 2}}


# best only: it changes more params than fast (all but the dropout), and the queue is the slowest test
# of the suite; tests/test_params.py checks both presets' params
PRESETS = ("best",)


def preset_options(name):
    """docs, "Presets": the -S options of `python -m tools.preset NAME`, split as the shell splits them."""
    options = sh(REPO, sys.executable, "-m", "tools.preset", name).stdout.split()
    return options + [word for key, value in SHORTER.get(name, {}).items() for word in ("-S", f"{key}={value}")]


# An experiment's ref, refs/exps/<first 2 hex digits of its baseline>/<the rest>/<name> (dvc/repo/experiments/refs.py);
# not the queue's own refs beside them (refs/exps/celery/stash holds the experiments still queued)
EXPERIMENT_REF = re.compile(r"refs/exps/[0-9a-f]{2}/[0-9a-f]+/[^/]+$")


def wait_for_queue(clone, count, timeout=600):
    """Until the queue has run everything; the status table, after checking count succeeded. Each experiment that
    lands adds a ref under refs/exps, which git lists in milliseconds, where each `dvc queue status` costs 1 to 3 s of
    the CPU the queued pipelines need: DVC is asked only every 60 s (a failed experiment adds no ref) and at the end."""
    deadline, asked, status = time.time() + timeout, time.time(), ""
    while time.time() < deadline:
        refs = sh(clone, "git", "for-each-ref", "--format=%(refname)", "refs/exps").stdout.split()
        landed = sum(bool(EXPERIMENT_REF.match(ref)) for ref in refs)
        if landed >= count or time.time() - asked > 60:
            status = sh(clone, "dvc", "queue", "status").stdout
            if "Queued" not in status and "Running" not in status:
                break
            asked = time.time()
        time.sleep(1)
    assert status.count("Success") == count, status
    return status


def queued_grid(clone):
    """{name: (learning rate, batch size)} of each experiment in the queue, as `dvc exp show` lists it."""
    shown = json.loads(sh(clone, "dvc", "exp", "show", "--json").stdout)
    return {exp["name"]: (train["learning_rate"], train["batch_size"])
            for commit in shown for exp in commit.get("experiments") or []
            for train in [exp["revs"][0]["data"]["params"]["params.yaml"]["data"]["train"]]}


# The grid point the queue test runs: (learning rate, batch size). Not (0.001, 16), the baseline's own params, whose
# experiment would rerun nothing and report the baseline's metrics and export as its own
KEPT = (0.0005, 16)


@pytest.mark.timeout(1500)  # two queued tiny pipelines, each with its robustness stage: 600 s was too short at load 8
def test_presets_and_a_grid_sweep_from_the_queue_all_land_in_exp_show(clone):
    """A preset (dvc exp run --queue -n NAME $(python -m tools.preset NAME)) and a 2x2 grid in DVC's sweep
    syntax (docs/reproducing.md, "Sweeps") queued together: the grid queues its four points. Three of them are
    removed from the queue (each run is a whole tiny pipeline: one shows what four would), and two workers run
    the preset and the point left at once: each experiment completes with its params, and `dvc exp show` lists
    them with their metrics, ranked by validation accuracy (never test accuracy)."""
    sh(clone, "dvc", "pull")
    for name in PRESETS:
        sh(clone, "dvc", "exp", "run", "--queue", "-n", name, *preset_options(name))
    sh(clone, "dvc", "exp", "run", "--queue", "-S", "train.learning_rate=0.0005,0.001", "-S", "train.batch_size=16,32")
    grid = {name: point for name, point in queued_grid(clone).items() if name not in PRESETS}
    assert sorted(grid.values()) == [(0.0005, 16), (0.0005, 32), (0.001, 16), (0.001, 32)]
    for name, point in grid.items():
        if point != KEPT:
            sh(clone, "dvc", "queue", "remove", name)
    assert sh(clone, "dvc", "queue", "status").stdout.count("Queued") == len(PRESETS) + 1
    sh(clone, "dvc", "queue", "start", "-j", "2")
    wait_for_queue(clone, len(PRESETS) + 1)

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

    # docs/reproducing.md's `dvc exp show` after a sweep (README's, ranked by validation accuracy) with two
    # experiments and best's dozen changed params: more than 120 columns hold, so DVC folds params from the
    # right; the validation and test scores stay whole on every row
    sweep = code_block("docs/reproducing.md", "dvc exp run --queue")
    on_screen, markdown = exp_show_on_screen(clone, next(line for line in sweep if line.startswith("dvc exp show")))
    assert len(on_screen) == len(markdown) == 1 + 2 + len(PRESETS) + 1  # header, workspace, main, experiments
    for name in ("eval.accuracy", "accuracy", "ece", "corrupted"):
        assert column(on_screen, name) == column(markdown, name), name
    ranked = [float(value) for value in column(on_screen, "eval.accuracy")[2:]]
    assert ranked == sorted(ranked, reverse=True)

    shown = sh(clone, "dvc", "exp", "show", "--csv", "--sort-by", "metrics/train/metrics.json:eval.accuracy",
               "--sort-order", "desc").stdout
    rows = [row for row in csv.DictReader(io.StringIO(shown))
            if row["Experiment"] and row["Experiment"] not in PRESETS]
    assert [(float(r["train.learning_rate"]), int(r["train.batch_size"])) for r in rows] == [KEPT]
    main = json.loads((clone / "metrics" / "evaluate.json").read_text())  # the pulled baseline run's
    for row in rows:
        assert 0 <= float(row["accuracy"]) <= 1 and float(row["loss"]) > 0  # test metrics, from evaluate
        assert round(float(row["loss"]), 4) != round(main["loss"], 4)  # its own run, not the baseline's
        assert float(row["onnx.agreement"]) >= 0.999  # every point was exported and checked
