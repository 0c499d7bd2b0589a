"""docs/serving.md's claim: each server process loads the model once, in the app's lifespan, and never per request;
with one process, the model main loaded to check it is the one served."""
import collections
import os
import time

import pytest
import requests
from tiny_models import tiny_onnx

from conftest import REPO, digit_images, png, served_model

pytestmark = pytest.mark.slow  # real servers

# Loaded first by every Python process of the server (main and uvicorn's spawned workers): each call of
# runtimes.open_model, the one way the server opens a model, appends the calling process's id to $MODEL_LOADS
COUNTING = """import os

import mnist_cnn.runtimes as runtimes

opened = runtimes.open_model


def counted(*args, **kwargs):
    with open(os.environ["MODEL_LOADS"], "a") as log:
        log.write(f"{os.getpid()}\\n")
    return opened(*args, **kwargs)


runtimes.open_model = counted
"""


def loads(log):
    """How many times each process opened the model."""
    return collections.Counter(log.read_text().split()) if log.exists() else collections.Counter()


@pytest.mark.parametrize("workers", [1, 2])
def test_each_server_process_loads_the_model_once_and_never_per_request(tmp_path, workers):
    (tmp_path / "counting").mkdir()
    (tmp_path / "counting" / "sitecustomize.py").write_text(COUNTING)
    tiny_onnx(tmp_path / "model.onnx")
    log = tmp_path / "loads"
    env = {"MODEL_LOADS": str(log), "PYTHONPATH": f"{tmp_path / 'counting'}{os.pathsep}{REPO}"}
    image = png(digit_images(1, seed=5)[0][0])
    with served_model(tmp_path, "--model", "model.onnx", "--workers", str(workers), env=env) as (process, url):
        deadline = time.time() + 60  # /health answers once one worker is up; the others may still be loading
        while len(loads(log)) < 1 + (workers > 1) * workers and time.time() < deadline:
            time.sleep(0.2)
        started = loads(log)
        for _ in range(6 * workers):  # a new connection each: the requests spread over the workers
            response = requests.post(f"{url}/predict", files={"file": ("d.png", image, "image/png")},
                                     headers={"Connection": "close"})
            assert response.status_code == 200, response.text
        assert loads(log) == started  # no request loaded it again
    main = str(process.pid)
    if workers == 1:  # main's own check of the model is the model served
        assert started == {main: 1}
    else:  # main's check, then each worker's lifespan, once each
        assert started[main] == 1 and sorted(started.values()) == [1] * (1 + workers), started
