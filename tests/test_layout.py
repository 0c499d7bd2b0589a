"""The layout: each stage depends in dvc.yaml on exactly the project modules it imports, transitively."""
import os
import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from tools import stage_deps


def test_each_stage_depends_on_exactly_the_modules_it_imports():
    differences = {stage: (declared, closure) for stage, (declared, closure) in stage_deps.compare().items()
                   if declared != closure}
    assert differences == {}, "dvc.yaml deps differ from the import closure; `python -m tools.stage_deps` lists them"


def test_every_stage_imports_some_shared_module_and_its_own_script():
    for stage, (_, closure) in stage_deps.compare().items():
        assert f"stages/{stage}.py" in closure and "mnist_cnn/params.py" in closure, stage


@pytest.mark.parametrize("stage, dropped", [("train", "mnist_cnn/network.py"), ("download", "mnist_cnn/images.py"),
                                            ("evaluate", "mnist_cnn/errors.py")])
def test_a_dropped_dep_is_found(tmp_path, stage, dropped):
    with open(os.path.join(REPO, "dvc.yaml")) as f:
        pipeline = yaml.safe_load(f)
    pipeline["stages"][stage]["deps"].remove(dropped)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(pipeline))
    declared, closure = stage_deps.compare(tmp_path / "dvc.yaml")[stage]
    assert set(closure) - set(declared) == {dropped}


def test_import_closure_follows_every_form_of_import(tmp_path):
    """import a.b, from a import b, from a.b import name, imports inside functions, and cycles."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "stages").mkdir()
    files = {
        "stages/run.py": "import os\nfrom pkg.first import thing\n\ndef main():\n    import pkg.lazy\n",
        "pkg/first.py": "from pkg import second\nimport numpy\nthing = 1\n",
        "pkg/second.py": "import pkg.first  # a cycle\n",
        "pkg/lazy.py": "",
        "pkg/unused.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert stage_deps.import_closure("stages/run.py", tmp_path) == [
        "pkg/first.py", "pkg/lazy.py", "pkg/second.py", "stages/run.py"]


def test_the_check_command_prints_the_closures_and_passes():
    result = subprocess.run([sys.executable, "-m", "tools.stage_deps"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[0].startswith("download: mnist_cnn/datasets.py ")


def test_no_cmd_interpolates_a_param():
    """DVC runs each cmd in a shell: a value a user types (data.dataset: "x; rm -rf ~") must never reach one."""
    with open(os.path.join(REPO, "dvc.yaml")) as f:
        stages = yaml.safe_load(f)["stages"]
    assert {name: stage["cmd"] for name, stage in stages.items() if "${" in stage["cmd"]} == {}


def test_the_committed_lock_holds_the_current_hash_of_every_code_dep():
    """A code edit without `dvc repro` (or a refreshed lock) leaves `dvc status` reporting a changed stage."""
    import hashlib
    with open(os.path.join(REPO, "dvc.lock")) as f:
        lock = yaml.safe_load(f)
    stale = []
    for name, stage in lock["stages"].items():
        for dep in stage.get("deps", []):
            if dep["path"].endswith(".py"):
                with open(os.path.join(REPO, dep["path"]), "rb") as f:
                    if hashlib.md5(f.read()).hexdigest() != dep["md5"]:
                        stale.append(f"{name}: {dep['path']}")
    assert not stale, stale
