"""A fresh copy of the project as a user clones it, and a web server on 127.0.0.1: for tests and benchmarks.

copy_project lays out exactly the files a clone has before any run (no data, models or DVC cache) in
a new folder; commit_all makes it a git repository, as DVC needs. serve_folder serves a folder over
HTTP on the loopback address, as a dataset mirror would; served_model runs the model's server there.
"""
import contextlib
import functools
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What `git clone` gives a user that `dvc repro` needs: the pipeline, its code and its knobs
PROJECT_FILES = ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore", ".dvc/config", "stages", "mnist_cnn",
                 "data/own/README.md")
GIT = ["git", "-c", "user.name=mnist-cnn", "-c", "user.email=mnist-cnn@localhost"]


def copy_project(root, files=PROJECT_FILES):
    """Copy the project's files (paths relative to the repository) into root; returns root."""
    for name in files:
        source, target = os.path.join(REPO, name), os.path.join(root, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.isdir(source):
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target)
    return root


def commit_all(root, message="project"):
    """Commit everything in root, making it a git repository on branch main first if it is not one."""
    if not os.path.isdir(os.path.join(root, ".git")):
        subprocess.run(GIT + ["init", "-q", "-b", "main"], cwd=root, check=True)
    subprocess.run(GIT + ["add", "-A"], cwd=root, check=True)
    subprocess.run(GIT + ["commit", "-qm", message], cwd=root, check=True)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files without logging each request to stderr."""

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


@contextlib.contextmanager
def serve_folder(folder, handler=QuietHandler):
    """Serve folder over HTTP on 127.0.0.1 (a free port) in a thread; yields the server, its URL as .url."""
    server = _Server(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    # checks for shutdown every 50 ms, not socketserver's 500: each test's server stops without half a second's wait
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def free_ports(count):
    """`count` distinct free ports of 127.0.0.1: each socket stays bound until all are, so none repeats."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port():
    return free_ports(1)[0]


@contextlib.contextmanager
def served_model(cwd, *options, env=None, timeout=60, command=(sys.executable, "-m", "mnist_cnn.serve")):
    """`python -m mnist_cnn.serve` (or another command, an installed mnist-serve) in cwd on a free port of
    127.0.0.1; yields (process, base URL) once /health answers, and stops the server after."""
    port = free_port()
    process = subprocess.Popen([*command, "--port", str(port), *options], cwd=cwd,
                               env={**os.environ, "PYTHONPATH": REPO, **(env or {})},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server stopped: {process.stdout.read()}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1):
                    break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"the server did not answer /health within {timeout} s")
                time.sleep(0.05)
        yield process, url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
