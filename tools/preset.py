"""Print a preset's params as `dvc exp run` options: dvc exp run -n fast $(python tools/preset.py fast)

A preset is presets/<name>.yaml: dotted params.yaml keys and their values, nothing else.
"""
import json
import os
import sys

import yaml

PRESETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "presets")


def options(name):
    """The preset's -S options, one word each (no spaces in a value, so the shell's word splitting keeps them whole)."""
    path = os.path.join(PRESETS, f"{name}.yaml")
    if not os.path.isfile(path):
        known = sorted(os.path.splitext(n)[0] for n in os.listdir(PRESETS) if n.endswith(".yaml"))
        raise SystemExit(f"preset: no preset {name!r}; known: {', '.join(known)}")
    with open(path) as f:
        preset = yaml.safe_load(f)
    return [f"-S {key}={value if isinstance(value, str) else json.dumps(value, separators=(',', ':'))}"
            for key, value in preset.items()]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__.splitlines()[0])
    print(" ".join(options(sys.argv[1])))
