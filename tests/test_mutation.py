"""tools/mutation.py is wired: its modules, tests and mutmut settings; mutation testing itself runs outside pytest."""
import json
import os
import re
import tomllib

import pytest

from conftest import REPO
from tools import mutation


def test_every_module_and_test_file_it_names_exists():
    assert len(mutation.MODULES) >= 14
    for path, tests, *_ in mutation.MODULES.values():
        assert os.path.isfile(os.path.join(REPO, path)), path
        assert tests and all(os.path.isfile(os.path.join(REPO, test)) for test in tests), tests


def test_every_repository_file_a_modules_tests_open_is_in_its_mutants_folder():
    """A module's tests run in mutants/<name>/, which holds only SOURCES, tests/ and ALSO_COPY: a file they open
    under REPO outside those fails mutmut's first (stats) run for the whole module."""
    there = {entry.split("/")[0] for entry in mutation.SOURCES + ["tests"] + mutation.ALSO_COPY}
    for _, tests, *_ in mutation.MODULES.values():
        for test in tests:
            with open(os.path.join(REPO, test)) as f:
                opened = set(re.findall(r'REPO, "([^"]+)"', f.read()))
            assert opened <= there, (test, opened - there)


def test_mutmut_reads_the_settings_as_mutating_one_module_only(tmp_path, monkeypatch):
    from mutmut.configuration import _load_config
    path, tests, *settings = mutation.MODULES["params"]
    (tmp_path / "pyproject.toml").write_text(mutation.toml(mutation.mutmut_config(path, tests, *settings)))
    monkeypatch.chdir(tmp_path)
    config = _load_config()
    assert config.should_mutate("mnist_cnn/params.py") and not config.should_mutate("mnist_cnn/files.py")
    assert config.pytest_add_cli_args_test_selection == ["tests/test_params.py"]
    assert "mnist_cnn.params:PARAMS_SCHEMA" in config.pytest_add_cli_args  # built at import: rebuilt with a mutant on
    assert {"-n", "0", "not slow or stage"} <= set(config.pytest_add_cli_args)  # one process; no slow tests
    assert tomllib.loads((tmp_path / "pyproject.toml").read_text())["tool"]["mutmut"]["only_mutate"] == [path]


def test_each_equivalent_mutant_names_a_module_and_gives_a_reason():
    listed = mutation.equivalents()
    prefixes = tuple(path[:-3].replace("/", ".") + "." for path, *_ in mutation.MODULES.values())
    for mutant, reason in listed.items():
        assert mutant.startswith(prefixes) and "__mutmut_" in mutant, mutant
        assert len(reason) > 10, mutant


def test_an_unknown_module_is_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        mutation.main(["nosuch"])
    assert stop.value.code == 2 and "unknown module 'nosuch'; choose from prepare, " in capsys.readouterr().err


def test_the_report_says_when_and_where_each_module_last_ran(tmp_path, monkeypatch):
    """A module run now gets this run's date and CPU; one not run keeps what the results file said of it, and a row
    with nothing said gets a dash."""
    counts = {"killed": 9, "survived": 1, "timeout": 0, "no tests": 0, "not checked": 0, "other": 0, "mutants": 10,
              "equivalent": 1, "score": 0.9, "unexplained": [], "stale_equivalents": []}
    earlier = {"prepare": {**counts, "seconds": 50, "run": "2026-11-30, 2-core AMD EPYC"},
               "shards": {**counts, "seconds": 70}}
    results, report = tmp_path / "mutation.json", tmp_path / "report.md"
    results.write_text(json.dumps({"modules": earlier}))
    monkeypatch.setattr(mutation, "RESULTS", str(results))
    monkeypatch.setattr(mutation, "REPORT", str(report))
    monkeypatch.setattr(mutation, "module_results", lambda name: dict(counts) if name == "params" else None)
    monkeypatch.setattr(mutation, "this_run", lambda: "2026-12-02, 2-core Some CPU")
    mutation.write_report({"params": 12.3})
    modules = json.loads(results.read_text())["modules"]
    assert {name: (m["seconds"], m.get("run")) for name, m in modules.items()} == {
        "prepare": (50, "2026-11-30, 2-core AMD EPYC"), "params": (12, "2026-12-02, 2-core Some CPU"),
        "shards": (70, None)}
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[-2:] for line in report.read_text().splitlines()
            if line.startswith("| mnist_cnn/")}
    assert rows == {"mnist_cnn/prepare.py": ["50", "2026-11-30, 2-core AMD EPYC |"],
                    "mnist_cnn/params.py": ["12", "2026-12-02, 2-core Some CPU |"],
                    "mnist_cnn/shards.py": ["70", "- |"]}
