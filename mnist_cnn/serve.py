"""Serve the trained model: a page to draw digits on at /, and an HTTP API.

    python -m mnist_cnn.serve [--host 127.0.0.1] [--port 8000] [--model MODEL] [--trust-model] [--workers N]
                              [--max-upload-mb 4] [--max-files 64] [--access-log] [--shutdown-timeout 25]
                              [--max-connections 256] [--keep-alive 5] [--header-timeout 10] [--body-timeout 30]
                              [--max-header-kb 16]

    POST /predict        one image file, multipart field "file"      -> Prediction {"label", "probability", "top"}
    POST /predict/batch  up to --max-files images, field "files"     -> {"predictions": [one per file, in order]}
                         both: ?top=K for the K most likely classes (default 3), ?image=true to add the image as
                         the model saw it after the normalisation (the page draws it beside its canvas)
    GET  /health         200 once the model is loaded                -> {"status": "ok", "model", "format", "classes"}
    GET  /docs, /redoc   the OpenAPI pages for all of the above, their scripts served from the fastapi-offline
                         package (no CDN: they work offline)

main loads the model and tries it on two blank images, so that a missing, broken or NaN-answering model is
one line before any server process starts; with --workers N, uvicorn's worker processes (a second core for
the decoding and normalising of images, measured in bench/serve_load.py) each load it again before they
accept a connection, and a worker that dies as it starts stops the server (Supervisor) instead of being
started again in a loop. models/model.onnx where the export stage wrote it (onnxruntime, the faster path:
docs/export.md), else models/model.keras. Every image goes through the prediction command's normalisation
(images.decode_image, then to_model_image), in a thread of a small pool, off the event loop: a slow image
delays no other request, /health least of all. A bad request gets a 4xx status and {"detail": "one line"};
uploads are held in memory, never written to disk. Hostile clients (idle connections, headers or bodies
dribbled, huge headers) meet the limits of mnist_cnn/guarded_http.py. SIGTERM or Ctrl-C: uvicorn stops
accepting connections, lets the requests in flight finish (up to --shutdown-timeout seconds), and the
server exits 0.
"""
import argparse
import copy
import io
import json
import os
import resource
import signal
import socket
import sys
import threading
import warnings
from contextlib import asynccontextmanager
from typing import Literal

import anyio
import numpy as np
import uvicorn
from fastapi import File, HTTPException, Query, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from PIL import Image
from pydantic import BaseModel, Field
from starlette.formparsers import MultiPartParser
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from mnist_cnn.errors import UserError
from mnist_cnn.guarded_http import Limits, guarded_protocol
from mnist_cnn.images import FORMATS, BadImage, decode_image, to_model_image
from mnist_cnn.runner import run
from mnist_cnn.runtimes import class_names_for, default_model, open_model, top_classes

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
TOP = 3  # classes returned per image, unless ?top= asks for more
ACCEPTED_TYPES = ("image/", "application/octet-stream")  # what browsers, curl and requests send for an image
# Under the 30 s Kubernetes waits after SIGTERM before it kills: the server ends on its own, requests answered
SHUTDOWN_TIMEOUT = 25
# Requests whose images are decoded, normalised and classified at a time per server process, in threads off the
# event loop, in two pools: a request with an image over LARGE_IMAGE pixels (as its header claims) waits for the
# large images' thread, so that small images (the drawing page's, a scan of a digit) never queue behind large
# ones; and a 16-megapixel image takes about 0.4 s and 200 MB while it is normalised, so one at a time per process
LARGE_IMAGE = 1_000_000
SMALL_IMAGE_THREADS, LARGE_IMAGE_THREADS = 2, 1
# Except one image this small in pixels and bytes (the drawing page's 280 x 280 canvas, a digit's scan): it is
# decoded and classified on the event loop itself, a millisecond or two whatever its format, less than handing it
# to a thread costs (a third more CPU per request, measured with bench/serve_load.py)
INLINE_PIXELS, INLINE_BYTES = 100_000, 65_536
# Files a server process has open besides its connections (the model, libraries, pipes), and room for a burst of
# new connections accepted before the oldest are closed
FILES_RESERVE = 128


class ClassProbability(BaseModel):
    label: str = Field(description="a class name, as the train stage saved them in models/classes.json",
                       examples=["7"])
    probability: float = Field(description="the model's probability for that class, 0 to 1", examples=[0.9986])


class Prediction(BaseModel):
    """The model's answer for one image."""
    label: str = Field(description="the most likely class", examples=["7"])
    probability: float = Field(description="that class's probability, 0 to 1", examples=[0.9986])
    top: list[ClassProbability] = Field(description=f"the {TOP} most likely classes (or ?top=), most likely first")
    image: list[list[float]] | list[list[list[float]]] | None = Field(
        None, description="with ?image=true only: the image as the model saw it, after the normalisation: rows of "
                          "pixels in [0, 1] (4 decimals), 28 by 28 for MNIST; each pixel [r, g, b] for a colour model")


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
    500: "the model's output for an image is NaN or infinite (a broken model)",
}


class ServedModel:
    """The model a server process answers with, checked for serving: square images, its class names, finite
    probabilities for two blank images (which also tries a model made for one image at a time on two)."""

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
        blank = np.zeros((2, height, width, channels), np.float32)
        if not np.isfinite(self.probabilities(blank)).all():
            raise UserError(f"{self.model.path} answers NaN or infinite probabilities for a blank image: the model is "
                            f"broken; train it again (`dvc repro --force train`) or serve another --model")

    def pixels(self, data):
        """An image file's bytes as the model's input image (raises BadImage)."""
        return to_model_image(decode_image(io.BytesIO(data), self.rgb), self.size, self.rgb)

    def probabilities(self, x):
        if self.lock is None:
            return self.model.predict(x)
        with self.lock:
            return self.model.predict(x)

    def predictions(self, files, top=TOP, image=False):
        """[(file name, bytes)] -> one Prediction each, in one pass through the model, with the `top` most likely
        classes and, if `image`, the model's input image. Runs in a thread for all but a small image: decoding and
        normalising take a core's time, up to a second for a 16-megapixel image."""
        images = []
        for name, data in files:
            try:
                images.append(self.pixels(data))
            except BadImage as e:
                raise HTTPException(422, f"{name}: {e}")
        probabilities = self.probabilities(np.stack(images).reshape(-1, self.size, self.size, 3 if self.rgb else 1))
        for (name, _), row in zip(files, probabilities):
            if not np.isfinite(row).all():  # never NaN in the answer: it is not JSON
                raise HTTPException(500, f"{name}: the model's output for this image is NaN or infinite: the model "
                                         f"is broken; train it again")
        return [self.answer(row, top, pixels if image else None) for row, pixels in zip(probabilities, images)]

    def answer(self, probabilities, top=TOP, pixels=None):
        ranked = top_classes(probabilities, self.class_names, top)
        seen = None if pixels is None else np.round(pixels.astype(np.float64), 4).tolist()  # float64: 0.7843, exactly
        return Prediction(**ranked[0], top=ranked, image=seen)

    def health(self):
        return Health(status="ok", model=self.model.path, format=self.model.format, classes=self.class_names)


def create_app(model_path, max_upload_bytes=4_000_000, max_files=64, trust_model=False, loaded=None):
    """The ASGI app serving the model at model_path, which its lifespan loads (unless `loaded`, that model's
    ServedModel, is given: main's, with one server process): FastAPI behind HeaderChecks."""
    @asynccontextmanager
    async def lifespan(app):
        app.state.served = loaded or ServedModel(model_path, trust_model)  # before uvicorn accepts a connection
        app.state.threads = {"small": anyio.CapacityLimiter(SMALL_IMAGE_THREADS),
                             "large": anyio.CapacityLimiter(LARGE_IMAGE_THREADS)}
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
        where = ".".join(str(part) for part in problem.get("loc", ()) if part not in ("body", "query"))
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

    async def read(upload):
        """An upload's file name and bytes, once its part's content type says it is an image."""
        if not (upload.content_type or "application/octet-stream").startswith(ACCEPTED_TYPES):
            raise HTTPException(415, f"{upload.filename}: content type {upload.content_type!r} is not an image")
        data = await upload.read()
        if not data:
            raise HTTPException(422, f"{upload.filename}: empty file")
        return upload.filename, data

    async def predictions(uploads, top, image):
        """The uploads classified in a thread of a pool, the event loop answering other requests meanwhile; or
        here, for one small image."""
        files = [await read(upload) for upload in uploads]
        top = min(top, len(app.state.served.class_names))
        pixels = [claimed_pixels(data) for _, data in files]
        if len(files) == 1 and pixels[0] <= INLINE_PIXELS and len(files[0][1]) <= INLINE_BYTES:
            return app.state.served.predictions(files, top, image)
        size = "large" if max(pixels) > LARGE_IMAGE else "small"
        return await anyio.to_thread.run_sync(app.state.served.predictions, files, top, image,
                                              limiter=app.state.threads[size])

    top_query = Query(TOP, ge=1, le=1000, description="how many of the most likely classes to list, most likely "
                                                      "first (all of them when the model has fewer)")
    image_query = Query(False, description="add `image`: the image as the model saw it after the normalisation")

    @app.get("/health")
    async def health() -> Health:
        """200 when the model is loaded (it is, before the server answers at all)."""
        return app.state.served.health()  # on the event loop, no thread: it answers while every thread is busy

    @app.post("/predict", responses=errors, response_model_exclude_none=True)
    async def predict(file: UploadFile = File(..., description="an image: PNG, JPEG, BMP, GIF, TIFF, WebP..."),
                      top: int = top_query, image: bool = image_query) -> Prediction:
        """Classify one image: its most likely class, that class's probability, and the top 3 (or ?top=)."""
        return (await predictions([file], top, image))[0]

    @app.post("/predict/batch", responses=errors, response_model_exclude_none=True)
    async def predict_batch(files: list[UploadFile] = File(..., description=f"up to {max_files} images"),
                            top: int = top_query, image: bool = image_query) -> BatchPrediction:
        """Classify several images in one request, in one pass through the model; answers in the files' order.
        More than --max-files files is a 400 before any is decoded."""
        return BatchPrediction(predictions=await predictions(files, top, image))

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(os.path.join(STATIC, "index.html"))

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return HeaderChecks(app, max_upload_bytes)


def claimed_pixels(data):
    """The pixels an image file's header claims, read without decoding them (0 for a file that is not an image in
    the formats decode_image reads: it fails there, at once)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's decompression-bomb warning: decode_image refuses those
            with Image.open(io.BytesIO(data), formats=FORMATS) as image:
                return image.width * image.height
    except Exception:  # noqa: BLE001  whatever a plugin raises for a broken header
        return 0


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
    """create_app in one of uvicorn's worker processes (--workers N), with main's options and its own copy of the
    model. A model that fails to load here (main's check passed: the file changed since) is one line and uvicorn's
    exit status for a failed start, not a traceback."""
    options = json.loads(os.environ[WORKER_CONFIG])
    try:
        served = ServedModel(options["model_path"], options["trust_model"])
    except UserError as e:
        os.write(2, f"error: {e}\n".encode())  # in one piece: the other workers may be writing theirs
        sys.exit(STARTUP_FAILURE)
    return create_app(**options, loaded=served)


class Supervisor(Multiprocess):
    """uvicorn's supervisor of the --workers processes. It starts a worker again whenever one dies, so a worker
    that dies as it starts (its model fails to load, it crashes, it is killed for memory) was started again and
    again, a traceback each time, for ever (uvicorn stops only for its own exit status of a failed start). Here a
    worker that dies before it ever answered a ping as started stops the server instead, whatever its end;
    `failure` says how it ended. One that dies, or stops answering, after it served is started again."""

    failure = None

    def keep_subprocess_alive(self):
        if self.should_exit.is_set():
            return
        for index, process in enumerate(self.processes):
            served = getattr(process, "served", False)
            if process.process.is_alive():
                if not served:  # still starting (loading its model), or started since the last look
                    while process.parent_conn.poll():  # answers to pings sent before it listened: stale
                        process.parent_conn.recv()
                    process.served = process.is_ready(timeout=1)
                    continue
                if process.ping(self.config.timeout_worker_healthcheck):
                    continue
            process.kill()  # dead, or hung
            process.join()
            if not served:
                self.failure = f"server process {process.pid} {ended(process.exitcode)} as it started"
                self.should_exit.set()
                return
            replacement = Process(self.config, self.sockets)
            replacement.start()
            self.processes[index] = replacement


def ended(exit_status):
    """How a process ended, in words: `exited with status 3`, `was killed by SIGKILL`."""
    if exit_status is not None and exit_status < 0:
        return f"was killed by {signal.Signals(-exit_status).name}"
    return f"exited with status {exit_status}"


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


def parse_options(argv):
    """The command line, every number checked: one line for a value out of range."""
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
    limits = Limits()
    parser.add_argument("--max-connections", type=int, default=limits.max_connections,
                        help="open connections per server process; beyond, a new one closes the one that has waited "
                             "longest on its client (default: %(default)s)")
    parser.add_argument("--keep-alive", type=float, default=5.0, metavar="SECONDS",
                        help="how long a connection may stay idle, before its first request or between two "
                             "(default: %(default)s)")
    parser.add_argument("--header-timeout", type=float, default=limits.header_timeout, metavar="SECONDS",
                        help="how long a request's line and headers may take to arrive (default: %(default)s)")
    parser.add_argument("--body-timeout", type=float, default=limits.body_timeout, metavar="SECONDS",
                        help="how long a request's body may take to arrive, after its headers (default: "
                             "%(default)s)")
    parser.add_argument("--max-header-kb", type=float, default=limits.max_header_bytes / 1000, metavar="KB",
                        help="largest request line and headers, in KB (default: %(default)s)")
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
    if not 1 <= args.max_connections <= 100_000:
        raise UserError(f"--max-connections {args.max_connections}: give 1 to 100000")
    for option in ("keep_alive", "header_timeout", "body_timeout"):
        if not 0 < getattr(args, option) <= 3600:
            raise UserError(f"--{option.replace('_', '-')} {getattr(args, option)}: give a number of seconds above 0 "
                            f"and up to 3600")
    if not 1 <= args.max_header_kb <= 1024:
        raise UserError(f"--max-header-kb {args.max_header_kb}: give 1 to 1024 KB")
    return args


BACKLOG = 2048  # connections the kernel holds before the server accepts them (uvicorn's default)


def check_open_files(max_connections):
    """Raise this process's limit on open files, which its workers inherit, to what --max-connections and a burst
    of new connections need, as far as the hard limit allows; one line when it can't reach --max-connections:
    past its limit a process accepts no connection, and new clients get an empty reply."""
    needed = max_connections + FILES_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed + BACKLOG:
        soft = needed + BACKLOG if hard == resource.RLIM_INFINITY else max(soft, min(needed + BACKLOG, hard))
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise UserError(f"--max-connections {max_connections}: a server process may open {soft} files here (ulimit "
                        f"-n) and needs {FILES_RESERVE} besides its connections: give --max-connections "
                        f"{max(1, soft - FILES_RESERVE)} or less, or raise the limit")


def main(argv):
    args = parse_options(argv)
    check_can_listen(args.host, args.port)  # before the model loads: uvicorn would say so after, as a log line
    check_open_files(args.max_connections)
    config = {"model_path": args.model or default_model(), "max_upload_bytes": int(args.max_upload_mb * 1e6),
              "max_files": args.max_files, "trust_model": args.trust_model}
    # A bad model is one line here, before any server process starts. (Uvicorn prints a traceback for a lifespan
    # that fails: fine for our bugs, not for a user's wrong path.)
    loaded = ServedModel(config["model_path"], args.trust_model)
    print(f"serve: {config['model_path']} loaded; open http://{args.host}:{args.port}/ (the API: /docs)", flush=True)
    limits = Limits(args.max_connections, args.header_timeout, args.body_timeout, int(args.max_header_kb * 1000))
    server = {"host": args.host, "port": args.port, "access_log": args.access_log, "log_config": logging_config(),
              "timeout_graceful_shutdown": args.shutdown_timeout, "timeout_keep_alive": args.keep_alive,
              "backlog": BACKLOG, "http": guarded_protocol(limits)}
    if args.workers == 1:
        serve_here(uvicorn.Config(create_app(**config, loaded=loaded), **server))  # the model main loaded
    else:
        os.environ[WORKER_CONFIG] = json.dumps(config)
        supervise(uvicorn.Config("mnist_cnn.serve:worker_app", factory=True, workers=args.workers, **server))
    print("serve: stopped", flush=True)


def serve_here(config):
    """Serve in this process until SIGTERM or Ctrl-C. Uvicorn stops on either itself: it closes the listening
    socket, lets the requests in flight finish, runs the lifespan's end, then raises the signal again, which
    run()'s handler makes a KeyboardInterrupt."""
    server = uvicorn.Server(config)
    try:
        server.run()
    except KeyboardInterrupt:
        return
    if not server.started:
        raise UserError(f"the server did not start on {config.host}:{config.port}: uvicorn's reason is above")


def supervise(config):
    """Serve with config.workers processes until SIGTERM or Ctrl-C, which the supervisor passes on to each."""
    supervisor = Supervisor(config, sockets=[config.bind_socket()])
    supervisor.run()
    if supervisor.failure:
        raise UserError(f"{supervisor.failure}, so the server stopped rather than start it again and again: its "
                        f"reason is the line above if there is one; --workers 1 shows it alone")


if __name__ == "__main__":
    run(main, command="serve")
