"""Finding a published dataset: mirrors, Keras' cache, system folders, then the official URLs.

Sources, first good one wins: each entry of DATASET_MIRRORS (colon-separated local folders or
http(s) URL prefixes), Keras' cache ($KERAS_HOME/datasets or ~/.keras/datasets), folders a system
package installs, then the official URLs. In each folder or prefix it looks for <name>.npz and the
four IDX .gz files, also under a <dataset>/ subfolder. A candidate is accepted only when every
decoded uint8 array has the pinned sha256 digest, so any source yields the same bytes. A failed
candidate is reported in one line and the next one is tried.
"""
import gzip
import http.client
import os
import re
import socket
import struct
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib

import numpy as np
from tqdm import tqdm

from mnist_cnn.datasets import ARRAY_NAMES, IDX_FILES, array_digest
from mnist_cnn.errors import UserError
from mnist_cnn.files import read_arrays

TIMEOUT_S = 30  # per socket operation: a stalled server fails after this long
RETRIES = 3
BACKOFF_S = 1.0  # waits 1 s, then 2 s, between tries
DEADLINE_VARIABLE = "DATASET_SOURCE_DEADLINE"  # seconds one source may take in all, retries included
DEADLINE_S = 600.0  # its default: MNIST's 11 MB at 20 kB/s; a server that drips a byte at a time gives up here
MAX_IDX_BYTES = 256 << 20  # an IDX file decompressing to more is refused (MNIST's largest is 47 MB)


class SourceError(Exception):
    """One candidate source failed; the next one is tried."""


def parse_mirrors(value):
    """Split DATASET_MIRRORS on ':' without splitting the scheme or port of a URL."""
    return re.findall(r"https?://[^/:]+(?::\d+)?[^:]*|[^:]+", value or "")


def keras_cache_dir():
    """The folder where keras.datasets caches its downloads."""
    return os.path.join(os.environ.get("KERAS_HOME") or os.path.expanduser("~/.keras"), "datasets")


def is_url(location):
    return location.startswith(("http://", "https://"))


def join(root, *parts):
    if is_url(root):
        return "/".join([root.rstrip("/")] + [p for p in parts if p])
    return os.path.join(root, *parts)


def candidates(spec, roots):
    """(kind, location) pairs to try in order: kind 'npz' is a file, 'idx' a folder or URL prefix."""
    for root in roots:
        for sub in ("",) + spec.subdirs:
            base = join(root, sub)
            if spec.npz_name:
                yield "npz", join(base, spec.npz_name)
            yield "idx", base
    for url in spec.urls:
        yield ("idx", url) if url.endswith("/") else ("npz", url)


def source_deadline():
    """Seconds one source may take in all: DATASET_SOURCE_DEADLINE, else DEADLINE_S."""
    value = os.environ.get(DEADLINE_VARIABLE, "").strip()
    if not value:
        return DEADLINE_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise UserError(f"{DEADLINE_VARIABLE} = {value!r} is not allowed; it must be a number of seconds > 0")
    return seconds


class DeadlineExceeded(Exception):
    pass


def fetch(url, dest, timeout=TIMEOUT_S, retries=RETRIES, backoff=BACKOFF_S, deadline=None):
    """Download url to dest with a timeout per read, retries with exponential backoff, a progress bar,
    and a total deadline (time.monotonic()) that a server sending a byte at a time can't stretch."""
    deadline = deadline if deadline is not None else time.monotonic() + source_deadline()
    problem = "no attempt"
    for attempt in range(retries):
        try:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded
            with urllib.request.urlopen(url, timeout=min(timeout, left)) as response, open(dest, "wb") as out:
                expected = response.headers.get("Content-Length")
                expected = int(expected) if expected else None
                with tqdm(total=expected, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1],
                          file=sys.stderr, disable=None, leave=False) as bar:
                    while chunk := response.read1(1 << 16):  # what has arrived: the deadline is checked often
                        out.write(chunk)
                        bar.update(len(chunk))
                        if time.monotonic() > deadline:
                            raise DeadlineExceeded
                if expected is not None and out.tell() != expected:
                    raise http.client.IncompleteRead(b"", expected - out.tell())
            return
        except DeadlineExceeded:
            raise SourceError(f"not done after {source_deadline():g} s in all (set {DEADLINE_VARIABLE} to allow more)")
        except urllib.error.HTTPError as e:
            if e.code < 500:  # 404 and friends will not change on a retry
                raise SourceError(f"HTTP {e.code} {e.reason}")
            problem = f"HTTP {e.code} {e.reason}"
        except (TimeoutError, socket.timeout):
            problem = f"no data for {timeout:g} s (timed out)"
        except urllib.error.URLError as e:
            problem = f"cannot connect ({e.reason})"
        except (http.client.HTTPException, OSError) as e:
            problem = f"connection broke off ({type(e).__name__})"
        if attempt + 1 < retries:
            time.sleep(max(0.0, min(backoff * 2**attempt, deadline - time.monotonic())))
    raise SourceError(f"{problem}, after {retries} tries")


def parse_idx(data, name):
    """Decode an IDX file (big-endian magic and sizes, then raw uint8 data) into an array."""
    if len(data) < 8 or data[0:3] != b"\x00\x00\x08" or not 1 <= data[3] <= 3:
        raise SourceError(f"{name} is not a uint8 IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != int(np.prod(shape)):
        raise SourceError(f"{name} is truncated or padded: {len(data) - header} bytes for shape {shape}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def read_idx(paths):
    arrays = {}
    for name, path in paths.items():
        try:
            with gzip.open(path, "rb") as f:
                data = f.read(MAX_IDX_BYTES + 1)
        except (OSError, EOFError, zlib.error) as e:  # a bad header, CRC or deflate stream; BadGzipFile is an OSError
            raise SourceError(f"{os.path.basename(path)} is not a valid .gz file ({e})")
        if len(data) > MAX_IDX_BYTES:
            raise SourceError(f"{os.path.basename(path)} decompresses to over {MAX_IDX_BYTES >> 20} MB; "
                              f"not a dataset file")
        arrays[name] = parse_idx(data, os.path.basename(path))
    return arrays


def read_npz(path, names=ARRAY_NAMES, optional=()):
    """The named arrays of an .npz file, plus those of `optional` that it holds."""
    try:
        arrays = read_arrays(path, (*names, *optional))
    except ValueError as e:
        raise SourceError(f"{os.path.basename(path)} is not a valid .npz file ({e})")
    missing = [n for n in names if n not in arrays]
    if missing:
        raise SourceError(f"{os.path.basename(path)} lacks the arrays {', '.join(missing)}")
    return arrays


def verify(arrays, spec):
    """Accept the arrays only if each is uint8 with the pinned digest."""
    for name in ARRAY_NAMES:
        array = arrays[name]
        if array.dtype != np.uint8 or array_digest(array) != spec.digests[name]:
            raise SourceError(f"{name} {array.dtype}{tuple(array.shape)} does not match the pinned "
                              f"{spec.name} digest")
    return arrays


def load_candidate(kind, location, workdir, **fetch_options):
    """Read one candidate into arrays; remote files are fetched into workdir first."""
    if kind == "npz":
        files = {"npz": location}
    else:
        files = {name: join(location, file) for name, file in IDX_FILES.items()}
    if is_url(location):
        for key, url in files.items():
            local = os.path.join(workdir, f"{key}.download")
            try:
                fetch(url, local, **fetch_options)
            except SourceError as e:
                raise SourceError(f"{url}: {e}")
            files[key] = local
    return read_npz(files["npz"]) if kind == "npz" else read_idx(files)


def download(spec, roots, **fetch_options):
    """Return the verified arrays of spec from the first good source; UserError if none is."""
    source_deadline()  # a bad DATASET_SOURCE_DEADLINE is one line, whether or not a source is found
    tried = []
    with tempfile.TemporaryDirectory(prefix="download-") as workdir:
        for kind, location in candidates(spec, roots):
            if not is_url(location):
                needed = [location] if kind == "npz" else [join(location, f) for f in IDX_FILES.values()]
                if not all(os.path.isfile(p) for p in needed):
                    continue  # local folders are searched quietly: only real files are candidates
            try:
                deadline = time.monotonic() + source_deadline()  # for this source, all of its files and retries
                arrays = verify(load_candidate(kind, location, workdir, deadline=deadline, **fetch_options), spec)
            except SourceError as e:
                print(f"download: skipped {location}: {e}", file=sys.stderr)
                tried.append(f"{location} ({e})")
                continue
            print(f"download: {spec.name} verified from {location}")
            return arrays
    searched = ", ".join(roots) or "none"
    raise UserError(
        f"no valid source for {spec.name}; searched folders and mirrors: {searched}; failed: "
        f"{'; '.join(tried) or 'no candidate files found'}. Fix: put {spec.npz_name or 'the four IDX .gz files'} "
        f"in a folder and set DATASET_MIRRORS=/that/folder, or check your network connection")
