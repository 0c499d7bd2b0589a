"""Serve the trained model: a page to draw digits on at /, and an HTTP API.

    python -m mnist_cnn.serve [--host 127.0.0.1] [--port 8000] [--model MODEL] [--workers N]
                              [--max-upload-mb 4] [--max-files 64]

    POST /predict        one image file, multipart field "file"      -> {"label", "probability", "top": [3 of them]}
    POST /predict/batch  up to --max-files images, field "files"     -> {"predictions": [one per file, in order]}
    GET  /health         200 once the model is loaded                -> {"status": "ok", "model", "format", "classes"}
    GET  /docs           FastAPI's OpenAPI page for all of the above

The model is loaded once, before the server accepts a connection (once per process with --workers N,
uvicorn's worker processes: a second core for the decoding and normalising of images, measured in
bench/serve_load.py): models/model.onnx where the export
stage wrote it (onnxruntime, the faster path: docs/export.md), else models/model.keras. Every image
goes through the prediction command's normalisation (images.decode_image, then to_model_image). A bad
request gets a 4xx status and {"detail": "one line"}; uploads are held in memory, never written to disk.
"""
import argparse
import io
import json
import os
import threading

import numpy as np
import uvicorn
from fastapi import FastAPI, File, HTTPException, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.formparsers import MultiPartParser

from mnist_cnn.errors import UserError
from mnist_cnn.images import BadImage, decode_image, to_model_image
from mnist_cnn.runner import run
from mnist_cnn.runtimes import class_names_for, default_model, open_model, top_classes

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
TOP = 3  # classes returned per image
ACCEPTED_TYPES = ("image/", "application/octet-stream")  # what browsers, curl and requests send for an image


def create_app(model_path, max_upload_bytes=4_000_000, max_files=64):
    """The ASGI app serving the model at model_path, loaded here, once: FastAPI behind HeaderChecks."""
    model = open_model(model_path, threads=1)  # one thread per request; requests run side by side
    height, width, channels = model.image_shape
    if height != width:
        raise UserError(f"{model.path} takes {height}x{width} images; the server brings images to a square")
    class_names = class_names_for(model)
    # One prediction at a time for LiteRT's interpreter, which is not thread-safe; onnxruntime, TensorFlow are
    lock = threading.Lock() if model.format == "litert" else None
    # Starlette spools an upload to a temporary file beyond 1 MB; up to the body limit it stays in memory
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, max_upload_bytes)

    app = FastAPI(title="MNIST CNN", version="1", form_limits={"max_files": max_files, "max_fields": 16},
                  description="The notebook's CNN, trained by `dvc repro`: classify images of digits.")

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
            return to_model_image(decode_image(io.BytesIO(data), channels == 3), height, channels == 3)
        except BadImage as e:
            raise HTTPException(422, f"{upload.filename}: {e}")

    def classify(images):
        x = np.stack(images).reshape(-1, height, width, channels)
        if lock is None:
            return model.predict(x)
        with lock:
            return model.predict(x)

    def answer(probabilities):
        top = top_classes(probabilities, class_names, TOP)
        return {**top[0], "top": top}

    @app.get("/health")
    def health():
        """200 when the model is loaded (it is, before the server answers at all)."""
        return {"status": "ok", "model": model.path, "format": model.format, "classes": class_names}

    @app.post("/predict")
    async def predict(file: UploadFile = File(..., description="an image: PNG, JPEG, BMP, GIF, TIFF, WebP...")):
        """Classify one image: its most likely class, that class's probability, and the top 3."""
        images = [await pixels_of(file)]
        return answer(classify(images)[0])

    @app.post("/predict/batch")
    async def predict_batch(files: list[UploadFile] = File(..., description=f"up to {max_files} images")):
        """Classify several images in one request, in one pass through the model; answers in the files' order.
        More than --max-files files is a 400 before any is decoded."""
        images = [await pixels_of(file) for file in files]
        return {"predictions": [answer(p) for p in classify(images)]}

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


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this "
                                                            "machine only; 0.0.0.0 for every network)")
    parser.add_argument("--port", type=int, default=8000, help="default: %(default)s")
    parser.add_argument("--model", help="a .keras, .onnx or .tflite file or a SavedModel folder (default: "
                                        "models/model.onnx where it exists, else models/model.keras)")
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 4),
                        help="server processes, each with its own copy of the model (default: one per core, up to "
                             "4; here %(default)s). Decoding and normalising images takes a core's time")
    parser.add_argument("--max-upload-mb", type=float, default=4.0, metavar="MB",
                        help="largest request body accepted, in MB (default: %(default)s)")
    parser.add_argument("--max-files", type=int, default=64, help="most images in one batch (default: %(default)s)")
    args = parser.parse_args(argv)
    if not 0 < args.max_upload_mb <= 1024:
        raise UserError(f"--max-upload-mb {args.max_upload_mb}: give a size above 0 and up to 1024 MB")
    if not 1 <= args.workers <= 64:
        raise UserError(f"--workers {args.workers}: give 1 to 64")
    if args.max_files < 1:
        raise UserError(f"--max-files {args.max_files}: give 1 or more")
    if not 1 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: give a port from 1 to 65535")
    config = {"model_path": args.model or default_model(), "max_upload_bytes": int(args.max_upload_mb * 1e6),
              "max_files": args.max_files}
    app = create_app(**config)  # here too with workers: a bad model is one line before any process starts
    print(f"serve: {config['model_path']} loaded; open http://{args.host}:{args.port}/ (the API: /docs)", flush=True)
    if args.workers == 1:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    else:
        del app  # the workers load their own; this process only watches them
        os.environ[WORKER_CONFIG] = json.dumps(config)
        uvicorn.run("mnist_cnn.serve:worker_app", factory=True, workers=args.workers, host=args.host,
                    port=args.port, log_level="warning")


if __name__ == "__main__":
    run(main)
