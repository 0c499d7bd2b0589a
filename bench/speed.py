"""How fast the pipeline is against the original notebook, on this machine (docs/speed.md).

    python -m bench.speed [--mnist ../shared/datasets/mnist.npz] [--rounds 5] [--repro-rounds 2]

Needs a local MNIST copy in Keras' layout (mnist.npz); nothing is downloaded from the internet.
In one run, alternating the commands and quoting medians (shared machines are noisy), it times:

1. training: the notebook's fit (bench/notebook.py: NumPy arrays, model.fit, batch 64,
   validation_split=0.2, 10 epochs) against the train stage with the default params.yaml (fit time
   as the stage prints it; images/s counts the 48,000 training images of each of the 10 epochs);
   the ratio of the medians, and the median of each round's ratio; both models' test accuracy;
2. the whole `dvc repro` in an empty workspace (a copy of the project's files, no data, no cache;
   MNIST served by a mirror on 127.0.0.1) against the notebook script's wall time, figures included;
   each stage's wall time within that repro, and its start-up (`python -m stages.<stage> --help`:
   Python, its imports, TensorFlow's for the stages that use it);
3. a no-op `dvc repro`, and the predict command's throughput on the 10,000 test images as PNGs;
4. the default params once more with train.precision=float32 (what auto picks on a CPU without
   bfloat16), and the presets in presets/*.yaml: training time (the median of `rounds` runs where
   one run is under a minute), validation and test accuracy.

Writes bench/results/speed.json and bench/results/speed.md (the table in docs/speed.md).
"""
import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version

import numpy as np
import yaml

from mnist_cnn.machine import describe
from mnist_cnn.params import set_dotted
from tools import preset
from tools.project import PROJECT_FILES, REPO, commit_all, copy_project, serve_folder

RESULTS = os.path.join(REPO, "bench", "results")
TRAIN_IMAGES = 48_000  # MNIST's 60,000 training images less the 20% held out for validation
ENV = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
       "DVC_NO_ANALYTICS": "1", "PYTHONHASHSEED": "0", "PYTHONUNBUFFERED": "1"}  # lines timed as printed


def run(command, cwd, env=None):
    """Run a command; return (wall seconds, stdout), with each stdout line's time since the start."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env or ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines = [(time.perf_counter() - start, line.rstrip("\n")) for line in process.stdout]
    if process.wait():
        sys.exit(f"bench: {' '.join(command)} failed in {cwd}:\n" + "\n".join(line for _, line in lines[-40:]))
    return time.perf_counter() - start, lines


def text(lines):
    return "\n".join(line for _, line in lines)


def machine():
    versions = {package: version(package) for package in ("tensorflow", "keras", "numpy", "dvc", "dvclive")}
    return {**describe(), **versions}


def new_project(root):
    """The project's files as a user clones them, with the committed dvc.lock, in a new git repository."""
    copy_project(root, PROJECT_FILES + ("dvc.lock",))
    commit_all(root, "bench")
    return root


def notebook(mnist, figures=None):
    command = [sys.executable, os.path.join(REPO, "bench", "notebook.py"), "--mnist", mnist]
    wall, lines = run(command + (["--figures", figures] if figures else []), REPO)
    return wall, json.loads(lines[-1][1])


def repro(project, mirror):
    """dvc repro in project: wall time and each stage's share (from when its 'Running stage' line appears)."""
    wall, lines = run(["dvc", "repro"], project, env={**ENV, "DATASET_MIRRORS": mirror})
    starts = [(t, re.search(r"Running stage '(\w+)'", line).group(1)) for t, line in lines
              if "Running stage" in line]
    stages = {name: round((starts[i + 1][0] if i + 1 < len(starts) else wall) - t, 1)
              for i, (t, name) in enumerate(starts)}
    return wall, stages


def train_stage(project, out):
    """The train stage's command on the project's processed data, then evaluate: fit seconds, accuracies."""
    processed = os.path.join(project, "data", "processed")
    wall, lines = run([sys.executable, "-m", "stages.train", f"{processed}/train", f"{processed}/val",
                       f"{out}/model.keras", f"{out}/live"], project)
    run([sys.executable, "-m", "stages.evaluate", f"{out}/model.keras", f"{processed}/test",
         f"{out}/evaluate.json", f"{out}/predictions.csv"], project)
    with open(f"{out}/evaluate.json") as f:
        test = json.load(f)
    with open(f"{out}/live/metrics.json") as f:
        val = json.load(f)["eval"]
    return {"stage_seconds": round(wall, 2),
            "train_seconds": float(re.search(r"fit took ([\d.]+) s", text(lines)).group(1)),
            "precision": re.search(r"precision (\w+)", text(lines)).group(1),
            "val_accuracy": val["accuracy"], "test_accuracy": test["accuracy"], "test_loss": test["loss"]}


@contextlib.contextmanager
def params_set(project, overrides):
    """The project's params.yaml with overrides (dotted keys) for the duration of the block."""
    path = os.path.join(project, "params.yaml")
    with open(path) as f:
        original = f.read()
    with open(path, "w") as f:
        yaml.safe_dump(set_dotted(yaml.safe_load(original), overrides), f, sort_keys=False)
    try:
        yield
    finally:
        with open(path, "w") as f:
            f.write(original)


def predict_throughput(project, mnist, scratch):
    from PIL import Image
    folder = os.path.join(scratch, "test_png")
    os.makedirs(folder)
    with np.load(mnist) as data:
        for i, image in enumerate(data["x_test"]):
            Image.fromarray(image).save(os.path.join(folder, f"{i:05d}.png"))
    wall, lines = run([sys.executable, "-m", "mnist_cnn.predict", "--json", folder], project)
    rate = re.search(r"predict: (\d+) images classified.* (\d+) images/s", text(lines))
    return {"images": int(rate.group(1)), "images_per_second": int(rate.group(2)), "command_seconds": round(wall, 2)}


def median(values):
    return round(statistics.median(values), 2)


def markdown(result):
    t, w, m = result["training"], result["whole_pipeline"], result["machine"]
    rows = [
        "| What (median of the rounds) | Notebook | Pipeline | Ratio |",
        "|---|---|---|---|",
        f"| Training, 10 epochs: seconds | {t['notebook_seconds']} | {t['pipeline_seconds']} | "
        f"**{t['speedup']}x faster** |",
        f"| Training: median of the rounds' ratios (each round's runs back to back) | | | "
        f"**{t['paired_speedup']}x faster** |",
        f"| Training: images/s | {t['notebook_images_per_second']} | {t['pipeline_images_per_second']} | |",
        f"| Test accuracy | {t['notebook_test_accuracy']:.4f} | {t['pipeline_test_accuracy']:.4f} | |",
        f"| Training with `train.precision: float32` (one run): seconds, test accuracy | | "
        f"{t['float32_run']['train_seconds']}, {t['float32_run']['test_accuracy']:.4f} | "
        f"{round(t['notebook_seconds'] / t['float32_run']['train_seconds'], 2)}x faster |",
        f"| Whole run from nothing: seconds (notebook script / `dvc repro`) | {w['notebook_seconds']} | "
        f"{w['repro_seconds']} | {w['ratio']}x the notebook |",
        f"| No-op `dvc repro`: seconds | | {result['noop_repro_seconds']} | |",
        f"| `python -m mnist_cnn.predict` on 10,000 PNG files: images/s | | "
        f"{result['predict']['images_per_second']} | |",
    ]
    stages = ", ".join(f"{name} {seconds} s (start-up {result['startup_seconds'][name]} s)"
                       for name, seconds in w["stages"].items())
    lines = rows + ["", f"Stages within the first `dvc repro`: {stages}; the rest is DVC's own work. "
                        f"Train stage precision: {t['pipeline_precision']}.", ""]
    if result.get("presets"):
        lines += ["| Preset | Training seconds (runs) | Validation accuracy | Test accuracy |",
                  "|---|---|---|---|"]
        for name, run_ in result["presets"].items():
            runs = " / ".join(str(seconds) for seconds in run_["train_runs"])
            lines.append(f"| `{name}` | {run_['train_seconds']} ({runs}) | {run_['val_accuracy']:.4f} | "
                         f"{run_['test_accuracy']:.4f} |")
        lines.append("")
    lines.append(f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['cpu_flags'])}), {m['memory_gib']} GiB; "
                 f"Python {m['python']}, TensorFlow {m['tensorflow']}, Keras {m['keras']}, DVC {m['dvc']}. "
                 f"`python -m bench.speed --rounds {result['rounds']} --repro-rounds {result['repro_rounds']}`, "
                 f"{result['date']}.")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", default=os.path.join(REPO, "..", "shared", "datasets", "mnist.npz"))
    parser.add_argument("--rounds", type=int, default=5,
                        help="notebook/train stage pairs, and runs of each preset that trains in under a "
                             "minute (default 5)")
    parser.add_argument("--repro-rounds", type=int, default=2, help="notebook script/dvc repro pairs (default 2)")
    parser.add_argument("--presets", nargs="*", default=None, help="presets to train (default: all)")
    args = parser.parse_args()
    mnist = os.path.abspath(args.mnist)
    if not os.path.isfile(mnist):
        sys.exit(f"bench: {mnist} not found: pass --mnist with a copy of mnist.npz (Keras' layout)")
    server = contextlib.ExitStack()  # the mirror, for the whole run
    mirror = server.enter_context(serve_folder(os.path.dirname(mnist))).url
    scratch = tempfile.mkdtemp(prefix="bench-speed-")
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "rounds": args.rounds,
              "repro_rounds": args.repro_rounds}
    try:
        # 2. the whole run, from an empty workspace, alternating which goes first
        repros, scripts, stage_times, project = [], [], None, None
        for i in range(args.repro_rounds):
            order = ("repro", "notebook") if i % 2 == 0 else ("notebook", "repro")
            for what in order:
                if what == "repro":
                    root = new_project(os.path.join(scratch, f"project{i}"))
                    wall, stages = repro(root, mirror)
                    repros.append(wall)
                    project, stage_times = project or root, stage_times or stages
                else:
                    scripts.append(notebook(mnist, os.path.join(scratch, f"figures{i}"))[0])
                print(f"bench: whole run, round {i + 1}: {what} {(repros if what == 'repro' else scripts)[-1]:.1f} s",
                      flush=True)
        result["whole_pipeline"] = {"notebook_seconds": median(scripts), "repro_seconds": median(repros),
                                    "ratio": round(statistics.median(repros) / statistics.median(scripts), 2),
                                    "notebook_runs": scripts, "repro_runs": repros, "stages": stage_times}

        result["startup_seconds"] = {
            stage: median([run([sys.executable, "-m", f"stages.{stage}", "--help"], project)[0] for _ in range(3)])
            for stage in stage_times}

        # 3. a no-op repro (everything up to date) and predict
        noop = [run(["dvc", "repro"], project, env={**ENV, "DATASET_MIRRORS": mirror})[0] for _ in range(3)]
        result["noop_repro_seconds"] = median(noop)
        result["predict"] = predict_throughput(project, mnist, scratch)

        # 1. training, alternating
        nb, pipe = [], []
        for i in range(args.rounds):
            for what in (("notebook", "pipeline") if i % 2 == 0 else ("pipeline", "notebook")):
                if what == "notebook":
                    nb.append(notebook(mnist)[1])
                else:
                    pipe.append(train_stage(project, os.path.join(scratch, f"train{i}")))
                latest = (nb if what == "notebook" else pipe)[-1]
                print(f"bench: training, round {i + 1}: {what} {latest['train_seconds']} s, "
                      f"test accuracy {latest['test_accuracy']:.4f}", flush=True)
        nb_s, pipe_s = median([r["train_seconds"] for r in nb]), median([r["train_seconds"] for r in pipe])
        result["training"] = {
            "notebook_seconds": nb_s, "pipeline_seconds": pipe_s, "speedup": round(nb_s / pipe_s, 2),
            # each round's two runs were back to back: the median of their ratios cancels slow spells
            "paired_speedup": median([a["train_seconds"] / b["train_seconds"] for a, b in zip(nb, pipe)]),
            "notebook_images_per_second": round(10 * TRAIN_IMAGES / nb_s),
            "pipeline_images_per_second": round(10 * TRAIN_IMAGES / pipe_s),
            "notebook_test_accuracy": statistics.median(r["test_accuracy"] for r in nb),
            "pipeline_test_accuracy": statistics.median(r["test_accuracy"] for r in pipe),
            "pipeline_precision": pipe[0]["precision"], "notebook_runs": nb, "pipeline_runs": pipe}

        # the default params in float32, once: what a CPU without bfloat16 trains (auto picks float32 there)
        with params_set(project, {"train.precision": "float32"}):
            result["training"]["float32_run"] = train_stage(project, os.path.join(scratch, "float32"))
        print(f"bench: default params in float32: {result['training']['float32_run']}", flush=True)

        # 4. presets
        result["presets"] = {}
        for path in sorted(os.listdir(os.path.join(REPO, "presets"))):
            name = os.path.splitext(path)[0]
            if args.presets is not None and name not in args.presets:
                continue
            runs = []
            with params_set(project, preset.load(name)):
                # a preset that trains in under a minute runs `rounds` times (a slow spell weighs more on a
                # short run), a longer one once; its accuracy is the same every time
                while not runs or (len(runs) < args.rounds and runs[0]["train_seconds"] < 60):
                    runs.append(train_stage(project, os.path.join(scratch, f"preset-{name}-{len(runs)}")))
                    print(f"bench: preset {name}: {runs[-1]}", flush=True)
            result["presets"][name] = {**runs[0], "train_seconds": median([r["train_seconds"] for r in runs]),
                                       "train_runs": [r["train_seconds"] for r in runs]}
    finally:
        server.close()
        shutil.rmtree(scratch, ignore_errors=True)

    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "speed.json"), "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    table = markdown(result)
    with open(os.path.join(RESULTS, "speed.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
