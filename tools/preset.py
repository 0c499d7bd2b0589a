"""Print a preset's params as `dvc exp run` options: dvc exp run -n fast $(python -m tools.preset fast)

A preset is presets/<name>.yaml: dotted params.yaml keys and their values, nothing else. load() is
also what bench/speed.py and the tests use; mnist_cnn.params.set_dotted applies one to params.

`dvc exp run` leaves the experiment's params in the workspace's params.yaml, and the next experiment starts
from them: `best` run after `fast` would keep fast's dropout, which best does not set. So the options also
set every key another preset sets to its value in the last commit's params.yaml (the workspace's outside a
git repository): a preset gives the same experiment whichever ran before it.
"""
import json
import os
import subprocess
import sys

import yaml
from ruamel.yaml import YAML

from mnist_cnn.params import flatten
from tools.project import REPO

PRESETS = os.path.join(REPO, "presets")


def names():
    """The presets there are, by name, sorted."""
    return sorted(os.path.splitext(n)[0] for n in os.listdir(PRESETS) if n.endswith(".yaml"))


def load(name):
    """presets/<name>.yaml as {dotted key: value}; an unknown name stops with the known ones."""
    path = os.path.join(PRESETS, f"{name}.yaml")
    if not os.path.isfile(path):
        raise SystemExit(f"preset: no preset {name!r}; known: {', '.join(names())}")
    with open(path) as f:
        return yaml.safe_load(f)


def committed_params():
    """params.yaml as last committed, by dotted key; the workspace's file where git has none."""
    shown = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=REPO, capture_output=True, text=True)
    if shown.returncode:
        with open(os.path.join(REPO, "params.yaml")) as f:
            return flatten(YAML(typ="safe").load(f))
    return flatten(YAML(typ="safe").load(shown.stdout))


def settings(name):
    """{dotted key: value}: the preset's own, then each key only other presets set at its committed value."""
    preset = load(name)
    others = [key for other in names() for key in load(other) if key not in preset]
    if not others:
        return preset
    committed = committed_params()
    return {**preset, **{key: committed[key] for key in others}}


def options(name):
    """The preset's -S options, one word each (no spaces in a value, so the shell's word splitting keeps them whole)."""
    return [f"-S {key}={value if isinstance(value, str) else json.dumps(value, separators=(',', ':'))}"
            for key, value in settings(name).items()]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__.splitlines()[0])
    print(" ".join(options(sys.argv[1])))
