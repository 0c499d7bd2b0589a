"""Scale (docs/scaling.md): a folder of 200,000 generated images through ingest, shards and streamed training.

    python -m bench.scale [--images 200000] [--work /tmp/scale-bench] [--phases ingest,memory,speed,mnist,workers]
                          [--mnist ../shared/datasets/mnist.npz]

Every figure comes from one run on this machine, and every comparison is a ratio within it:

1. ingest: the download stage reads the folder (64x64 RGB PNGs, 10 classes; data.folder.workers 1, then 2):
   images/s of each and their ratio, and whether the two outputs are byte-identical;
2. memory: the train stage, streaming (data.shard_mb 64: 5,461 images a shard), one epoch at three dataset
   sizes (every 4th, every 2nd and every training image); peak RssAnon (anonymous memory: not the page
   cache that reading the shards fills), polled every 50 ms;
3. speed: two epochs on the smallest size, streamed against in memory (one shard of data.shard_mb 2048, read
   whole as MNIST is): training images/s as the stage prints it, and peak RssAnon;
4. mnist: the train stage on MNIST with the default params.yaml, this code against the code before shards
   (BASE, in a git worktree, on its own .npz files): fit time and their ratio (one run each);
5. workers: MNIST cut in 4 shards (data.shard_mb 9), two epochs, one process against two workers on 127.0.0.1
   (train.distribute: multi_worker): training images/s, the ratio, and each model's test accuracy.

Writes bench/results/scale.json and prints the tables quoted in docs/scaling.md.
"""
import argparse
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import yaml
from PIL import Image, ImageDraw

from mnist_cnn.files import write_npz
from mnist_cnn.machine import describe
from mnist_cnn.params import set_dotted
from tools.project import REPO, free_ports

RESULTS = os.path.join(REPO, "bench", "results")
BASE = "9882d09"  # the last commit before shards: one .npz per split, read whole
ENV = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
SIZE = 64


def draw(index):
    """Image `index` of the generated dataset: class index % 10, a shape (5 kinds, filled or outlined) in a
    random colour, size and place on a random background, with noise: PNG bytes of about 9 kB."""
    label, rng = index % 10, np.random.default_rng(index)
    image = Image.new("RGB", (SIZE, SIZE), tuple(int(c) for c in rng.integers(0, 256, 3)))
    pen = ImageDraw.Draw(image)
    x0, y0 = rng.integers(2, 24, 2)
    x1, y1 = x0 + rng.integers(20, 38), y0 + rng.integers(20, 38)
    colour, kind, filled = tuple(int(c) for c in rng.integers(0, 256, 3)), label % 5, label < 5
    fill, width = (colour if filled else None), 4
    if kind == 0:
        pen.ellipse((x0, y0, x1, y1), fill=fill, outline=colour, width=width)
    elif kind == 1:
        pen.rectangle((x0, y0, x1, y1), fill=fill, outline=colour, width=width)
    elif kind == 2:
        pen.polygon(((x0, y1), ((x0 + x1) // 2, y0), (x1, y1)), fill=fill, outline=colour, width=width)
    elif kind == 3:
        pen.line((x0, y0, x1, y1), fill=colour, width=12 if filled else 4)
    else:
        pen.line((x0, y0, x1, y1), fill=colour, width=width * (2 if filled else 1))
        pen.line((x0, y1, x1, y0), fill=colour, width=width * (2 if filled else 1))
    pixels = np.asarray(image).astype(np.int16) + rng.integers(-12, 13, (SIZE, SIZE, 3))
    return label, Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_image(args):
    root, index = args
    label, image = draw(index)
    image.save(os.path.join(root, f"c{label}", f"{index:06d}.png"))


def generate(root, count):
    if os.path.exists(os.path.join(root, ".complete")) and int(open(os.path.join(root, ".complete")).read()) == count:
        return
    shutil.rmtree(root, ignore_errors=True)
    for label in range(10):
        os.makedirs(os.path.join(root, f"c{label}"))
    with multiprocessing.Pool() as pool:
        for _ in pool.imap_unordered(write_image, ((root, i) for i in range(count)), chunksize=500):
            pass
    with open(os.path.join(root, ".complete"), "w") as f:
        f.write(str(count))


def params(workdir, **overrides):
    with open(os.path.join(REPO, "params.yaml")) as f:
        values = set_dotted(yaml.safe_load(f), {k.replace("__", "."): v for k, v in overrides.items()})
    with open(os.path.join(workdir, "params.yaml"), "w") as f:
        yaml.safe_dump(values, f, sort_keys=False)


def rss_anon(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return int(re.search(r"RssAnon:\s+(\d+) kB", f.read()).group(1)) * 1024
    except (OSError, AttributeError):
        return 0


def run(command, cwd, env=None):
    """Run a command, polling its anonymous memory; (wall seconds, output, peak RssAnon bytes)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env={**ENV, **(env or {})}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def poll():
        while process.poll() is None:
            peak[0] = max(peak[0], rss_anon(process.pid))
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    output = process.stdout.read()
    process.wait()
    poller.join()
    if process.returncode:
        sys.exit(f"bench: {' '.join(map(str, command))} failed in {cwd}:\n{output[-3000:]}")
    return time.perf_counter() - start, output, peak[0]


def stage(name, *args, cwd, env=None):
    return run([sys.executable, "-m", f"stages.{name}", *map(str, args)], cwd, env)


def fit_rate(output):
    """(fit seconds, training images/s) from the train stage's own line."""
    match = re.search(r"fit took ([\d.]+) s, (\d+) training images/s", output)
    return float(match.group(1)), int(match.group(2))


def md5(path):
    import hashlib
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def ingest(work, folder, count):
    rows = {}
    for workers in (1, 2):
        workdir = os.path.join(work, f"ingest{workers}")
        os.makedirs(workdir, exist_ok=True)
        params(workdir, data__dataset="folder", data__path=folder, data__folder__image_size=SIZE,
               data__folder__color_mode="rgb", data__folder__workers=workers)
        wall, output, peak = stage("download", "raw.npz", cwd=workdir)
        rows[workers] = {"seconds": round(wall, 1), "images_per_s": round(count / wall), "md5": md5(
            os.path.join(workdir, "raw.npz")), "peak_rss_anon_gb": round(peak / 2**30, 2)}
        print(f"ingest, {workers} worker(s): {wall:.1f} s, {count / wall:.0f} images/s", flush=True)
    shutil.move(os.path.join(work, "ingest2", "raw.npz"), os.path.join(work, "raw.npz"))
    return {"workers": rows, "ratio": round(rows[2]["images_per_s"] / rows[1]["images_per_s"], 2),
            "identical": rows[1]["md5"] == rows[2]["md5"]}


def subset(work, stride):
    """raw.npz with every stride-th training image (the folder's order is class by class: every class stays)."""
    path = os.path.join(work, f"raw-every-{stride}.npz")
    if not os.path.exists(path):
        with np.load(os.path.join(work, "raw.npz")) as raw:
            arrays = {name: raw[name] for name in raw.files}
        arrays["x_train"], arrays["y_train"] = arrays["x_train"][::stride], arrays["y_train"][::stride]
        write_npz(path, arrays)
    return path


def train_on(work, name, stride, shard_mb, epochs):
    """Preprocess every stride-th image of the generated raw.npz into shards of data.shard_mb, then train;
    the train stage's figures."""
    workdir = os.path.join(work, name)
    os.makedirs(workdir, exist_ok=True)
    params(workdir, data__dataset="folder", data__shard_mb=shard_mb, train__epochs=epochs)  # a stratified split
    stage("preprocess", subset(work, stride), "processed", cwd=workdir)
    wall, output, peak = stage("train", "processed/train", "processed/val", "model.keras", "log", cwd=workdir)
    seconds, rate = fit_rate(output)
    shards = len(os.listdir(os.path.join(workdir, "processed", "train")))
    images = int(re.search(r"train: (\d+) training images", output).group(1))
    val_accuracy = float(re.findall(r"val_accuracy: ([\d.]+)", output)[-1])
    shutil.rmtree(os.path.join(workdir, "processed"))
    row = {"stride": stride, "training_images": images, "shards": shards, "fit_seconds": seconds,
           "images_per_s": rate, "peak_rss_anon_gb": round(peak / 2**30, 2), "val_accuracy": val_accuracy,
           "float32_dataset_gb": round(images * SIZE * SIZE * 3 * 4 / 2**30, 2)}
    print(f"train {name}: {row}", flush=True)
    return row


def mnist(work, raw):
    """The default params on MNIST: this code against BASE's, one run each."""
    base = os.path.join(work, "base")
    if not os.path.exists(base):
        subprocess.run(["git", "worktree", "add", "--detach", base, BASE], cwd=REPO, check=True, capture_output=True)
    rows = {}
    for name, code, args in (("before shards", base, ("processed/train.npz", "processed/val.npz")),
                             ("shards", REPO, ("processed/train", "processed/val"))):
        workdir = os.path.join(work, f"mnist-{'base' if code == base else 'new'}")
        os.makedirs(workdir, exist_ok=True)
        shutil.copy(os.path.join(code, "params.yaml"), workdir)
        env = {"PYTHONPATH": code}
        stage("preprocess", raw, "processed", cwd=workdir, env=env)
        wall, output, _ = stage("train", *args, "model.keras", "log", cwd=workdir, env=env)
        seconds, rate = fit_rate(output)
        rows[name] = {"fit_seconds": seconds, "images_per_s": rate, "stage_seconds": round(wall, 1),
                      "model_md5": md5(os.path.join(workdir, "model.keras"))}
        print(f"mnist {name}: {rows[name]}", flush=True)
    return {"runs": rows, "ratio": round(rows["shards"]["fit_seconds"] / rows["before shards"]["fit_seconds"], 3)}


def workers(work, raw, epochs=2):
    """One process against two workers on 127.0.0.1, MNIST in 4 shards."""
    data = os.path.join(work, "mnist-shards")
    os.makedirs(data, exist_ok=True)
    params(data, data__shard_mb=9)
    stage("preprocess", raw, "processed", cwd=data)
    rows = {}
    for count in (1, 2):
        dirs = [os.path.join(work, f"workers{count}-{i}") for i in range(count)]
        cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(count)]}
        processes = []
        start = time.perf_counter()
        for index, workdir in enumerate(dirs):
            os.makedirs(workdir, exist_ok=True)
            params(workdir, train__epochs=epochs, train__distribute="multi_worker" if count > 1 else "none")
            env = {**ENV, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "stages.train", f"{data}/processed/train", f"{data}/processed/val",
                 "model.keras", "log"], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True))
        outputs = [p.communicate()[0] for p in processes]
        wall = time.perf_counter() - start
        if any(p.returncode for p in processes):
            sys.exit("bench: multi-worker training failed:\n" + "\n".join(o[-2000:] for o in outputs))
        _, evaluated, _ = stage("evaluate", "model.keras", f"{data}/processed/test", "evaluate.json",
                                "predictions.csv", cwd=dirs[0])
        seconds, rate = fit_rate(outputs[0])
        rows[count] = {"fit_seconds": seconds, "images_per_s": rate, "wall_seconds": round(wall, 1),
                       "test_accuracy": json.load(open(os.path.join(dirs[0], "evaluate.json")))["accuracy"],
                       "val_accuracy": float(re.findall(r"val_accuracy: ([\d.]+)", outputs[0])[-1])}
        print(f"{count} worker(s): {rows[count]}", flush=True)
    return {"epochs": epochs, "runs": rows, "ratio": round(rows[2]["images_per_s"] / rows[1]["images_per_s"], 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--work", default="/tmp/scale-bench")
    parser.add_argument("--phases", default="ingest,memory,speed,mnist,workers")
    parser.add_argument("--mnist", default=os.path.join(REPO, "..", "shared", "datasets", "mnist.npz"))
    args = parser.parse_args()
    phases = args.phases.split(",")
    os.makedirs(args.work, exist_ok=True)
    path = os.path.join(RESULTS, "scale.json")
    results = json.load(open(path)) if os.path.exists(path) else {}
    results["machine"] = describe()
    folder = os.path.join(args.work, "images")
    if "ingest" in phases:
        generate(folder, args.images)
        results["ingest"] = {"images": args.images, **ingest(args.work, folder, args.images)}
    if "memory" in phases:
        results["memory"] = [train_on(args.work, f"memory-every-{stride}", stride, 64, 1) for stride in (1, 2, 4)]
    if "speed" in phases:
        results["speed"] = {"streamed": train_on(args.work, "streamed", 4, 64, 2),
                            "in_memory": train_on(args.work, "in-memory", 4, 2048, 2)}
        results["speed"]["ratio"] = round(results["speed"]["streamed"]["images_per_s"]
                                          / results["speed"]["in_memory"]["images_per_s"], 2)
    mnist_raw = os.path.join(args.work, "mnist-raw.npz")
    if {"mnist", "workers"} & set(phases):
        with np.load(args.mnist) as m:  # the download stage's layout
            np.savez(mnist_raw, **{k: m[k] for k in ("x_train", "y_train", "x_test", "y_test")},
                     class_names=np.array([str(d) for d in range(10)]))
    if "mnist" in phases:
        results["mnist"] = mnist(args.work, mnist_raw)
    if "workers" in phases:
        results["workers"] = workers(args.work, mnist_raw)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
