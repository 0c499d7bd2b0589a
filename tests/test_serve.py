"""The served model: the HTTP API and every bad request, against a real server on 127.0.0.1; its OpenAPI pages
offline, its lifespan, its access log and its shutdown on a signal."""
import asyncio
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import sys
import time
import zlib
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
from crafted_images import dds_of_unknown_pixel_format, encoded
from PIL import Image
from tiny_models import tiny_onnx

from conftest import SERVE_LIMIT as LIMIT
from conftest import digit_images, png, run_stage, served_model
from mnist_cnn.errors import UserError
from mnist_cnn.images import decode_image, to_model_image

pytestmark = pytest.mark.slow  # a trained, exported model served by a real server


@pytest.fixture(scope="module")
def digits():
    images, labels = digit_images(5, seed=11)
    return [png(image) for image in images], labels


def test_health_names_the_model_it_loaded(served):
    health = requests.get(f"{served['url']}/health").json()
    assert health == {"status": "ok", "model": "models/model.onnx", "format": "onnx",
                      "classes": [str(d) for d in range(10)]}


def test_one_image_gets_the_label_and_top_3_of_the_prediction_command(served, digits, tmp_path):
    images, _ = digits
    (tmp_path / "digit.png").write_bytes(images[0])
    command = run_stage("mnist_cnn.predict", "--json", "--top-k", 3, tmp_path / "digit.png", cwd=served["root"])
    expected = json.loads(command.stdout)[0]
    answer = requests.post(f"{served['url']}/predict", files={"file": ("digit.png", images[0], "image/png")}).json()
    assert answer["label"] == expected["label"] and abs(answer["probability"] - expected["probability"]) < 1e-6
    assert [t["label"] for t in answer["top"]] == [t["label"] for t in expected["top_k"]]
    probabilities = [t["probability"] for t in answer["top"]]
    assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)


def test_a_batch_answers_in_order_as_single_requests_do(served, digits):
    images, _ = digits
    batch = requests.post(f"{served['url']}/predict/batch",
                          files=[("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)])
    assert batch.status_code == 200, batch.text
    singles = [requests.post(f"{served['url']}/predict", files={"file": ("d.png", data, "image/png")}).json()
               for data in images]
    predictions = batch.json()["predictions"]
    assert [p["label"] for p in predictions] == [s["label"] for s in singles]
    np.testing.assert_allclose([p["probability"] for p in predictions], [s["probability"] for s in singles],
                               atol=1e-6)


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
def test_every_class_and_the_image_the_model_saw_are_there_when_asked_for(served, digits, path):
    images, _ = digits
    field = "file" if path == "/predict" else "files"
    answer = requests.post(f"{served['url']}{path}?top=10&image=true", files=[(field, ("d.png", images[1],
                                                                                       "image/png"))]).json()
    answer = answer if path == "/predict" else answer["predictions"][0]
    probabilities = [t["probability"] for t in answer["top"]]
    assert sorted(t["label"] for t in answer["top"]) == [str(d) for d in range(10)]
    assert probabilities == sorted(probabilities, reverse=True) and abs(sum(probabilities) - 1) < 1e-5
    expected = to_model_image(decode_image(io.BytesIO(images[1])))  # what the model saw: predict's normalisation
    assert np.array(answer["image"]).shape == (28, 28)
    np.testing.assert_allclose(answer["image"], expected, atol=5e-5)
    more = requests.post(f"{served['url']}{path}?top=1000", files=[(field, ("d.png", images[1], "image/png"))])
    assert len((more.json() if path == "/predict" else more.json()["predictions"][0])["top"]) == 10
    refused = requests.post(f"{served['url']}{path}?top=0", files=[(field, ("d.png", images[1], "image/png"))])
    assert refused.status_code == 400 and refused.json() == {"detail": "top: Input should be greater than or equal "
                                                                       "to 1"}


def test_the_page_and_its_assets_are_served(served):
    page = requests.get(f"{served['url']}/")
    assert page.status_code == 200 and '<canvas id="pad"' in page.text and 'name="viewport"' in page.text
    for asset in ("app.js", "style.css"):
        assert requests.get(f"{served['url']}/static/{asset}").status_code == 200


def component(schema, reference):
    """The schema a {"$ref": "#/components/schemas/Name"} points to, and its name."""
    name = reference["$ref"].rsplit("/", 1)[1]
    return name, schema["components"]["schemas"][name]


def answer_schema(schema, path, method="post", status="200"):
    return component(schema, schema["paths"][path][method]["responses"][status]["content"]["application/json"]
                     ["schema"])


def test_openapi_documents_each_answer_with_the_fields_the_server_sends(served, digits):
    url = served["url"]
    schema = requests.get(f"{url}/openapi.json").json()
    assert {"/predict", "/predict/batch", "/health"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    one = requests.post(f"{url}/predict", files={"file": ("d.png", digits[0][0], "image/png")}).json()
    name, prediction = answer_schema(schema, "/predict")
    assert name == "Prediction" and set(prediction["required"]) == set(one)
    seen = requests.post(f"{url}/predict?image=true", files={"file": ("d.png", digits[0][0], "image/png")}).json()
    assert set(prediction["properties"]) == set(seen) == set(one) | {"image"}  # only when asked for
    assert {p["name"] for p in schema["paths"]["/predict"]["post"]["parameters"]} == {"top", "image"}
    top_name, top = component(schema, prediction["properties"]["top"]["items"])
    assert top_name == "ClassProbability" and set(top["required"]) == set(one["top"][0])
    assert prediction["properties"]["probability"]["type"] == "number"

    batch = requests.post(f"{url}/predict/batch", files=[("files", ("d.png", digits[0][0], "image/png"))]).json()
    name, batch_schema = answer_schema(schema, "/predict/batch")
    assert name == "BatchPrediction" and set(batch_schema["required"]) == set(batch)
    assert component(schema, batch_schema["properties"]["predictions"]["items"])[0] == "Prediction"

    name, health = answer_schema(schema, "/health", "get")
    assert name == "Health" and set(health["required"]) == set(requests.get(f"{url}/health").json())
    assert health["properties"]["status"]["const"] == "ok"

    # the 4xx answers are one line in "detail" (a test below sends each), not FastAPI's list of errors
    for path in ("/predict", "/predict/batch"):
        for status in ("400", "411", "413", "415", "422"):
            name, problem = answer_schema(schema, path, status=status)
            assert name == "Problem" and problem["properties"]["detail"]["type"] == "string"
    assert "HTTPValidationError" not in schema["components"]["schemas"]


EXTERNAL = re.compile(r"(?:https?:)?//[\w.-]+", re.IGNORECASE)  # a URL that names a host: a CDN, fonts


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_openapi_pages_load_everything_from_the_server(served, page):
    """FastAPI's own pages load Swagger UI and ReDoc from a CDN: blank offline (test_page.py opens /docs)."""
    html = requests.get(served["url"] + page)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    assert EXTERNAL.findall(html.text) == []
    assets = re.findall(r'(?:src|href)="([^"]+)"', html.text)
    assert any(asset.endswith(".js") for asset in assets)
    for asset in assets:
        response = requests.get(served["url"] + asset)
        assert response.status_code == 200 and len(response.content) > 1000, asset
def bomb_png(width=30000, height=30000):
    """A valid PNG header claiming width x height 8-bit gray pixels (900 megapixels), in a few dozen bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))


def raw_post(url, body, content_type, extra_headers=()):
    """A request as a hostile client sends it: exact bytes and headers, no help from a library."""
    return requests.post(url, data=body, headers={"Content-Type": content_type, **dict(extra_headers)})


BAD_REQUESTS = {
    "not an image": (lambda u: requests.post(u + "/predict", files={"file": ("notes.png", b"hello", "image/png")}),
                     422, "notes.png: not an image file"),
    "empty file": (lambda u: requests.post(u + "/predict", files={"file": ("empty.png", b"", "image/png")}),
                   422, "empty.png: empty file"),
    "over the size limit": (lambda u: requests.post(u + "/predict", files={"file": (
        "big.png", os.urandom(LIMIT + 1000), "image/png")}), 413, "over the limit of 2,000,000"),
    "decompression bomb": (lambda u: requests.post(u + "/predict", files={"file": ("bomb.png", bomb_png(),
                                                                                    "image/png")}),
                           422, "bomb.png: over the limit of 16,000,000 pixels"),
    "a DDS file named .png": (lambda u: requests.post(u + "/predict", files={"file": (
        "crafted.png", dds_of_unknown_pixel_format(), "image/png")}), 422,
        "crafted.png: not an image file in a format this project reads (PNG, JPEG, BMP, GIF, TIFF, WebP, PGM/PPM)"),
    "broken image data": (lambda u: requests.post(u + "/predict", files={"file": (
        "cut.tif", encoded(digit_images(1, seed=0)[0][0], "TIFF")[:300], "image/tiff")}), 422,
        "cut.tif: broken image data"),
    "wrong part type": (lambda u: requests.post(u + "/predict", files={"file": ("a.txt", b"text", "text/plain")}),
                        415, "a.txt: content type 'text/plain' is not an image"),
    "not multipart": (lambda u: requests.post(u + "/predict", json={"file": "digit.png"}),
                      415, "content type 'application/json': send multipart/form-data"),
    "malformed multipart": (lambda u: raw_post(u + "/predict", b"--xyz\r\nContent-Disposition: form-data\r\n\r\n",
                                               "multipart/form-data; boundary=xyz"), 400, ""),
    "no file field": (lambda u: requests.post(u + "/predict", files={"picture": ("d.png", bomb_png(), "image/png")}),
                      400, "no 'file' in the request"),
    "too many files": (lambda u: requests.post(u + "/predict/batch", files=[
        ("files", (f"{i}.png", b"x", "image/png")) for i in range(9)]), 400, "Too many files"),
    "chunked": (lambda u: requests.post(u + "/predict", data=iter([b"--b\r\n", b"x"]),
                                        headers={"Content-Type": "multipart/form-data; boundary=b"}),
                411, "no Content-Length"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_a_bad_request_is_a_4xx_with_one_line_and_the_server_carries_on(served, digits, case):
    send, status, message = BAD_REQUESTS[case]
    response = send(served["url"])
    assert response.status_code == status, (response.status_code, response.text)
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and message in detail, detail
    good = requests.post(f"{served['url']}/predict", files={"file": ("d.png", digits[0][0], "image/png")})
    assert good.status_code == 200
    assert sorted(os.listdir(served["tmp"])) == served["tmp_at_start"]


def test_uploads_up_to_the_limit_stay_in_memory(served, digits):
    """Starlette spools uploads over 1 MB to a temporary file; the server raises that to its body limit."""
    image = np.asarray(Image.open(io.BytesIO(digits[0][0])).resize((1100, 1100)))
    noisy = np.maximum(image, np.random.default_rng(0).integers(0, 256, image.shape, dtype=np.uint8))
    data = png(noisy)  # noise does not compress: 1.2 MB
    assert 1_100_000 < len(data) < LIMIT - 10_000
    response = requests.post(f"{served['url']}/predict", files={"file": ("large.png", data, "image/png")})
    assert response.status_code == 200, response.text
    assert sorted(os.listdir(served["tmp"])) == served["tmp_at_start"]


def test_bad_options_are_one_line(tmp_path):
    for options, message in ((["--model", "missing.onnx"], "missing.onnx not found"),
                             (["--max-upload-mb", "0"], "--max-upload-mb 0.0: give a size above 0"),
                             (["--port", "70000"], "--port 70000: give a port from 1 to 65535"),
                             (["--shutdown-timeout", "0"], "--shutdown-timeout 0.0: give a number of seconds")):
        result = run_stage("mnist_cnn.serve", *options, cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), lines


def test_the_model_is_loaded_in_the_lifespan_not_when_the_app_is_made(tmp_path):
    from mnist_cnn.serve import create_app  # here: FastAPI's import kept out of every worker's collection

    app = create_app(str(tmp_path / "missing.onnx")).app  # a worker process makes its app this way, then starts it

    async def start():
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(UserError, match="missing.onnx not found"):
        asyncio.run(start())


def stop(process, signal_number=signal.SIGTERM, timeout=10):
    """Signal the server (unless signal_number is None) and wait for it: (exit status, everything it printed)."""
    if signal_number is not None:
        process.send_signal(signal_number)
    status = process.wait(timeout)
    return status, process.stdout.read()


@pytest.mark.parametrize("options, logged", [pytest.param((), False, id="default"),
                                             pytest.param(("--access-log", "--workers", "2"), True, id="access-log")])
def test_the_access_log_is_off_unless_asked_for(served, options, logged):
    with served_model(served["root"], *options) as (process, url):
        assert requests.get(f"{url}/health?from=test").status_code == 200
        status, output = stop(process)
    assert status == 0
    assert ('"GET /health?from=test HTTP/1.1" 200' in output) == logged, output
    if not logged:  # and nothing else either: uvicorn's start-up lines are off too
        assert [line.split(":")[0] for line in output.splitlines()] == ["serve", "serve"], output


def multipart(image):
    """A /predict request's body and its content type, as requests encodes them."""
    request = requests.Request("POST", "http://x/predict", files={"file": ("d.png", image, "image/png")}).prepare()
    return request.body, request.headers["Content-Type"]


def start_waiting_request(url, body, content_type):
    """A POST /predict whose headers are sent and whose body is not: returns its socket once the server's app
    reads the body (it answers the Expect header with 100 Continue then), so the request is in flight."""
    address = urlsplit(url)
    connection = socket.create_connection((address.hostname, address.port), timeout=20)
    connection.sendall((f"POST /predict HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: {content_type}\r\n"
                        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n").encode())
    assert connection.recv(100).startswith(b"HTTP/1.1 100 Continue")
    return connection


@pytest.mark.parametrize("signal_number, workers", [pytest.param(signal.SIGTERM, 1, id="SIGTERM"),
                                                     pytest.param(signal.SIGINT, 1, id="SIGINT"),
                                                     pytest.param(signal.SIGTERM, 2, id="SIGTERM-2-workers")])
def test_a_signal_lets_the_request_in_flight_finish_then_the_server_exits_0(served, digits, signal_number, workers):
    body, content_type = multipart(digits[0][0])
    with served_model(served["root"], "--workers", str(workers)) as (process, url):
        expected = requests.post(f"{url}/predict", data=body, headers={"Content-Type": content_type}).json()
        with start_waiting_request(url, body, content_type) as connection:
            process.send_signal(signal_number)
            time.sleep(1)
            assert process.poll() is None  # waiting for the request
            connection.sendall(body)
            response = http.client.HTTPResponse(connection)
            response.begin()
            assert response.status == 200 and json.loads(response.read()) == expected
        started = time.time()
        status, output = stop(process, None)
    assert status == 0 and time.time() - started < 5
    assert output.splitlines()[-1] == "serve: stopped" and "Traceback" not in output, output


def test_a_request_that_never_finishes_is_cut_off_after_the_shutdown_timeout(served, digits):
    body, content_type = multipart(digits[0][0])
    with served_model(served["root"], "--workers", "1", "--shutdown-timeout", "1") as (process, url):
        with start_waiting_request(url, body, content_type):  # and never sends its body
            started = time.time()
            status, output = stop(process)
    assert status == 0 and time.time() - started < 5
    assert "timeout graceful shutdown exceeded" in output and output.splitlines()[-1] == "serve: stopped", output


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_server_writes_nothing_under_home(tmp_path, digits, workers):
    """onnxruntime writes a telemetry database and a device id under ~/.cache unless told not to."""
    home = tmp_path / "home"
    home.mkdir()
    tiny_onnx(tmp_path / "model.onnx")
    with served_model(tmp_path, "--model", "model.onnx", "--workers", workers,
                      env={"HOME": str(home), "XDG_CACHE_HOME": ""}) as (process, url):
        response = requests.post(f"{url}/predict", files={"file": ("d.png", digits[0][0], "image/png")})
        assert response.status_code == 200, response.text
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []


def test_a_port_in_use_is_one_line_before_the_model_loads(tmp_path):
    tiny_onnx(tmp_path / "model.onnx")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_stage("mnist_cnn.serve", "--model", "model.onnx", "--port", port, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use; stop what uses that port or give "
        f"another --port (or --host)"]


@pytest.mark.ci_prerequisite
def test_the_server_as_pid_1_of_a_container_drains_and_exits_0_on_sigterm(tmp_path):
    """`docker run` without --init makes the server PID 1, which the kernel sends no signal it does not handle."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("a PID namespace needs root and unshare")
    tiny_onnx(tmp_path / "model.onnx")
    command = ("unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "mnist_cnn.serve")
    with served_model(tmp_path, "--model", "model.onnx", command=command) as (process, url):
        with open(f"/proc/{process.pid}/task/{process.pid}/children") as f:
            server = int(f.read().split()[0])
        with open(f"/proc/{server}/status") as f:
            assert re.search(r"^NSpid:\s+\d+\s+1$", f.read(), re.MULTILINE)  # PID 1 in its own namespace
        os.kill(server, signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0 and output.splitlines()[-1] == "serve: stopped", output
