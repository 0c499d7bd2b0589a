"""Packaging: the wheel `pip install .` builds, its commands installed in a fresh venv holding only the packages
the wheel declares and run from another folder, and `ruff check` clean."""
import configparser
import email.parser
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest
import requests
from packaging.requirements import Requirement
from PIL import Image

from conftest import REPO, digit_images, run_stage
from tools.project import served_model

COMMANDS = {"mnist-predict": "mnist_cnn.commands:predict", "mnist-serve": "mnist_cnn.commands:serve"}


def test_ruff_check_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_is_the_pinned_version():
    with open(os.path.join(REPO, "requirements-dev.txt")) as f:
        pins = [line.split("#")[0].strip() for line in f if line.startswith("ruff==")]
    assert pins == [f"ruff=={importlib.metadata.version('ruff')}"]


def repository_files():
    """The files a clone of the working tree has: tracked ones and new ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    return [name for name in listed.split("\0") if name and os.path.isfile(os.path.join(REPO, name))]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel `pip install .` builds, built from a copy of the repository (an in-tree build writes build/ and
    an .egg-info there) with the pinned setuptools already installed: no network."""
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        backend = tomllib.load(f)["build-system"]["requires"]
    assert backend == [f"setuptools=={importlib.metadata.version('setuptools')}"], "install requirements-dev.txt"
    source, out = tmp_path_factory.mktemp("clone"), tmp_path_factory.mktemp("dist")
    for name in repository_files():
        os.makedirs(source / os.path.dirname(name), exist_ok=True)
        shutil.copy(os.path.join(REPO, name), source / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                             "--disable-pip-version-check", "-w", str(out), str(source)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (path,) = out.glob("*.whl")
    return path


def wheel_metadata(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(archive.read(name).decode())


@pytest.mark.slow
def test_the_wheel_holds_the_package_its_page_the_commands_and_the_licence(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/WHEEL"))
        entry_points = configparser.ConfigParser()
        entry_points.read_string(archive.read(f"{dist_info}/entry_points.txt").decode())
        licence = archive.read(f"{dist_info}/licenses/LICENSE").decode()
    package = os.path.join(REPO, "mnist_cnn")
    expected = [f"mnist_cnn/{n}" for n in os.listdir(package) if n.endswith(".py")]
    expected += [f"mnist_cnn/static/{n}" for n in os.listdir(os.path.join(package, "static"))]
    assert sorted(n for n in names if not n.startswith(dist_info + "/")) == sorted(expected)  # no tests, stages...
    assert "mnist_cnn/static/index.html" in names and "mnist_cnn/predict.py" in names
    assert sorted(n.removeprefix(dist_info + "/") for n in names if n.startswith(dist_info + "/")) == [
        "METADATA", "RECORD", "WHEEL", "entry_points.txt", "licenses/LICENSE", "top_level.txt"]
    assert dict(entry_points["console_scripts"]) == COMMANDS
    with open(os.path.join(REPO, "LICENSE")) as f:
        assert licence == f.read()
    metadata = wheel_metadata(wheel)
    assert metadata["Name"] == "mnist-cnn" and metadata["License-Expression"] == "MIT"
    assert metadata["Requires-Python"] == ">=3.11"
    assert set(metadata.get_all("Provides-Extra")) == {"serve", "keras", "litert"}


def closure(requirements, extras=("",)):
    """The distributions that requirements need, with theirs, recursively: installed names, normalised."""
    found, todo = set(), [(Requirement(r), extras) for r in requirements]
    while todo:
        requirement, wanted = todo.pop()
        if requirement.marker and not any(requirement.marker.evaluate({"extra": e}) for e in wanted):
            continue
        name = requirement.name.lower().replace("_", "-").replace(".", "-")
        if name not in found:
            found.add(name)
            dependencies = importlib.metadata.distribution(name).requires or []
            todo += [(Requirement(r), ("", *requirement.extras)) for r in dependencies]
    return found


def install(wheel, venv, extras=()):
    """A fresh venv holding the wheel and only the packages it declares (those of the test's own venv, linked:
    no network), as `pip install 'mnist-cnn[extras]'` would make it; returns its bin folder."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--disable-pip-version-check", "--quiet", str(wheel)], check=True, timeout=300)
    (site_packages,) = venv.glob("lib/python*/site-packages")
    for name in closure(wheel_metadata(wheel).get_all("Requires-Dist"), ("", *extras)):
        distribution = importlib.metadata.distribution(name)
        for top in {path.parts[0] for path in distribution.files if path.parts[0] != ".."}:
            if not (site_packages / top).exists():
                (site_packages / top).symlink_to(distribution.locate_file(top))
    return venv / "bin"


# What a user's shell has: no PYTHONPATH to the repository
USER_ENV = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}


def in_venv(bin_folder, code):
    """The output of Python code run in the venv, in a folder without the repository's modules."""
    result = subprocess.run([str(bin_folder / "python"), "-c", code], cwd=bin_folder, capture_output=True, text=True,
                            env=USER_ENV, check=True, timeout=120)
    return result.stdout.strip()


@pytest.fixture
def model_elsewhere(exported_run, tmp_path):
    """The tiny exported model, its Keras original and classes.json in a folder far from any project."""
    folder = tmp_path / "somewhere" / "else"
    folder.mkdir(parents=True)
    for name in ("model.onnx", "model.keras", "classes.json"):
        shutil.copy(exported_run["exports"] / name, folder / name)
    return folder


@pytest.mark.slow
def test_installed_predict_runs_from_any_folder_with_only_the_declared_packages(wheel, model_elsewhere, tmp_path):
    bin_folder = install(wheel, tmp_path / "venv")
    assert in_venv(bin_folder, "import mnist_cnn.predict as m; print(m.__file__)").startswith(str(tmp_path / "venv"))
    assert in_venv(bin_folder, "import importlib.util as u; print(u.find_spec('tensorflow'), u.find_spec('yaml'))") \
        == "None None"  # the venv holds no more than the wheel declares
    images = tmp_path / "images"
    images.mkdir()
    for i, digit in enumerate(digit_images(6, seed=3)[0]):
        Image.fromarray(digit).save(images / f"{i}.png")
    work = tmp_path / "work"  # no models/ here: the model is only where --model says
    work.mkdir()

    result = subprocess.run([str(bin_folder / "mnist-predict"), "--model", str(model_elsewhere / "model.onnx"),
                             "--json", "--top-k", "2", str(images)], cwd=work, env=USER_ENV, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("predict: 6 images classified, 0 failed") and "onnx" in result.stderr
    from_repository = run_stage("mnist_cnn.predict", "--model", model_elsewhere / "model.onnx", "--json",
                                "--top-k", "2", images, cwd=work)
    assert json.loads(result.stdout) == json.loads(from_repository.stdout)

    # A .keras model needs the [keras] extra: without it, one line saying what to install
    result = subprocess.run([str(bin_folder / "mnist-predict"), "--model", str(model_elsewhere / "model.keras"),
                             str(images)], cwd=work, env=USER_ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (f"error: {model_elsewhere / 'model.keras'}: keras models need tensorflow and keras, "
                             f"not installed here: `pip install tensorflow keras`, or install mnist-cnn with its "
                             f"[keras] extra (`pip install '.[keras]'`)\n")


@pytest.mark.slow
def test_installed_serve_with_its_extra_serves_the_page_and_the_api_from_any_folder(wheel, model_elsewhere,
                                                                                    tmp_path):
    bin_folder = install(wheel, tmp_path / "venv", extras=("serve",))
    work = tmp_path / "work"
    work.mkdir()
    static = os.path.join(REPO, "mnist_cnn", "static")
    buffer = tmp_path / "digit.png"
    Image.fromarray(digit_images(1, seed=4)[0][0]).save(buffer)
    # two workers: uvicorn's worker processes import the app by name, from the installed package
    with served_model(work, "--model", str(model_elsewhere / "model.onnx"), "--workers", "2",
                      command=[str(bin_folder / "mnist-serve")], env={"PYTHONPATH": ""}) as (_, url):
        page = requests.get(f"{url}/", timeout=10)
        with open(os.path.join(static, "index.html"), "rb") as f:
            assert page.status_code == 200 and page.content == f.read()
        with open(os.path.join(static, "app.js"), "rb") as f:
            assert requests.get(f"{url}/static/app.js", timeout=10).content == f.read()
        answer = requests.post(f"{url}/predict", files={"file": ("digit.png", buffer.read_bytes(), "image/png")},
                               timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["label"] in json.loads((model_elsewhere / "classes.json").read_text())
