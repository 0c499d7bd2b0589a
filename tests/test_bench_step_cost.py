"""bench/step_cost.py: each candidate's training cost relative to the default's, from its fastest round."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from bench.presets import CANDIDATES
from tools import preset
from tools.project import REPO

pytestmark = pytest.mark.slow  # trains three small networks for a few rounds: about 20 s


def test_costs_are_each_candidates_fastest_round_times_its_epochs_over_the_defaults(tmp_path):
    results = tmp_path / "step_cost.json"
    bench = [sys.executable, "-m", "bench.step_cost", "--rounds", "3", "--images", "4096", "--precision", "float32",
             "--results", str(results)]
    shown = subprocess.run(bench + ["--only", "fast", "best", "s3"], cwd=REPO, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": REPO})
    assert shown.returncode == 0, shown.stderr
    result = json.loads(results.read_text())
    assert result["precision"] == "float32" and result["rounds"] == 3
    entries = result["candidates"]
    assert list(entries) == ["default", "fast", "best", "s3"]  # the baseline first, though not asked for
    presets = {name: preset.load(name) for name in ("fast", "best")}  # params.yaml's, then each preset's
    with open(CANDIDATES) as f:
        presets["s3"] = yaml.safe_load(f)["s3"]  # a candidate by name: best until 2026-12-03
    assert [entries[name]["epochs"] for name in entries] == [10] + [p["train.epochs"] for p in presets.values()]
    assert [entries[name]["batch_size"] for name in entries] == [64] + [p["train.batch_size"] for p in presets.values()]
    default = min(entries["default"]["runs"]) * 10
    for name, entry in entries.items():
        assert len(entry["runs"]) == 3 and entry["ms_per_1000_images"] == min(entry["runs"])
        assert entry["training_cost_over_default"] == round(min(entry["runs"]) * entry["epochs"] / default, 2)
        assert f"| {name} | {entry['ms_per_1000_images']} | {entry['epochs']} | " in shown.stdout
    # each candidate its own network: an image through s3's (16 and 64 filters, two unstrided convolutions a
    # block) costs about 2.5 times one through fast's (16 and 32, one a block) or best's (32 and 64, two a block,
    # each block's first strided: ignoring model.downsample would make best cost twice s3), and fast's training
    # a sixth to a quarter of the default's: margins that hold while other tests load the CPU (a round slowed
    # two or three times; the fastest of three is kept)
    per_image = {name: entry["ms_per_1000_images"] for name, entry in entries.items()}
    assert per_image["fast"] < per_image["s3"] / 1.5 and per_image["best"] < per_image["s3"] / 1.5
    assert entries["fast"]["training_cost_over_default"] < 0.5


def test_a_round_that_is_not_whole_calls_into_tensorflow_or_an_unknown_name_is_refused(tmp_path):
    bench = [sys.executable, "-m", "bench.step_cost", "--results", str(tmp_path / "out.json")]
    uneven = subprocess.run(bench + ["--images", "1024", "--only", "best"], cwd=REPO, capture_output=True, text=True)
    assert uneven.returncode == 2  # 1024: 16 steps of the default's 64, 8 of best's 128, calls of 16 steps each
    assert uneven.stderr.strip().endswith("--images 1024 is not a multiple of batch_size x steps_per_execution of best")
    unknown = subprocess.run(bench + ["--only", "fastest"], cwd=REPO, capture_output=True, text=True)
    assert unknown.returncode == 2 and "no candidate fastest in" in unknown.stderr
    assert not (tmp_path / "out.json").exists()
