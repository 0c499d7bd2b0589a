"""The docs: README.md is the short front door with working links; docs/ builds as a site in strict mode."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

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


def test_docs_build_in_strict_mode(docs_copy):
    result = build(docs_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (docs_copy / "site" / "index.html").exists()
    for page in ("pipeline", "data", "predict", "troubleshooting", "reproducing", "speed", "presets", "scaling",
                 "experiments-log", "development"):
        assert (docs_copy / "site" / page / "index.html").exists(), page


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
