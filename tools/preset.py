"""Print a preset's params as `dvc exp run` options: dvc exp run -n fast $(python -m tools.preset fast)

A preset is presets/<name>.yaml: dotted params.yaml keys and their values, nothing else. load() is
also what bench/speed.py and the tests use; mnist_cnn.params.set_dotted applies one to params.
"""
import json
import os
import sys

import yaml

from tools.project import REPO

PRESETS = os.path.join(REPO, "presets")


def load(name):
    """presets/<name>.yaml as {dotted key: value}; an unknown name stops with the known ones."""
    path = os.path.join(PRESETS, f"{name}.yaml")
    if not os.path.isfile(path):
        known = sorted(os.path.splitext(n)[0] for n in os.listdir(PRESETS) if n.endswith(".yaml"))
        raise SystemExit(f"preset: no preset {name!r}; known: {', '.join(known)}")
    with open(path) as f:
        return yaml.safe_load(f)


def options(name):
    """The preset's -S options, one word each (no spaces in a value, so the shell's word splitting keeps them whole)."""
    return [f"-S {key}={value if isinstance(value, str) else json.dumps(value, separators=(',', ':'))}"
            for key, value in load(name).items()]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__.splitlines()[0])
    print(" ".join(options(sys.argv[1])))
