"""The server under hostile clients and broken models (issue 24), each case a real server process on 127.0.0.1 with a
tiny ONNX model: idle connections, headers and bodies dribbled, huge headers, more connections than it may open
files, slow images beside /health, NaN answers, a model made for one image at a time, workers dying as they start."""
import asyncio
import concurrent.futures
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
from tiny_models import tiny_onnx

from conftest import CODE_ENV, REPO, digit_images, png, served_model
from tools.http_clients import large_digit_png, multipart_request, under_attack, well_behaved
from tools.project import free_port

QUICK_LIMITS = ("--keep-alive", "1", "--header-timeout", "1", "--body-timeout", "1")


def test_the_well_behaved_client_resends_as_a_browser_when_a_kept_alive_connection_closes_unanswered():
    """The clients behind every "no request failed" below: a server that closes each connection after its first
    answer (a keep-alive time up as the next request went out) fails none of them, each sent again on a new
    connection; one that closes every connection before answering fails every request, none answered."""
    async def once(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def never(reader, writer):
        writer.close()

    async def client(handler):
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.5, stop.set)
        async with server:
            return await well_behaved(port, [f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()], stop)

    answered, failed = asyncio.run(client(once))
    assert failed == 0 and len(answered) > 10  # every other request went out on a connection closed under it
    answered, failed = asyncio.run(client(never))
    assert answered == [] and failed > 10


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("models")
    tiny_onnx(directory / "model.onnx")
    return directory


@pytest.fixture(scope="module")
def guarded(model_dir):
    """A server of one process with timeouts of a second."""
    with served_model(model_dir, "--model", "model.onnx", "--workers", "1", *QUICK_LIMITS) as (process, url):
        yield process, url


@pytest.fixture(scope="module")
def digits():
    return [png(image) for image in digit_images(3, seed=5)[0]]


def serve(cwd, *options, env=None, open_files=None, timeout=30):
    """`python -m mnist_cnn.serve` on a free port, run to its end (a server that does not start), its open files
    limited as `ulimit -n open_files` would."""
    return subprocess.run(server_command(open_files) + ["--port", str(free_port()), *map(str, options)], cwd=cwd,
                          env={**os.environ, **CODE_ENV, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def server_command(open_files=None):
    """The command that starts the server, in a process that may open `open_files` files (soft and hard limit)."""
    if open_files is None:
        return [sys.executable, "-m", "mnist_cnn.serve"]
    return [sys.executable, "-c", f"import resource, runpy; resource.setrlimit(resource.RLIMIT_NOFILE, "
                                  f"({open_files}, {open_files})); runpy.run_module('mnist_cnn.serve', "
                                  f"run_name='__main__', alter_sys=True)"]


def connect(url):
    address = urlsplit(url)
    return socket.create_connection((address.hostname, address.port), timeout=10)


def answer(connection):
    """What the server sends until it closes the connection: (status or None, JSON body or None, seconds)."""
    started, data = time.monotonic(), b""
    try:
        while chunk := connection.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    if not data:
        return None, None, time.monotonic() - started
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body), time.monotonic() - started


def strict_json(text):
    """JSON as the standard has it: NaN and Infinity are not numbers there (Python's json reads them)."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_a_connection_that_never_sends_is_closed_after_the_keep_alive_timeout(guarded):
    with connect(guarded[1]) as connection:
        status, _, seconds = answer(connection)
    assert status is None and 0.8 < seconds < 3


@pytest.mark.parametrize("part", ["headers", "body"])
def test_a_request_dribbled_a_byte_at_a_time_is_408_in_one_line(guarded, part):
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
    with connect(guarded[1]) as connection:
        connection.sendall(head + (b"Content-Length: 1000\r\n\r\n--b\r\n" if part == "body" else b""))
        started = time.monotonic()
        try:
            while not select.select([connection], [], [], 0.2)[0] and time.monotonic() - started < 5:
                connection.sendall(b"a")  # a byte every 0.2 s, as a slowloris client sends
        except OSError:  # closed by the server
            pass
        status, body, _ = answer(connection)
    seconds = time.monotonic() - started
    assert status == 408 and 0.8 < seconds < 3, (status, seconds)
    assert body == {"detail": f"the request {'line and headers' if part == 'headers' else 'body'} took over 1 s "
                              f"to arrive: send {'them' if part == 'headers' else 'it'} at once"
                              + ("" if part == "headers" else ", or a smaller one")}


def test_headers_over_the_limit_are_431_and_the_server_holds_none_of_them(guarded, digits):
    process, url = guarded
    requests.get(f"{url}/health")
    before = rss_mb(process.pid)
    for _ in range(20):  # a header without end, sent until the server answers: it reads 16 kB of it and closes
        with connect(url) as connection:
            connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Huge: ")
            try:
                for _ in range(300):  # 20 MB
                    if select.select([connection], [], [], 0)[0]:
                        break
                    connection.sendall(b"a" * 65536)
            except OSError:  # closed by the server before it was all sent
                pass
            status, body, _ = answer(connection)
        assert status == 431 and "over the limit of 16,000 bytes" in body["detail"]
    assert rss_mb(process.pid) - before < 10
    # the limit is on the whole: many headers under it in one piece pass, over it in one piece are 431 too
    assert requests.get(f"{url}/health", headers={f"X-{i}": "a" * 1000 for i in range(14)}).status_code == 200
    refused = requests.get(f"{url}/health", headers={f"X-{i}": "a" * 1000 for i in range(17)})
    assert refused.status_code == 431 and refused.json()["detail"].startswith("the request line and headers are")


def test_a_large_image_is_decoded_off_the_event_loop(guarded):
    """Two images of 16 megapixels, one after another (about 0.4 s each to decode and normalise), while /health is
    asked every 20 ms: each answer comes at once."""
    url = guarded[1]
    large = large_digit_png()
    waits = []
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sent = pool.submit(lambda: [requests.post(f"{url}/predict", files={"file": ("big.png", large, "image/png")})
                                    for _ in range(2)])
        while not sent.done():
            started = time.monotonic()
            assert requests.get(f"{url}/health").status_code == 200
            waits.append(time.monotonic() - started)
            time.sleep(0.02)
        assert [response.status_code for response in sent.result()] == [200] * 2
    assert len(waits) > 10 and max(waits) < 0.25, max(waits)


@pytest.mark.stage
def test_a_nan_answer_for_an_image_is_a_500_in_one_line_of_json(tmp_path, digits):
    tiny_onnx(tmp_path / "nan.onnx", nan="for_digits")  # finite for the blank images of the start's check
    with served_model(tmp_path, "--model", "nan.onnx", "--workers", "1") as (_, url):
        for path, field in (("/predict", "file"), ("/predict/batch", "files")):
            response = requests.post(url + path, files=[(field, ("d.png", digits[0], "image/png"))])
            assert response.status_code == 500
            assert strict_json(response.text) == {"detail": "d.png: the model's output for this image is NaN or "
                                                            "infinite: the model is broken; train it again"}


@pytest.mark.stage
def test_a_model_that_answers_nan_is_refused_at_start_in_one_line(tmp_path):
    tiny_onnx(tmp_path / "nan.onnx", nan="always")
    result = serve(tmp_path, "--model", "nan.onnx", "--workers", "2")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [
        "error: nan.onnx answers NaN or infinite probabilities for a blank image: the model is broken; train it "
        "again (`dvc repro --force train`) or serve another --model"]


@pytest.mark.stage
def test_a_model_made_for_one_image_at_a_time_answers_a_batch(tmp_path, digits):
    tiny_onnx(tmp_path / "one.onnx", batch=1)
    tiny_onnx(tmp_path / "any.onnx")  # the same weights, any batch
    answers = {}
    for name in ("one.onnx", "any.onnx"):
        with served_model(tmp_path, "--model", name, "--workers", "1") as (_, url):
            files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(digits)]
            response = requests.post(f"{url}/predict/batch", files=files)
            assert response.status_code == 200, response.text
            answers[name] = response.json()["predictions"]
    assert len(answers["one.onnx"]) == 3
    np.testing.assert_allclose([[t["probability"] for t in p["top"]] for p in answers["one.onnx"]],
                               [[t["probability"] for t in p["top"]] for p in answers["any.onnx"]], rtol=1e-5)


@pytest.mark.stage
def test_more_connections_than_the_limit_is_one_line_at_start(model_dir):
    result = serve(model_dir, "--model", "model.onnx", "--max-connections", "500", open_files=256)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [
        "error: --max-connections 500: a server process may open 256 files here (ulimit -n) and needs 128 besides "
        "its connections: give --max-connections 128 or less, or raise the limit"]


@pytest.mark.slow
def test_idle_connections_beyond_the_open_files_limit_leave_room_for_new_clients(model_dir):
    """600 idle connections to a server that may open 256 files: each one beyond --max-connections closes the
    oldest, so a new client is answered (without the cap, the server ran out of files and answered nothing)."""
    with served_model(model_dir, "--model", "model.onnx", "--workers", "1", "--max-connections", "64",
                      "--keep-alive", "60", command=server_command(open_files=256)) as (process, url):
        idle = []
        for _ in range(600):
            idle.append(connect(url))
        time.sleep(0.5)
        started = time.monotonic()
        assert requests.get(f"{url}/health", timeout=5).status_code == 200
        assert time.monotonic() - started < 1
        still_open = []
        for connection in idle:
            connection.settimeout(0.001)
            try:
                still_open.append(connection.recv(1) != b"")
            except socket.timeout:
                still_open.append(True)
            except ConnectionResetError:
                still_open.append(False)
            connection.close()
        # the newest stayed (the cap, less the health check's): the oldest went first
        assert 60 <= sum(still_open) <= 64 and all(still_open[-60:]) and not any(still_open[:500]), sum(still_open)
        assert len(os.listdir(f"/proc/{process.pid}/fd")) < 128


@pytest.mark.slow
def test_health_answers_within_a_second_while_every_attack_runs_at_once(model_dir, digits):
    """1 s deadlines, a cap of 64 connections; beyond them, 150 idle connections, 100 clients dribbling headers,
    20 dribbling bodies, 2 sending headers without end and 2 sending images of 16 megapixels (about 0.4 s each to
    decode), by 4 and alone, each reconnecting at once whenever the server closes it."""
    with served_model(model_dir, "--model", "model.onnx", "--workers", "1", "--max-connections", "64",
                      *QUICK_LIMITS) as (_, url):
        port = int(url.rsplit(":", 1)[1])
        large = large_digit_png()
        slow = (multipart_request(port, "/predict/batch", "files", [large] * 4),
                multipart_request(port, "/predict", "file", [large]))
        plan = {"idle connections": (150, ()), "headers dribbled": (100, ()), "bodies dribbled": (20, ()),
                "huge headers": (2, ()), "slow decodes": (2, slow)}
        # one small image is classified on the event loop, a batch of them in the small images' threads
        requests = [multipart_request(port, "/predict", "file", [image]) for image in digits]
        requests.append(multipart_request(port, "/predict/batch", "files", digits))
        health, got, (predictions, failed) = asyncio.run(under_attack(port, plan, 4, requests))
    assert len(health) > 20 and None not in health and max(health) < 1, health
    assert len(predictions) > 8 and failed == 0 and max(predictions) < 1  # small images never wait for large ones
    assert got["idle connections"]["closed"] > 0 and got["huge headers"]["431"] > 0
    for name in ("headers dribbled", "bodies dribbled"):
        assert got[name]["408"] + got[name]["503"] > 0, got
    assert got["slow decodes"]["connected"] >= 2, got  # and kept the large images' thread busy


def worker_trap(tmp_path, action):
    """A sitecustomize.py that every Python process of the server imports: in each worker, it notes the start in
    starts.log, then `action`s: "kill" (SIGKILL, as the kernel kills a process out of memory) or "lose the model"
    (the worker's model path made missing)."""
    (tmp_path / "trap").mkdir()
    (tmp_path / "trap" / "sitecustomize.py").write_text(f"""import json, os, signal
with open("/proc/self/cmdline", "rb") as f:
    worker = b"spawn_main" in f.read()  # not multiprocessing's resource tracker, the main process's other child
if worker and os.environ.get("MNIST_CNN_SERVE"):
    with open({str(tmp_path / "starts.log")!r}, "a") as f:
        f.write(f"{{os.getpid()}}\\n")
    if {action!r} == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    options = json.loads(os.environ["MNIST_CNN_SERVE"])
    os.environ["MNIST_CNN_SERVE"] = json.dumps({{**options, "model_path": "gone.onnx"}})
""")
    return {"PYTHONPATH": f"{tmp_path / 'trap'}{os.pathsep}{REPO}"}


@pytest.mark.slow
@pytest.mark.parametrize("action, line", [
    ("kill", r"error: server process \d+ was killed by SIGKILL as it started, so the server stopped rather than "
             r"start it again and again: its reason is the line above if there is one; --workers 1 shows it alone"),
    ("lose the model", r"error: server process \d+ exited with status 3 as it started, so the server stopped .*")])
def test_a_worker_that_dies_as_it_starts_stops_the_server_once_in_a_few_lines(tmp_path, action, line):
    tiny_onnx(tmp_path / "model.onnx")
    env = worker_trap(tmp_path, action)
    started = time.monotonic()
    result = serve(tmp_path, "--model", "model.onnx", "--workers", "2", env=env)
    assert result.returncode == 1 and time.monotonic() - started < 15
    lines = result.stderr.splitlines()
    assert re.fullmatch(line, lines[-1]) and "Traceback" not in result.stderr, result.stderr
    others = ["error: gone.onnx not found: run `dvc repro` to train and export the model"] * (action != "kill")
    assert set(lines[:-1]) <= set(others) and len(lines) <= 3, lines
    assert len((tmp_path / "starts.log").read_text().split()) <= 2  # each worker started once: none again


def workers_of(pid):
    """The server's worker processes: its children that multiprocessing spawned (not its resource tracker)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = [int(child) for child in f.read().split()]
    workers = []
    for child in children:
        with open(f"/proc/{child}/cmdline", "rb") as f:
            if b"spawn_main" in f.read():
                workers.append(child)
    return workers


@pytest.mark.slow
def test_a_worker_that_dies_after_it_served_is_started_again(model_dir):
    with served_model(model_dir, "--model", "model.onnx", "--workers", "2") as (process, url):
        time.sleep(2)  # the supervisor looks every half second: it has seen both serve
        workers = workers_of(process.pid)
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            now = workers_of(process.pid)
            if len(now) == len(workers) and workers[0] not in now:
                break
            time.sleep(0.2)
        assert len(now) == len(workers) and workers[0] not in now and process.poll() is None
        assert requests.get(f"{url}/health").status_code == 200
