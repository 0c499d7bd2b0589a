"""tools/mutation.py is wired: its modules, tests and mutmut settings; mutation testing itself runs outside pytest."""
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
