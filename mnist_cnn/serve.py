"""Serve the trained model: a page to draw digits on at /, and an HTTP API.

    python -m mnist_cnn.serve [--host 127.0.0.1] [--port 8000] [--model MODEL] [--trust-model] [--workers N]
                              [--max-upload-mb 4] [--max-files 64] [--access-log] [--shutdown-timeout 25]

    POST /predict        one image file, multipart field "file"      -> Prediction {"label", "probability", "top"}
    POST /predict/batch  up to --max-files images, field "files"     -> {"predictions": [one per file, in order]}
    GET  /health         200 once the model is loaded                -> {"status": "ok", "model", "format", "classes"}
    GET  /docs, /redoc   the OpenAPI pages for all of the above, their scripts served from the fastapi-offline
                         package (no CDN: they work offline)

The model is loaded in the app's lifespan, before the server accepts a connection: once per process with
--workers N, uvicorn's worker processes (a second core for the decoding and normalising of images, measured
in bench/serve_load.py). main loads it once first too, so that a bad model is one line before any server
starts. models/model.onnx where the export stage wrote it (onnxruntime, the faster path: docs/export.md),
else models/model.keras. Every image goes through the prediction command's normalisation
(images.decode_image, then to_model_image). A bad request gets a 4xx status and {"detail": "one line"};
uploads are held in memory, never written to disk. SIGTERM or Ctrl-C: uvicorn stops accepting connections,
lets the requests in flight finish (up to --shutdown-timeout seconds), and the server exits 0.
"""
import argparse
import copy
import io
import json
import os
import socket
import threading
from contextlib import asynccontextmanager
from typing import Literal

import numpy as np
import uvicorn
from fastapi import File, HTTPException, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.formparsers import MultiPartParser

from mnist_cnn.errors import UserError
from mnist_cnn.images import BadImage, decode_image, to_model_image
from mnist_cnn.runner import run
from mnist_cnn.runtimes import class_names_for, default_model, open_model, top_classes

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
TOP = 3  # classes returned per image
ACCEPTED_TYPES = ("image/", "application/octet-stream")  # what browsers, curl and requests send for an image
# Under the 30 s Kubernetes waits after SIGTERM before it kills: the server ends on its own, requests answered
SHUTDOWN_TIMEOUT = 25


class ClassProbability(BaseModel):
    label: str = Field(description="a class name, as the train stage saved them in models/classes.json",
                       examples=["7"])
    probability: float = Field(description="the model's probability for that class, 0 to 1", examples=[0.9986])


class Prediction(BaseModel):
    """The model's answer for one image."""
    label: str = Field(description="the most likely class", examples=["7"])
    probability: float = Field(description="that class's probability, 0 to 1", examples=[0.9986])
    top: list[ClassProbability] = Field(description=f"the {TOP} most likely classes, most likely first")


class BatchPrediction(BaseModel):
    predictions: list[Prediction] = Field(description="one answer per file, in the order the files were sent")


class Health(BaseModel):
    """The server is up and its model loaded."""
    status: Literal["ok"]
    model: str = Field(description="the model file or folder the server loaded", examples=["models/model.onnx"])
    format: Literal["keras", "onnx", "litert", "saved_model"]
    classes: list[str] = Field(description="the class names, in the model's output order",
                               examples=[[str(digit) for digit in range(10)]])


class Problem(BaseModel):
    """A refused request."""
    detail: str = Field(description="what is wrong and how to fix it, in one line")


PREDICT_ERRORS = {  # what /predict and /predict/batch answer a bad request; OpenAPI lists them
    400: "malformed multipart, no file field, or more files than --max-files",
    411: "no Content-Length: a chunked body",
    413: "a body over --max-upload-mb, refused by its headers before it is read",
    415: "not multipart/form-data, or a file part whose type is not an image",
    422: "not an image, an empty file, or a decompression bomb",
}


class ServedModel:
    """The model a server process answers with, checked for serving: square images, its class names."""

    def __init__(self, model_path, trust_model=False):
        # one thread per request, requests running side by side; trust_model: predict's --trust-model
        self.model = open_model(model_path, threads=1, trust=trust_model)
        height, width, channels = self.model.image_shape
        if height != width:
            raise UserError(f"{self.model.path} takes {height}x{width} images; the server brings images to a square")
        self.size, self.rgb = height, channels == 3
        self.class_names = class_names_for(self.model)
        # One prediction at a time for LiteRT's interpreter, which is not thread-safe; onnxruntime, TensorFlow are
        self.lock = threading.Lock() if self.model.format == "litert" else None

    def pixels(self, data):
        """An image file's bytes as the model's input image (raises BadImage)."""
        return to_model_image(decode_image(io.BytesIO(data), self.rgb), self.size, self.rgb)

    def classify(self, images):
        """Model images -> one Prediction each, in one pass through the model."""
        x = np.stack(images).reshape(-1, self.size, self.size, 3 if self.rgb else 1)
        if self.lock is None:
            probabilities = self.model.predict(x)
        else:
            with self.lock:
                probabilities = self.model.predict(x)
        return [self.answer(p) for p in probabilities]

    def answer(self, probabilities):
        top = top_classes(probabilities, self.class_names, TOP)
        return Prediction(**top[0], top=top)

    def health(self):
        return Health(status="ok", model=self.model.path, format=self.model.format, classes=self.class_names)


def create_app(model_path, max_upload_bytes=4_000_000, max_files=64, trust_model=False, loaded=None):
    """The ASGI app serving the model at model_path, which its lifespan loads (unless `loaded`, that model's
    ServedModel, is given: main's, with one server process): FastAPI behind HeaderChecks."""
    @asynccontextmanager
    async def lifespan(app):
        app.state.served = loaded or ServedModel(model_path, trust_model)  # before uvicorn accepts a connection
        yield

    # Starlette spools an upload to a temporary file beyond 1 MB; up to the body limit it stays in memory
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, max_upload_bytes)
    # FastAPI's /docs and /redoc load their scripts from a CDN, blank pages offline; these come from a package
    app = FastAPIOffline(title="MNIST CNN", version="1", lifespan=lifespan,
                         form_limits={"max_files": max_files, "max_fields": 16},
                         description="The notebook's CNN, trained by `dvc repro`: classify images of digits.")
    errors = {status: {"model": Problem, "description": text} for status, text in PREDICT_ERRORS.items()}

    @app.exception_handler(RequestValidationError)
    async def one_line(request, error):
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem.get("loc", ()) if part != "body")
        if problem.get("type") == "missing":
            message = f"no {where!r} in the request: send multipart/form-data with the image file as {where!r}"
        else:
            message = f"{where}: {problem.get('msg')}"
        return JSONResponse({"detail": message}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request, error):
        detail = error.detail if isinstance(error.detail, str) else str(error.detail)
        return JSONResponse({"detail": " ".join(detail.split())}, status_code=error.status_code,
                            headers=getattr(error, "headers", None))

    async def pixels_of(upload):
        if not (upload.content_type or "application/octet-stream").startswith(ACCEPTED_TYPES):
            raise HTTPException(415, f"{upload.filename}: content type {upload.content_type!r} is not an image")
        data = await upload.read()
        if not data:
            raise HTTPException(422, f"{upload.filename}: empty file")
        try:
            return app.state.served.pixels(data)
        except BadImage as e:
            raise HTTPException(422, f"{upload.filename}: {e}")

    @app.get("/health")
    def health() -> Health:
        """200 when the model is loaded (it is, before the server answers at all)."""
        return app.state.served.health()

    @app.post("/predict", responses=errors)
    async def predict(file: UploadFile = File(..., description="an image: PNG, JPEG, BMP, GIF, TIFF, WebP...")
                      ) -> Prediction:
        """Classify one image: its most likely class, that class's probability, and the top 3."""
        images = [await pixels_of(file)]
        return app.state.served.classify(images)[0]

    @app.post("/predict/batch", responses=errors)
    async def predict_batch(files: list[UploadFile] = File(..., description=f"up to {max_files} images")
                            ) -> BatchPrediction:
        """Classify several images in one request, in one pass through the model; answers in the files' order.
        More than --max-files files is a 400 before any is decoded."""
        images = [await pixels_of(file) for file in files]
        return BatchPrediction(predictions=app.state.served.classify(images))

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(os.path.join(STATIC, "index.html"))

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return HeaderChecks(app, max_upload_bytes)


class HeaderChecks:
    """Refuse a POST to /predict* by its headers alone, before a byte of the body is read: its size (uvicorn
    ends a body at its Content-Length, so a client can't send more than it announced) and its content type.
    Plain ASGI, so it costs next to nothing per request; the FastAPI app is `.app`."""

    def __init__(self, app, max_upload_bytes):
        self.app, self.max_upload_bytes = app, max_upload_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith("/predict"):
            headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
            problem = self.problem(headers.get("content-length"), headers.get("content-type", ""))
            if problem:
                await JSONResponse({"detail": problem[1]}, status_code=problem[0])(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def problem(self, length, content_type):
        if length is None or not length.isdigit():
            return 411, "no Content-Length: send the request in one piece, not chunked"
        if int(length) > self.max_upload_bytes:
            return 413, (f"{int(length):,} bytes is over the limit of {self.max_upload_bytes:,}: send smaller "
                         f"images, or fewer at a time")
        if not content_type.startswith("multipart/form-data"):
            return 415, (f"content type {content_type or 'none'!r}: send multipart/form-data with the image file "
                         f"(curl -F file=@digit.png)")
        return None


WORKER_CONFIG = "MNIST_CNN_SERVE"  # how main hands its options to uvicorn's worker processes


def worker_app():
    """create_app in one of uvicorn's worker processes (--workers N), with main's options."""
    return create_app(**json.loads(os.environ[WORKER_CONFIG]))


def logging_config():
    """uvicorn's logging without its start-up chatter (warnings and errors stay), and the access log's one line
    per request, written only where --access-log turns uvicorn's access log on."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["uvicorn"]["level"] = config["loggers"]["uvicorn.error"]["level"] = "WARNING"
    config["loggers"]["uvicorn.access"]["level"] = "INFO"
    return config


def check_can_listen(host, port):
    """One line, rather than uvicorn's `ERROR: [Errno 98]` and exit 3, for a port in use or a host not ours."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn's own socket
            probe.bind(address)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}; stop what uses that port or give "
                        f"another --port (or --host)")


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this "
                                                            "machine only; 0.0.0.0 for every network)")
    parser.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    parser.add_argument("--model", help="a .keras, .onnx or .tflite file or a SavedModel folder (default: "
                                        "models/model.onnx where it exists, else models/model.keras)")
    parser.add_argument("--trust-model", action="store_true",
                        help="serve a SavedModel or .tflite file that is not this project's own export: they are "
                             "programs that can read and write files")
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 4),
                        help="server processes, each with its own copy of the model (default: one per core, up to "
                             "4; here %(default)s). Decoding and normalising images takes a core's time")
    parser.add_argument("--max-upload-mb", type=float, default=4.0, metavar="MB",
                        help="largest request body accepted, in MB (default: %(default)s)")
    parser.add_argument("--max-files", type=int, default=64, help="most images in one batch (default: %(default)s)")
    parser.add_argument("--access-log", action="store_true",
                        help="write a line per request to stdout (off by default: a busy server writes thousands a "
                             "second, and a proxy in front usually logs them already)")
    parser.add_argument("--shutdown-timeout", type=float, default=SHUTDOWN_TIMEOUT, metavar="SECONDS",
                        help="on SIGTERM or Ctrl-C, how long the requests in flight may take to finish before they "
                             "are cut off (default: %(default)s)")
    args = parser.parse_args(argv)
    if not 0 < args.max_upload_mb <= 1024:
        raise UserError(f"--max-upload-mb {args.max_upload_mb}: give a size above 0 and up to 1024 MB")
    if not 1 <= args.workers <= 64:
        raise UserError(f"--workers {args.workers}: give 1 to 64")
    if args.max_files < 1:
        raise UserError(f"--max-files {args.max_files}: give 1 or more")
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: give a port from 1 to 65535")
    if not args.shutdown_timeout > 0:
        raise UserError(f"--shutdown-timeout {args.shutdown_timeout}: give a number of seconds above 0")
    check_can_listen(args.host, args.port)  # before the model loads: uvicorn would say so after, as a log line
    config = {"model_path": args.model or default_model(), "max_upload_bytes": int(args.max_upload_mb * 1e6),
              "max_files": args.max_files, "trust_model": args.trust_model}
    # A bad model is one line here, before any server process starts; each worker process's lifespan loads it
    # again. (Uvicorn prints a traceback for a lifespan that fails: fine for our bugs, not for a user's wrong path.)
    loaded = ServedModel(config["model_path"], args.trust_model)
    print(f"serve: {config['model_path']} loaded; open http://{args.host}:{args.port}/ (the API: /docs)", flush=True)
    # Uvicorn stops on SIGTERM and SIGINT itself: it closes the listening socket, lets the requests in flight
    # finish, runs the lifespan's end, then raises the signal again, which run()'s handler makes a
    # KeyboardInterrupt that uvicorn.run swallows; with workers, its supervisor does the same for each worker
    server = {"host": args.host, "port": args.port, "access_log": args.access_log, "log_config": logging_config(),
              "timeout_graceful_shutdown": args.shutdown_timeout}
    if args.workers == 1:
        uvicorn.run(create_app(**config, loaded=loaded), **server)  # this process serves: the model it loaded
    else:
        os.environ[WORKER_CONFIG] = json.dumps(config)
        uvicorn.run("mnist_cnn.serve:worker_app", factory=True, workers=args.workers, **server)
    print("serve: stopped", flush=True)


if __name__ == "__main__":
    run(main, command="serve")
