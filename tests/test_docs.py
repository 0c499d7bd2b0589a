"""The docs: README.md is the short front door with working links; docs/ builds as a site in strict mode."""
import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from conftest import CODE_ENV, REPO, commit_all, copy_project, run_stage, sh

README = os.path.join(REPO, "README.md")
MKDOCS = [sys.executable, "-m", "mkdocs", "build", "--strict"]  # not --quiet: it hides the warnings strict counts
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading):
    """The anchor MkDocs (Python-Markdown's toc) gives a heading."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"[-\s]+", "-", text).strip("-")


def anchors(markdown_file):
    with open(markdown_file) as f:
        text = re.sub(r"```.*?```", "", f.read(), flags=re.DOTALL)  # a "# comment" in a code block is no heading
    return {slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def broken_links(markdown_file):
    """Relative links of a Markdown file whose file or anchor does not exist; web links are not fetched."""
    with open(markdown_file) as f:
        text = f.read()
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(os.path.dirname(markdown_file), path)) if path else markdown_file
        if not os.path.exists(full):
            broken.append(f"{target}: no such file")
        elif anchor and (not full.endswith(".md") or anchor not in anchors(full)):
            broken.append(f"{target}: no such heading")
    return broken


def test_readme_is_the_short_front_door():
    assert os.path.getsize(README) <= 15 * 1024
    with open(README) as f:
        headings = [line for line in f if line.startswith("## ")]
    for section in ("Quickstart", "Results", "The pipeline", "Everyday tasks", "When something goes wrong", "Layout"):
        assert f"## {section}\n" in headings, section


def test_every_link_of_the_readme_works():
    assert broken_links(README) == []


def test_a_broken_readme_link_is_found(tmp_path):
    with open(README) as f:
        text = f.read()
    (tmp_path / "docs").mkdir()
    shutil.copy(os.path.join(REPO, "docs", "speed.md"), tmp_path / "docs" / "speed.md")
    (tmp_path / "README.md").write_text(text + "\n[a](docs/nowhere.md) [b](docs/speed.md#no-such-heading)\n")
    found = broken_links(tmp_path / "README.md")
    assert "docs/nowhere.md: no such file" in found and "docs/speed.md#no-such-heading: no such heading" in found


def build(root):
    return subprocess.run(MKDOCS + ["--site-dir", str(root / "site")], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=300)


@pytest.fixture
def docs_copy(tmp_path):
    shutil.copy(os.path.join(REPO, "mkdocs.yml"), tmp_path)
    shutil.copytree(os.path.join(REPO, "docs"), tmp_path / "docs")
    return tmp_path


@pytest.mark.stage
def test_docs_build_in_strict_mode(docs_copy):
    result = build(docs_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (docs_copy / "site" / "index.html").exists()
    for page in ("pipeline", "data", "predict", "troubleshooting", "reproducing", "robustness", "speed", "presets",
                 "scaling", "experiments-log", "development"):
        assert (docs_copy / "site" / page / "index.html").exists(), page


@pytest.mark.stage
@pytest.mark.parametrize("damage", ["a broken link", "a broken anchor", "an orphan page"])
def test_strict_build_fails_on_a_broken_link_or_an_orphan_page(docs_copy, damage):
    speed = docs_copy / "docs" / "speed.md"
    if damage == "a broken link":
        speed.write_text(speed.read_text() + "\nSee [nothing](nothing.md).\n")
    elif damage == "a broken anchor":
        speed.write_text(speed.read_text() + "\nSee [nothing](presets.md#no-such-heading).\n")
    else:
        (docs_copy / "docs" / "orphan.md").write_text("# Not in the nav\n")
    result = build(docs_copy)
    assert result.returncode != 0 and result.stderr.count("WARNING") == 1, result.stderr


# Samples of a command's output in the docs: each is what the command prints, run here. Where the figures come
# from the committed model, which is not in a checkout, the test runs the command on the tests' small model and
# compares every line with the figures masked.
PAGES = ["README.md"] + sorted(f"docs/{name}" for name in os.listdir(os.path.join(REPO, "docs")) if name[-3:] == ".md")
# docs/serving.md's curl samples are abridged answers ("top":[...]), not a test's output yet
ABRIDGED = {"docs/serving.md"}


def samples(page):
    """The commands a page shows with their output (`$ command` lines in its code blocks)."""
    with open(os.path.join(REPO, page)) as f:
        return [line[2:] for line in f.read().splitlines() if line.startswith("$ ")]


def sample(page, command):
    """The lines a page shows after `$ command` in a code block, up to the next `$ ` line or the block's end."""
    with open(os.path.join(REPO, page)) as f:
        lines = f.read().splitlines()
    start = lines.index(f"$ {command}") + 1
    end = next(i for i in range(start, len(lines)) if lines[i].startswith(("$ ", "```")))
    return lines[start:end]


def masked(lines):
    """Lines with every number replaced by #: what is left is the form."""
    return [re.sub(r"\d+", "#", line) for line in lines]


PREDICT_SAMPLES = [(page, command) for page in PAGES for command in samples(page)
                   if command.startswith("python -m mnist_cnn.predict")]
TESTED = {("docs/development.md", "python -m tools.stage_deps"), ("docs/export.md", "cat metrics/export.json"),
          ("docs/reproducing.md", "python -m tools.check_reproduction"), *PREDICT_SAMPLES}


def test_every_sample_of_output_is_tested():
    shown = {(page, command) for page in PAGES if page not in ABRIDGED for command in samples(page)}
    assert shown - TESTED == set(), "a new `$ command` sample in the docs: test that it is the command's output"
    assert len(PREDICT_SAMPLES) == 3


def test_stage_deps_sample_is_its_output():
    result = subprocess.run([sys.executable, "-m", "tools.stage_deps"], cwd=REPO, capture_output=True, text=True)
    assert sample("docs/development.md", "python -m tools.stage_deps") == result.stdout.splitlines()


@pytest.mark.stage
def test_dag_sample_is_its_output(tmp_path):
    copy_project(tmp_path)
    commit_all(tmp_path)
    shown = sh(tmp_path, "dvc", "dag", "--md").stdout
    with open(os.path.join(REPO, "docs", "pipeline.md")) as f:
        assert f"`dvc dag --md` (plot draws from every earlier stage):\n\n{shown}" in f.read()


def test_export_metrics_sample_is_the_committed_file():
    shown = subprocess.run(["cat", "metrics/export.json"], cwd=REPO, capture_output=True, text=True).stdout
    assert sample("docs/export.md", "cat metrics/export.json") == shown.splitlines()


# A run on a CPU with AVX512-BF16 (bfloat16), commit 84cc1b0's metrics/evaluate.json: the fresh run of the sample
BFLOAT16_RUN = {"accuracy": 0.9924, "loss": 0.023453867062926292}


def test_check_reproduction_sample_is_its_output(tmp_path):
    """docs/reproducing.md: the bfloat16 run against the committed metrics, as `tools.check_reproduction` prints it."""
    (tmp_path / "metrics").mkdir()
    shutil.copy(os.path.join(REPO, "metrics", "evaluate.json"), tmp_path / "metrics")
    commit_all(tmp_path)
    (tmp_path / "metrics" / "evaluate.json").write_text(json.dumps(BFLOAT16_RUN))
    result = subprocess.run([sys.executable, "-m", "tools.check_reproduction"], cwd=tmp_path, capture_output=True,
                            text=True, env={**os.environ, **CODE_ENV})
    assert result.returncode == 0, result.stderr
    assert sample("docs/reproducing.md", "python -m tools.check_reproduction") == result.stdout.splitlines()


def test_preset_sample_is_its_output():
    """docs/presets.md: `python -m tools.preset fast` "prints -S model.conv_filters=[16,32] -S ..."."""
    with open(os.path.join(REPO, "docs", "presets.md")) as f:
        shown = re.search(r"\$\(python -m tools.preset fast\)\s+# prints (.*) \.\.\.\n", f.read()).group(1)
    result = subprocess.run([sys.executable, "-m", "tools.preset", "fast"], cwd=REPO, capture_output=True, text=True)
    assert result.stdout.startswith(shown + " ")


@pytest.mark.slow
@pytest.mark.parametrize("page, command", PREDICT_SAMPLES)
def test_predict_samples_are_its_output_but_the_figures(exported_run, tmp_path, page, command):
    """Run in a folder laid out like the project (models/, examples/) with the tests' model: the same files, in the
    same order and form, and the same closing line; the classes, probabilities and speed are the committed model's
    and this machine's."""
    (tmp_path / "models").mkdir()
    for name in ("model.onnx", "classes.json"):
        shutil.copy(exported_run["exports"] / name, tmp_path / "models")
    shutil.copytree(os.path.join(REPO, "examples"), tmp_path / "examples")
    words = shlex.split(command, comments=True)
    result = run_stage(*[word for word in words[2:] if word != "2>/dev/null"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = [line for line in result.stderr.splitlines() if line.startswith("predict:")]
    printed = result.stdout.splitlines() + ([] if "2>/dev/null" in words else summary)
    assert masked(sample(page, command)) == masked(printed)


def test_results_are_the_committed_metrics():
    """README's Results table and docs/pipeline.md's macro averages hold the committed run's figures."""
    with open(os.path.join(REPO, "metrics", "evaluate.json")) as f:
        tested = json.load(f)
    with open(os.path.join(REPO, "metrics", "train", "metrics.json")) as f:
        trained = json.load(f)
    with open(os.path.join(REPO, "metrics", "classes.csv")) as f:
        classes = list(csv.DictReader(f))
    macro = [sum(float(row[name]) for row in classes) / len(classes) for name in ("precision", "recall", "f1")]
    with open(README) as f:
        readme = f.read()
    assert f"| test accuracy | **{tested['accuracy']:.4f}** |" in readme
    assert f"| test loss | {tested['loss']:.4f} |" in readme
    assert "| macro precision / recall / F1 | {:.4f} / {:.4f} / {:.4f} |".format(*macro) in readme
    assert f"| validation accuracy (epoch {trained['step'] + 1}) | {trained['eval']['accuracy']:.4f} |" in readme
    assert f"| train accuracy (epoch {trained['step'] + 1}) | {trained['train']['accuracy']:.4f} |" in readme
    with open(os.path.join(REPO, "docs", "pipeline.md")) as f:
        assert "(for the committed run {:.4f}, {:.4f} and {:.4f})".format(*macro) in " ".join(f.read().split())


def test_robustness_and_calibration_figures_are_the_committed_metrics():
    """README's Results rows and docs/robustness.md's table and sentences hold the committed run's figures."""
    with open(os.path.join(REPO, "metrics", "robustness.json")) as f:
        robust = json.load(f)
    with open(os.path.join(REPO, "metrics", "evaluate.json")) as f:
        tested = json.load(f)
    with open(README) as f:
        readme = f.read()
    assert (f"| mean accuracy under MNIST-C's 15 corruptions | {robust['corrupted']:.4f} (the error "
            f"{robust['error_ratio']:.1f} times the clean one) |") in readme
    calibration = " / ".join(f"{tested[name]:.4f}" for name in ("ece", "brier", "nll"))
    assert f"| calibration: ECE / Brier score / NLL | {calibration} |" in readme
    with open(os.path.join(REPO, "docs", "robustness.md")) as f:
        page = " ".join(f.read().split())
    assert f"| none (clean) | {robust['clean_accuracy']:.4f} |" in page
    for name, accuracy in robust["per_corruption"].items():
        assert f"| {name.replace('_', ' ')} | {accuracy:.4f} |" in page, name
    assert f"| **mean of the 15** (`corrupted`) | **{robust['corrupted']:.4f}** |" in page
    errors = [100 * (1 - robust[name]) for name in ("clean_accuracy", "corrupted")]
    assert f"The error grows from {errors[0]:.2f}% to {errors[1]:.2f}%, **{robust['error_ratio']:.1f} times**" in page
    assert (f"**ECE {tested['ece']:.4f}**, Brier score {tested['brier']:.4f}, NLL {tested['nll']:.4f}") in page
