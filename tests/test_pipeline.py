"""End to end: the real `dvc` commands on a copy of the project with generated data."""
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from PIL import Image

import conftest
from conftest import STAGES, TINY_PARAMS, image_folder, make_tiny_project, stages_run, wait_for_line, write_params
from mnist_cnn.shards import open_split, read_labels

pytestmark = pytest.mark.slow


def sh(cwd, *command):
    return conftest.sh(cwd, *command).stdout


@pytest.fixture
def project(baseline, tmp_path):
    """A fresh clone's files plus a generated dataset, in a git repo, after one `dvc repro`: each test's own copy
    of the session's baseline run (its workspace, git history and DVC cache), and what that run printed."""
    root = tmp_path / "project"
    shutil.copytree(baseline[0], root, symlinks=True,  # not DVC's locks and state of another folder
                    ignore=lambda folder, names: ["tmp"] if folder.endswith(f"{os.sep}.dvc") else [])
    return root, (baseline[0].parent / "repro.log").read_text()


def test_repro_runs_every_stage_and_writes_every_output(project):
    root, first = project
    assert stages_run(first) == list(STAGES)
    # a run that succeeds says nothing on stderr that reads as an error or a warning: no TensorFlow C++ log
    # line (E0000 00:00:... file.cc:123]), no Python warning, no LiteRT INFO line
    assert not re.search(r"^[IWEF]\d{4} |Warning|^INFO: ", first, re.MULTILINE), first
    with open(root / "dvc.yaml") as f:
        pipeline = yaml.safe_load(f)
    for stage in pipeline["stages"].values():
        for section in ("outs", "metrics"):
            for out in stage.get(section, []):
                path = next(iter(out)) if isinstance(out, dict) else out
                assert (root / path).exists(), path
    metrics = json.loads((root / "metrics" / "evaluate.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1 and metrics["loss"] > 0
    assert json.loads((root / "metrics" / "train" / "metrics.json").read_text())["step"] == 0
    with open(root / "metrics" / "predictions.csv") as f:
        assert len(list(csv.DictReader(f))) == 100
    for png in ("samples", "training_curves", "confusion_matrix", "misclassified"):
        with Image.open(root / "plots" / f"{png}.png") as image:
            assert image.format == "PNG"


def test_dvc_run_in_the_tests_process_says_what_the_dvc_command_says(project):
    """conftest.sh runs most DVC commands by DVC's entry point in the test's own process (DVC's own tests do the
    same): each must print what the `dvc` command prints, exit as it exits, and leave this process as it was."""
    root, _ = project
    write_params(root, **TINY_PARAMS, plot__dpi=80)  # a changed param for status and params diff to report
    before = (dict(os.environ), os.getcwd(), sys.stdout, sys.stderr, os.readlink("/proc/self/fd/1"))
    for command in (("status",), ("params", "diff", "--json"), ("metrics", "show", "--json"), ("exp", "show", "--md"),
                    ("queue", "status"), ("repro", "no_such_stage"), ("plots", "show", "--json", "--no-such-option")):
        here = conftest.sh(root, "dvc", *command, env={"COLUMNS": "100"}, check=False)
        alone = subprocess.run(["dvc", *command], cwd=root, capture_output=True, text=True,
                               env=conftest.command_env({"COLUMNS": "100"}))
        assert (here.returncode, here.stdout, here.stderr) == (alone.returncode, alone.stdout, alone.stderr), command
        after = (dict(os.environ), os.getcwd(), sys.stdout, sys.stderr, os.readlink("/proc/self/fd/1"))
        assert after == before, command
    assert here.returncode != 0 and "no-such-option" in here.stderr  # the last one failed, as DVC's parser does


def test_the_first_dvc_command_run_in_a_process_leaves_its_streams_as_they_were(tmp_path):
    """DVC's first import in a process sets up its logging, which wraps sys.stdout and sys.stderr in colorama's
    streams: conftest.sh must put back the streams of before that import, whichever test makes the first call."""
    code = ("import sys; import conftest; before = (sys.stdout, sys.stderr); "
            f"result = conftest.dvc_here({str(tmp_path)!r}, ['root'], {{}}); "
            "print(result.returncode, 'dvc' in sys.modules, (sys.stdout, sys.stderr) == before, "
            "'not inside' in result.stderr)")
    shown = subprocess.run([sys.executable, "-c", code], cwd=conftest.REPO, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": os.path.join(conftest.REPO, "tests")})
    assert shown.stdout.split() == ["253", "True", "True", "True"], shown.stderr


def test_a_command_run_by_sh_is_done_when_it_exits_not_when_what_it_started_does(tmp_path):
    """Other commands conftest.sh runs as processes, capturing what they write as subprocess.run(capture_output=True,
    text=True) would, but through files: `dvc queue start` leaves workers behind that hold its stdout and stderr for
    seconds after it exits, and a pipe would keep sh waiting for them."""
    started = time.monotonic()
    result = conftest.sh(tmp_path, "sh", "-c", "sleep 20 & printf 'one\\r\\ntwo\\rthree'; printf 'é' >&2; exit 3",
                         check=False)
    assert time.monotonic() - started < 10
    assert (result.returncode, result.stdout, result.stderr) == (3, "one\ntwo\nthree", "é")
    alone = subprocess.run(["sh", "-c", "printf 'one\\r\\ntwo\\rthree'; printf 'é' >&2; exit 3"], capture_output=True,
                           text=True)
    assert (alone.returncode, alone.stdout, alone.stderr) == (result.returncode, result.stdout, result.stderr)


def test_metrics_and_plots_commands_work(project):
    root, _ = project
    shown = json.loads(sh(root, "dvc", "metrics", "show", "--json"))
    files = next(iter(shown.values()))["data"]
    assert "accuracy" in files["metrics/evaluate.json"]["data"]
    assert "eval" in files["metrics/train/metrics.json"]["data"]
    sh(root, "dvc", "plots", "show", "-o", "html")
    page = (root / "html" / "index.html").read_text()
    for plot in ("Accuracy per epoch", "Loss per epoch", "Confusion matrix (test set, counts)",
                 "Confusion matrix (test set, rates)", "eval/accuracy.tsv", "samples.png", "training_curves.png",
                 "confusion_matrix.png", "misclassified.png", "Accuracy per corruption (test set)",
                 "Reliability diagram (test set)", "corruptions.png"):
        assert plot in page, plot


def test_dvc_draws_train_and_validation_on_one_chart_and_the_confusion_matrix_twice(project):
    """The plots of dvc.yaml, as `dvc plots show --json` gives them to VS Code and Studio."""
    root, _ = project
    charts = json.loads(sh(root, "dvc", "plots", "show", "--json"))["data"]
    vega = {name: chart[0]["content"] for name, chart in charts.items() if chart[0]["type"] == "vega"}
    for name, metric in (("Accuracy per epoch", "accuracy"), ("Loss per epoch", "loss")):
        rows = vega[name]["data"]["values"]
        series = {row["filename"] for row in rows}
        assert series == {f"train/{metric}.tsv", f"eval/{metric}.tsv"}, series
        assert all(metric in row and "step" in row for row in rows)
    counts, rates = vega["metrics/predictions.csv"], vega["Confusion matrix (test set, rates)"]
    assert counts["title"]["text"] == "Confusion matrix (test set, counts)"
    for chart in (counts, rates):
        rows = chart["data"]["values"]
        assert len(rows) == 100 and {"actual", "predicted"} <= set(rows[0])  # one row per test image
    assert "percent_of_y" in json.dumps(rates) and "percent_of_y" not in json.dumps(counts)  # rows sum to 1


def test_lock_records_params_and_interpolated_dataset(project):
    root, _ = project
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    download = lock["stages"]["download"]
    assert set(download["params"]["params.yaml"]) == {"seed", "data.dataset", "data.path", "data.folder"}
    assert download["params"]["params.yaml"]["data.path"] == "tiny.npz"
    assert "tiny.npz" in [dep["path"] for dep in download["deps"]]  # DVC tracks the user's data itself
    assert set(lock["stages"]["train"]["params"]["params.yaml"]) == {"seed", "model", "train"}


def test_second_repro_runs_nothing(project):
    root, _ = project
    output = sh(root, "dvc", "repro")
    assert stages_run(output) == [] and "Data and pipelines are up to date" in output


def test_plot_param_reruns_only_plot(project):
    root, _ = project
    write_params(root, **TINY_PARAMS, plot__dpi=80)
    assert stages_run(sh(root, "dvc", "repro")) == ["plot"]


def edit(path, old, new):
    """Replace old with new in the project file at path, as a user editing the code would."""
    original = path.read_text()
    assert old in original
    path.write_text(original.replace(old, new))


def test_editing_the_image_normalisation_reruns_download_only(project):
    root, _ = project
    edit(root / "mnist_cnn" / "images.py", "INK_THRESHOLD = 0.2", "INK_THRESHOLD = 0.2  # edited")
    output = sh(root, "dvc", "repro")
    assert stages_run(output) == ["download"]  # its output's bytes are unchanged, so nothing after it runs


def test_editing_the_network_changes_the_stages_that_import_it_and_nothing_before_them(project):
    """The stages that import mnist_cnn/network.py (train builds the net, export rebuilds it without its training
    layers) are the ones it invalidates; DVC reruns whatever follows a changed output (test_experiments.py's
    README test shows it for train's params), so only `dvc status` is needed here, not a second run of five
    stages."""
    root, _ = project
    edit(root / "mnist_cnn" / "network.py", "layers.MaxPooling2D(", "layers.AveragePooling2D(")
    status = json.loads(sh(root, "dvc", "status", "--json"))
    assert status == {stage: [{"changed deps": {"mnist_cnn/network.py": "modified"}}] for stage in ("train", "export")}


def test_a_hostile_param_value_runs_nothing(project):
    root, _ = project
    for key, value in (("data__dataset", "npz; touch pwned #"), ("data__path", "$(touch pwned)")):
        write_params(root, **{**TINY_PARAMS, key: value})
        result = conftest.sh(root, "dvc", "repro", check=False)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert not (root / "pwned").exists(), key
    write_params(root, **{**TINY_PARAMS, "data__dataset": "npz; touch pwned #"})
    result = conftest.sh(root, "dvc", "repro", check=False)
    assert "error: params.yaml: data.dataset = 'npz; touch pwned #' is not allowed; it must be one of" in result.stderr
    write_params(root, **TINY_PARAMS)
    assert stages_run(sh(root, "dvc", "repro")) == []


def stage_processes(root, module):
    """PIDs of the processes running `python -m module` in root."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            if module.encode() in command and os.readlink(f"/proc/{pid}/cwd") == str(root):
                found.append(int(pid))
        except OSError:  # the process ended meanwhile
            continue
    return found


@pytest.mark.parametrize("shell", ["/bin/bash", "/bin/sh"])  # DVC runs cmd in $SHELL; dash waits, bash execs
def test_killing_dvc_stops_the_stage_it_runs(project, shell):
    """SIGTERM to DVC's process alone: its stage must not train on as an orphan and write outputs later."""
    root, _ = project
    model = (root / "models" / "model.keras").read_bytes()
    write_params(root, **{**TINY_PARAMS, "train__epochs": 300, "train__batch_size": 4})
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           "PYTHONUNBUFFERED": "1", "SHELL": shell}
    process = subprocess.Popen(["dvc", "repro"], cwd=root, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    wait_for_line(process, "Epoch 2/")
    stages = stage_processes(root, "stages.train")
    assert stages, "no train stage found"
    process.send_signal(signal.SIGTERM)  # to DVC only, not to its process group
    process.communicate(timeout=60)
    deadline = time.time() + 30
    while stage_processes(root, "stages.train") and time.time() < deadline:
        time.sleep(0.5)
    assert stage_processes(root, "stages.train") == []
    assert not (root / "models" / "model.keras").exists() or (root / "models" / "model.keras").read_bytes() == model
    write_params(root, **TINY_PARAMS)
    sh(root, "dvc", "checkout")
    assert stages_run(sh(root, "dvc", "repro")) == []


def test_a_fifo_in_the_data_folder_hangs_dvc_and_the_check_finds_it(tmp_path):
    """DVC hashes data.path before a stage can refuse anything, and blocks for ever opening a FIFO there.
    What the project does: tools/check_data_path names it (docs: When something goes wrong)."""
    root = make_tiny_project(tmp_path / "fifo_project")
    image_folder(root / "data" / "own", classes=("a", "b"), per_class=6)
    os.mkfifo(root / "data" / "own" / "a" / "pipe.png")
    write_params(root, **{**TINY_PARAMS, "data__dataset": "folder", "data__path": "data/own"})
    with pytest.raises(subprocess.TimeoutExpired):  # DVC's own behaviour, documented
        subprocess.run(["dvc", "status"], cwd=root, capture_output=True, timeout=5,
                       env={**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]})
    check = conftest.sh(root, sys.executable, "-m", "tools.check_data_path", check=False,
                        env={"PYTHONPATH": conftest.REPO})
    assert check.returncode == 1
    assert check.stdout.strip().splitlines() == [
        "data/own/a/pipe.png: not a regular file but a FIFO (named pipe): remove it or move it elsewhere; "
        "DVC blocks on it for ever while it hashes data.path"]
    (root / "data" / "own" / "a" / "pipe.png").unlink()
    assert conftest.sh(root, sys.executable, "-m", "tools.check_data_path", env={"PYTHONPATH": conftest.REPO}
                       ).stdout == ""
    conftest.sh(root, "dvc", "status")  # answers again


def test_download_failure_keeps_the_last_good_raw_data(project):
    root, _ = project
    raw = (root / "data" / "raw" / "dataset.npz").read_bytes()
    (root / "broken.npz").write_bytes(b"PK\x03\x04 half a file")
    write_params(root, **{**TINY_PARAMS, "data__path": "broken.npz"})
    result = conftest.sh(root, "dvc", "repro", check=False)
    assert result.returncode != 0
    assert "error: data.path: broken.npz is not a valid .npz file" in result.stderr
    assert "Traceback" not in result.stderr
    assert (root / "data" / "raw" / "dataset.npz").read_bytes() == raw  # persist: the last good data stays
    (root / "broken.npz").unlink()
    write_params(root, **TINY_PARAMS)
    assert stages_run(sh(root, "dvc", "repro")) == []


def test_killed_repro_is_recovered_by_the_next_one(project):
    root, _ = project
    lock = (root / "dvc.lock").read_text()
    model = (root / "models" / "model.keras").read_bytes()
    write_params(root, **{**TINY_PARAMS, "train__epochs": 300, "train__batch_size": 4})
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(["dvc", "repro"], cwd=root, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    wait_for_line(process, "Epoch 2/")
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in the terminal reaches dvc and the stage
    process.communicate(timeout=60)
    assert process.returncode != 0
    assert (root / "dvc.lock").read_text() == lock  # nothing half-done was recorded
    write_params(root, **TINY_PARAMS)
    sh(root, "dvc", "checkout")  # DVC moved the previous model to its cache: it comes back intact
    assert (root / "models" / "model.keras").read_bytes() == model
    assert stages_run(sh(root, "dvc", "repro")) == []
    assert "Data and pipelines are up to date" in sh(root, "dvc", "status")


def test_image_folder_project_end_to_end(tmp_path):
    root = make_tiny_project(tmp_path / "folder_project")
    image_folder(root / "data" / "own", classes=("cat", "dog", "fish"), per_class=30)
    write_params(root, **{**TINY_PARAMS, "data__dataset": "folder", "data__path": "data/own"})
    assert stages_run(sh(root, "dvc", "repro")) == list(STAGES)
    with open(root / "metrics" / "classes.csv") as f:  # class names from the folder names
        assert [row["class"] for row in csv.DictReader(f)] == ["cat", "dog", "fish"]
    val = read_labels(open_split(root / "data" / "processed" / "val"))  # the folder is stored class by class:
    assert set(val.tolist()) == {0, 1, 2}  # data.split: auto held out every class, not the last
    assert json.loads((root / "models" / "classes.json").read_text()) == ["cat", "dog", "fish"]
    with open(root / "metrics" / "predictions.csv") as f:
        assert {row["actual"] for row in csv.DictReader(f)} == {"cat", "dog", "fish"}
    predicted = json.loads(sh(root, "python", "-m", "mnist_cnn.predict", "--json", "data/own/dog/000.png"))
    assert predicted[0]["label"] in ("cat", "dog", "fish")
    # DVC tracks the folder: a new image makes the download stage (and what it feeds) out of date
    Image.open(root / "data" / "own" / "cat" / "000.png").rotate(5).save(root / "data" / "own" / "cat" / "new.png")
    status = json.loads(sh(root, "dvc", "status", "--json"))
    assert {"changed deps": {"data/own": "modified"}} in status["download"]
