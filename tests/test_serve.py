"""The served model: the HTTP API and every bad request, against a real server on 127.0.0.1."""
import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
import requests
from PIL import Image

from conftest import SERVE_LIMIT as LIMIT
from conftest import digit_images, png, run_stage

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


def test_the_openapi_page_documents_the_api_and_the_page_is_served(served):
    schema = requests.get(f"{served['url']}/openapi.json").json()
    assert {"/predict", "/predict/batch", "/health"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert requests.get(f"{served['url']}/docs").status_code == 200
    page = requests.get(f"{served['url']}/")
    assert page.status_code == 200 and '<canvas id="pad"' in page.text and 'name="viewport"' in page.text
    for asset in ("app.js", "style.css"):
        assert requests.get(f"{served['url']}/static/{asset}").status_code == 200


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
                           422, "bomb.png: over the limit of 50,000,000 pixels"),
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
                             (["--port", "70000"], "--port 70000: give a port from 1 to 65535")):
        result = run_stage("mnist_cnn.serve", *options, cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), lines
