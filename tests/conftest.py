"""Fixtures shared by the tests: tiny generated datasets, params files, a loopback HTTP server."""
import contextlib
import gc
import importlib
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import filelock
import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw, ImageFont

from mnist_cnn.files import write_npz
from mnist_cnn.params import set_dotted
from mnist_cnn.runner import quiet_tensorflow
from tools.project import GIT, REPO, QuietHandler, commit_all, copy_project, serve_folder, served_model  # noqa: F401

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# pytest compiles each test module with its asserts rewritten, and caches the result in tests/__pycache__ (ignored by
# git) unless PYTHONDONTWRITEBYTECODE is set, as in Docker's Python images and on this project's CI machines: then
# every process of every run (each xdist worker collects every module) redoes it, about 6 s of a worker's start-up.
# Cached here all the same; the processes the tests start keep the environment's setting.
sys.dont_write_bytecode = False


def start_tensorflow():
    """Tests that train in-process share one TensorFlow runtime, whose thread pools can be set only before it
    starts: set them, before any test module is imported, to the default train.threads, which train.set_threads
    then leaves alone."""
    tf = quiet_tensorflow()
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(2)

# What a CPU with and without native bfloat16 lists: `pytest --auto-precision X` makes every process of the run
# (stages, dvc repro) read one of these instead of /proc/cpuinfo, so train.precision: auto picks X on any machine
STAND_IN_CPUINFO = {"mixed_bfloat16": "model name\t: stand-in CPU with AVX512-BF16\nflags\t\t: fpu sse avx2 fma "
                                      "avx512f avx512_bf16\n",
                    "float32": "model name\t: stand-in CPU with AVX2\nflags\t\t: fpu sse avx2 fma\n"}


def pytest_addoption(parser):
    parser.addoption("--auto-precision", choices=sorted(STAND_IN_CPUINFO),
                     help="run as on a CPU where train.precision: auto picks this: the suite's verdict may not "
                          "depend on it (default: what this CPU makes auto pick)")


def pytest_configure(config):
    choice = config.getoption("--auto-precision")
    if choice:  # in the controller and in each xdist worker, before any test starts a process
        path = os.path.join(str(config.rootpath), ".pytest_cache", f"cpuinfo-{choice}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(f"{path}.{os.getpid()}", "w") as f:
            f.write(STAND_IN_CPUINFO[choice])
        os.replace(f"{path}.{os.getpid()}", path)
        os.environ["MNIST_CNN_CPUINFO"] = path
    # Not in xdist's controller, which runs no test: TensorFlow's import (about 4 s) would delay every worker's start
    if hasattr(config, "workerinput") or not config.getoption("numprocesses", None):
        start_tensorflow()


# The files that take longest (each file's test seconds, from a whole run on 2 cores), started first: xdist gives each
# worker a whole file at a time (--dist loadfile), in this order (--no-loadscope-reorder in pytest.ini), and a long
# file drawn last would run on alone after the others finished. test_train.py second: the first file's tests wait for
# the session's baseline run (conftest's baseline), and a second worker starting on a file that needs it too would
# wait beside it (36 s idle, measured) instead of training
LONGEST_FIRST = ["test_pipeline.py", "test_train.py", "test_experiments.py", "test_reproducibility.py",
                 "test_distribute.py", "test_export.py", "test_serve.py", "test_shards.py", "test_serve_hostile.py",
                 "test_predict.py", "test_download.py", "test_streaming.py", "test_page.py", "test_evaluate.py",
                 "test_machine.py", "test_preprocess.py", "test_plot.py"]


def pytest_itemcollected(item):
    """A test marked stage (a few seconds in a new process) is also slow: `pytest -m "not slow"` stays quick."""
    if item.get_closest_marker("stage"):
        item.add_marker(pytest.mark.slow)


@pytest.hookimpl(trylast=True)  # after pytest-randomly's shuffle: the order within each file stays random
def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: other files keep their order


REAL_MNIST = os.path.join(REPO, "..", "shared", "datasets", "mnist.npz")
needs_real_mnist = pytest.mark.skipif(not os.path.exists(REAL_MNIST),
                                      reason="real MNIST mirror ../shared/datasets/mnist.npz is absent")


def digit_images(count, seed):
    """count 28x28 uint8 images of the digits 0-9 (label i % 10), drawn at random sizes and offsets."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, 28, 28), np.uint8)
    labels = np.arange(count) % 10
    for i, label in enumerate(labels):
        image = Image.new("L", (28, 28))
        font = ImageFont.load_default(size=int(rng.integers(16, 23)))
        centre = (14 + int(rng.integers(-2, 3)), 14 + int(rng.integers(-2, 3)))
        ImageDraw.Draw(image).text(centre, str(label), fill=255, font=font, anchor="mm")
        images[i] = np.clip(np.asarray(image) + rng.integers(0, 30, (28, 28)), 0, 255)
    return images, labels.astype(np.uint8)


def tiny_arrays(n_train=300, n_test=100, seed=0):
    """A Keras-layout dataset of generated digits: x_train, y_train, x_test, y_test."""
    x_train, y_train = digit_images(n_train, seed)
    x_test, y_test = digit_images(n_test, seed + 1)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def image_folder(root, classes=("zero", "one", "two"), per_class=30, seed=0):
    """A folder dataset of generated digits: root/<class>/*, in several formats, sizes and polarities."""
    images, labels = digit_images(per_class * 10, seed)
    for label, name in enumerate(classes):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i, image in enumerate(images[labels == label][:per_class]):
            style = i % 3
            if style == 0:
                Image.fromarray(image).save(os.path.join(root, name, f"{i:03d}.png"))
            elif style == 1:
                Image.fromarray(255 - image).resize((40, 40)).save(os.path.join(root, name, f"{i:03d}.jpg"))
            else:
                Image.fromarray(image).convert("RGB").save(os.path.join(root, name, f"{i:03d}.bmp"))
    return root


def write_params(directory, **overrides):
    """Copy the repository's params.yaml into directory with dotted-key overrides (data__limit=...)."""
    with open(os.path.join(REPO, "params.yaml")) as f:
        params = set_dotted(yaml.safe_load(f), {key.replace("__", "."): value for key, value in overrides.items()})
    with open(os.path.join(directory, "params.yaml"), "w") as f:
        yaml.safe_dump(params, f, sort_keys=False)
    return params


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty folder as the current directory, holding the default params.yaml."""
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def processed_dir(tmp_path_factory):
    """train/val/test .npz of the tiny generated dataset, written by the real preprocess stage."""
    from stages import preprocess

    directory = tmp_path_factory.mktemp("processed")
    raw = directory / "raw.npz"
    write_npz(raw, {**tiny_arrays(), "class_names": np.array([str(d) for d in range(10)])})
    write_params(directory)
    with contextlib.chdir(directory):
        preprocess.main([str(raw), str(directory)])
    return directory


SHARD_MB = 0.05  # 66 images of 28x28 per shard: the tiny training split in 4 shards, as a large dataset would be


@pytest.fixture(scope="session")
def sharded_dir(tmp_path_factory):
    """The tiny dataset of processed_dir, preprocessed with data.shard_mb = SHARD_MB: several shards per split."""
    directory = tmp_path_factory.mktemp("sharded")
    write_npz(directory / "raw.npz", {**tiny_arrays(), "class_names": np.array([str(d) for d in range(10)])})
    write_params(directory, data__shard_mb=SHARD_MB)
    result = subprocess.run([sys.executable, "-m", "stages.preprocess", "raw.npz", "."], cwd=directory,
                            env={**os.environ, **CODE_ENV}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return directory


@pytest.fixture
def http_server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1; special paths misbehave: /stall/* never answers in time,
    /half/* sends half the file it announces, /drip/* sends its headers, then a byte every 0.2 s."""
    root = tmp_path / "www"
    root.mkdir()
    stop = threading.Event()

    class Handler(QuietHandler):
        def do_GET(self):
            if self.path.startswith("/stall/"):
                stop.wait(10)  # longer than the client's timeout in the tests
                return
            if self.path.startswith("/drip/"):
                data = (root / self.path[len("/drip/"):]).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                for byte in data:
                    if stop.wait(0.2):
                        return
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                return
            if self.path.startswith("/half/"):
                data = (root / self.path[len("/half/"):]).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                return
            super().do_GET()

    with serve_folder(root, Handler) as server:
        server.root = root
        yield server
        stop.set()  # before shutdown, which waits for the stalled handler


# The repository's code, for commands run in a test's own folder (a project copy brings its own)
CODE_ENV = {"PYTHONPATH": REPO}


def run_stage(module, *args, cwd, env=None):
    """Run a stage (stages.train) or command (mnist_cnn.predict) as dvc would, in a subprocess."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)],
                          cwd=cwd, env={**os.environ, **CODE_ENV, **(env or {})}, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture
def run_here(capsys, monkeypatch):
    """run_stage's twin for the checks of a user's mistake: the stage or command runs as runner.run runs it (its one
    line, its exit status, a bug's traceback) but in this process, where TensorFlow is loaded already, instead of in
    a new one that imports it again (5 CPU-s each). What only a process shows stays with run_stage: signals, the
    library output the runner filters, exit-time hangs, the environment read at import."""
    from mnist_cnn import runner

    monkeypatch.setattr(runner, "die_with_parent", lambda: None)  # this worker's parent is pytest, not dvc

    def run_here(module, *args, cwd):
        main = importlib.import_module(module).main
        command = None if module.startswith("stages.") else module.rsplit(".", 1)[1]
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", [module, *map(str, args)])
        with contextlib.chdir(cwd):
            try:
                status = runner._outcome(main, command)
            except SystemExit as e:  # predict's exit status 1 when some of its files failed
                status = e.code
        gc.collect()  # as run() does: what the error's traceback held (a tf.data pipeline) freed now
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(sys.argv, status, out, err)

    return run_here


# The tiny configuration of the end-to-end tests: generated digits, one short epoch.
TINY_PARAMS = {"data__dataset": "npz", "data__path": "tiny.npz", "train__epochs": 1, "train__batch_size": 16}


# DVC's commands that the tests run in their own process (DVC's own test suite calls its CLI's main the same way):
# each saves the 1.2 CPU-s of a new process importing DVC (docs/development.md, "Where the time goes"). Not `exp run`
# or `queue start`, which can start DVC's detached workers by forking the calling process: those run as a user runs
# them. `queue status` and `queue remove` only read and edit the queue (no thread or process is left behind).
DVC_IN_PROCESS = {"add", "artifacts", "checkout", "dag", "init", "metrics", "params", "plots", "pull", "push",
                  "remote", "repro", "status", ("exp", "show"), ("queue", "status"), ("queue", "remove")}


def dvc_here(cwd, args, env):
    """`dvc ARGS` run by DVC's entry point in this process, in cwd with env, as a CompletedProcess: what DVC and the
    stages it starts write to stdout and stderr, each in the order written, and DVC's exit status. DVC's logging is
    set up afresh for the call, as a new `dvc` process sets it up on import, whatever the libraries loaded in this
    process did to loggers meanwhile; everything it changes is put back after."""
    before = (sys.stdout, sys.stderr)  # as before dvc's first import here, which wraps them (colorama.init)
    import dvc.logger
    from colorama import initialise as colorama  # DVC's `colorama.deinit()` and `reinit()` set sys.stdout to these
    from dvc.cli import main
    from dvc.ui import ui

    streams = ("orig_stdout", "orig_stderr", "wrapped_stdout", "wrapped_stderr")
    loggers = [logger for name, logger in logging.root.manager.loggerDict.items()
               if name.split(".")[0] in ("dvc", "dvc_objects", "dvc_data") and isinstance(logger, logging.Logger)]
    saved = {"environ": dict(os.environ), "streams": before, "fds": (os.dup(1), os.dup(2)),
             "loggers": [(logger.handlers, logger.level, logger.disabled) for logger in loggers],
             "disable": logging.root.manager.disable, "colorama": [getattr(colorama, name) for name in streams]}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(out.fileno(), 1)  # the stages' output, which DVC passes through from fds 1 and 2
        os.dup2(err.fileno(), 2)
        # Python's writes go to the same fds, in order with the stages'; not closed after (closefd=False): what DVC
        # keeps of them (tqdm's monitor) writes to pytest's capture from then on
        sys.stdout, sys.stderr = (open(fd, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
                                  for fd in (1, 2))
        for logger in loggers:
            logger.handlers, logger.disabled = [], False
        logging.disable(logging.NOTSET)
        dvc.logger.setup()  # its handlers on these streams, and colorama's wrappers (ANSI codes stripped off a file)
        for console in ("rich_console", "error_console"):  # built once, with the COLUMNS of its time
            ui.__dict__.pop(console, None)
        os.environ.update(env)
        try:
            with contextlib.chdir(cwd):
                status = main(list(args))
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            for logger, (handlers, level, disabled) in zip(loggers, saved["loggers"]):
                logger.handlers, logger.disabled = handlers, disabled
                logger.setLevel(level)
            logging.disable(saved["disable"])
            for name, stream in zip(streams, saved["colorama"]):
                setattr(colorama, name, stream)
            sys.stdout, sys.stderr = saved["streams"]
            for fd, saved_fd in zip((1, 2), saved["fds"]):
                os.dup2(saved_fd, fd)
                os.close(saved_fd)
            os.environ.clear()
            os.environ.update(saved["environ"])
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(["dvc", *args], status, out.read().decode("utf-8", "replace"),
                                           err.read().decode("utf-8", "replace"))


def command_env(env=None):
    """The environment of a command run in a project: the test's Python first on PATH, as an activated venv would
    put it, DVC's analytics off, and env's variables."""
    return {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
            "DVC_NO_ANALYTICS": "1", **(env or {})}


def run_to_files(command, cwd, env):
    """subprocess.run(command, capture_output=True, text=True), its output captured through files, not pipes: a process
    that the command leaves behind (the workers `dvc queue start` detaches, which wait several seconds for more work
    before they stop) inherits them, and would keep a pipe's reader waiting until it exits. Decoded as text=True
    decodes (the locale's encoding, strict, universal newlines); what such a process writes later is not read."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        returncode = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=err, timeout=600).returncode
        out.seek(0)
        err.seek(0)
        stdout, stderr = (io.TextIOWrapper(file, newline=None).read() for file in (out, err))
    return subprocess.CompletedProcess(list(command), returncode, stdout, stderr)


def sh(cwd, *command, env=None, check=True):
    """Run a command in a project with the test's Python first on PATH, as an activated venv would."""
    env = command_env(env)
    if command[0] == "dvc" and (command[1] in DVC_IN_PROCESS or tuple(command[1:3]) in DVC_IN_PROCESS):
        result = dvc_here(cwd, command[1:], env)
    else:
        result = run_to_files(command, cwd, env)
    if check:
        assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


STAGES = ("download", "preprocess", "train", "evaluate", "robustness", "export", "plot")


def stages_run(output):
    """The stages that `dvc repro` output says it ran, in pipeline order."""
    return [stage for stage in STAGES if f"Running stage '{stage}'" in output]


def make_tiny_project(root):
    """The files a user clones (no data, no results) plus a generated dataset, committed in a new git repo."""
    copy_project(root)
    np.savez(os.path.join(root, "tiny.npz"), **tiny_arrays(n_train=300, n_test=100))
    write_params(root, **TINY_PARAMS)
    commit_all(root, "tiny project")
    return root


def built_once(tmp_path_factory, name, build):
    """The folder that build(folder) fills once per test session, by whichever xdist worker asks first while the
    others wait on a file lock (without xdist: the session's own). What it holds is only read: tests copy it."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")  # the same in every worker of one session
    shared = tmp_path_factory.getbasetemp().parent / f"{name}-{run}" if run else tmp_path_factory.mktemp(name)
    done = shared.parent / f"{shared.name}.complete"
    with filelock.FileLock(str(shared) + ".lock"):
        if not done.exists():
            shutil.rmtree(shared, ignore_errors=True)
            shared.mkdir(parents=True)
            build(shared)
            done.touch()
    return shared


def trained_paths(directory):
    """Where trained_run's outputs lie under its folder."""
    return {"processed": directory / "processed", "model": directory / "models" / "model.keras",
            "log_dir": directory / "metrics" / "train", "metrics": directory / "metrics" / "evaluate.json",
            "predictions": directory / "metrics" / "predictions.csv"}


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, processed_dir):
    """A model trained for 4 epochs on the tiny data in float32, and its evaluation: the paths of every output.
    Trained once per session (built_once): about 6 s of a worker's time."""
    from stages import evaluate, train

    def build(directory):
        paths = trained_paths(directory)
        shutil.copytree(processed_dir, paths["processed"])
        # float32 on every machine (auto is bfloat16 on a CPU with AVX512-BF16): the exported models compute in
        # float32, and the tests compare them with this model's own predictions to 1e-4
        write_params(directory, train__epochs=4, train__batch_size=16, train__precision="float32")
        with contextlib.chdir(directory):
            train.main([str(paths["processed"] / "train"), str(paths["processed"] / "val"), str(paths["model"]),
                        str(paths["log_dir"])])
            evaluate.main([str(paths["model"]), str(paths["processed"] / "test"), str(paths["metrics"]),
                           str(paths["predictions"])])

    return trained_paths(built_once(tmp_path_factory, "trained", build))


@pytest.fixture(scope="session")
def exported_run(tmp_path_factory, trained_run):
    """trained_run's model exported by the real export stage into a copy of its folder: the paths of its outputs
    added. Exported once per session (built_once)."""
    from stages import export

    def build(directory):
        shutil.copytree(trained_run["model"].parent.parent, directory, dirs_exist_ok=True)
        with contextlib.chdir(directory):
            export.main([str(trained_run["model"]), str(trained_run["processed"] / "test"), "models",
                         "metrics/export.json"])

    directory = built_once(tmp_path_factory, "exported", build)
    return {**trained_run, "exports": directory / "models", "export_metrics": directory / "metrics" / "export.json"}


SERVE_LIMIT = 2_000_000  # the test server's --max-upload-mb 2, in bytes


def png(pixels):
    """An image array as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def served(exported_run, tmp_path_factory):
    """The tiny exported model served from a folder laid out like the project (models/), with its own TMPDIR
    (where no request may write a file)."""
    root = tmp_path_factory.mktemp("served")
    (root / "models").mkdir()
    for name in ("model.onnx", "model.keras", "classes.json"):
        (root / "models" / name).write_bytes((exported_run["exports"] / name).read_bytes())
    scratch = root / "tmp"
    scratch.mkdir()
    # Python's temporary files refuse in the server (Starlette's spooled uploads roll over to one): a request
    # that would write one fails with 500 instead
    no_tempfiles = root / "no_tempfiles"
    no_tempfiles.mkdir()
    (no_tempfiles / "sitecustomize.py").write_text(
        "import tempfile\n\n\ndef refuse(*args, **kwargs):\n"
        "    raise OSError('the server under test may not write temporary files')\n\n\n"
        "tempfile.TemporaryFile = tempfile.NamedTemporaryFile = tempfile.mkstemp = tempfile.mkdtemp = refuse\n")
    with served_model(root, "--max-upload-mb", str(SERVE_LIMIT / 1e6), "--max-files", "8",
                      env={"TMPDIR": str(scratch), "PYTHONPATH": f"{no_tempfiles}{os.pathsep}{REPO}"}) as (_, url):
        # onnxruntime leaves a session id file (.ses) there when it loads the model: what the server wrote
        # before its first request
        yield {"url": url, "root": root, "tmp": scratch, "tmp_at_start": sorted(os.listdir(scratch))}


@contextlib.contextmanager
def mounted_tmpfs(path, *options):
    """A real small or read-only file system at path (tmpfs; needs root, else the test is skipped)."""
    os.makedirs(path, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def start_stage(module, *args, cwd, **popen):
    """Start a stage in the background, its output readable line by line."""
    return subprocess.Popen([sys.executable, "-u", "-m", module, *map(str, args)],
                            cwd=cwd, env={**os.environ, **CODE_ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def wait_for_line(process, text, timeout=120):
    """Read a process's stdout until a line contains text."""
    deadline = time.time() + timeout
    for line in process.stdout:
        if text in line:
            return line
        assert time.time() < deadline, f"no line with {text!r} within {timeout} s"
    raise AssertionError(f"process ended before printing {text!r}")


@pytest.fixture(scope="session")
def baseline(tmp_path_factory):
    """A committed tiny run, pushed with its run cache to a local remote: (repo, remote), beside them repro.log (the
    run's output). Built once per test session by whichever xdist worker asks first (the others wait on a file
    lock); tests work in clones or copies."""
    def build(shared):
        root, remote = shared / "project", shared / "remote"
        remote.mkdir()
        make_tiny_project(root)
        sh(root, "dvc", "remote", "add", "-d", "storage", str(remote))
        first = sh(root, "dvc", "repro")
        (shared / "repro.log").write_text(first.stdout + first.stderr)  # what a first run says (test_pipeline)
        sh(root, *GIT, "add", "-A")
        sh(root, *GIT, "commit", "-qm", "baseline run")
        sh(root, "dvc", "push", "--run-cache")

    shared = built_once(tmp_path_factory, "baseline", build)
    root, remote = shared / "project", shared / "remote"
    return root, remote


@pytest.fixture
def clone(baseline, tmp_path):
    root = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(baseline[0]), str(root))
    return root


def set_param(root, key, value):
    """Change one dotted param in a project's params.yaml, as a user editing it would."""
    path = root / "params.yaml"
    params = set_dotted(yaml.safe_load(path.read_text()), {key: value})
    path.write_text(yaml.safe_dump(params, sort_keys=False))
