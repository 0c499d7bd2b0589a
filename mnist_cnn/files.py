"""Writing outputs atomically and byte-deterministically, and reading .npz files with one-line errors.

Every output of every stage goes through atomic_path: written beside its target under a temporary
name and renamed over it only when complete, so a crash, Ctrl-C or full disk leaves the previous
file as it was. Zip members get a fixed date and mode (fixed_zip_member), so an .npz or .keras file
is byte-identical whenever and wherever it is written, and so is its hash in dvc.lock.
"""
import contextlib
import json
import os
import shutil
import struct
import tempfile
import zipfile
import zlib

import numpy as np

from mnist_cnn.errors import UserError

ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip file can hold
# What np.load and the zip format raise for a missing, truncated, corrupt or pickled file (zlib.error: a
# damaged deflate stream; struct.error: a cut header)
NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, struct.error, MemoryError)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; move it over `path` only if the block succeeds.

    A crash, Ctrl-C or full disk leaves the previous file untouched and no partial file behind.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    base = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=os.path.splitext(base)[1], dir=directory)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary folder beside `path`; it replaces `path` only if the block succeeds.

    For an output that is a folder of files (DVCLive's training log): an interrupted or failed run
    leaves the previous folder exactly as it was.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=parent)
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        old = None
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old.", dir=parent)
            os.replace(path, os.path.join(old, "previous"))
        os.replace(tmp, path)
        if old:
            shutil.rmtree(old)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)


def fixed_zip_member(name, compress_type=zipfile.ZIP_STORED):
    """A zip member header without the writer's clock or umask: the same bytes on every run."""
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    info.compress_type = compress_type
    info.external_attr = 0o644 << 16
    return info


def write_npz(path, arrays):
    """Write arrays as an uncompressed .npz whose bytes depend only on the arrays (np.savez stamps the time)."""
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
            for name, array in arrays.items():
                with archive.open(fixed_zip_member(f"{name}.npy"), "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)


def check_array_header(stream, available, name):
    """Refuse an .npy whose header claims more data than it holds, before anything is allocated: a
    header is a few bytes, and one claiming a shape of 10^12 would make NumPy ask for terabytes.
    Returns the (shape, dtype) the header gives."""
    version = np.lib.format.read_magic(stream)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(stream, max_header_size=10000)
    claimed = dtype.itemsize * int(np.prod(shape, dtype=object))
    if claimed > available - stream.tell():
        raise ValueError(f"{name} claims shape {shape} of {dtype} ({claimed:,} bytes) but holds "
                         f"{max(0, available - stream.tell()):,} bytes")
    return shape, dtype


def array_shapes(path):
    """{name: (shape, dtype)} of each array in an .npz file, read from the headers alone (no data is loaded).
    Raises ValueError for a file that is not a readable .npz."""
    try:
        with zipfile.ZipFile(path) as archive:
            shapes = {}
            for info in archive.infolist():
                with archive.open(info) as stream:
                    shapes[info.filename.removesuffix(".npy")] = check_array_header(stream, info.file_size,
                                                                                    info.filename)
            return shapes
    except NPZ_ERRORS as e:
        raise ValueError(str(e) or type(e).__name__) from None


def read_arrays(path, names=None):
    """Every array of an .npz file (or those in `names` that it holds), or the one array of an .npy file.

    Raises ValueError with the reason for a file NumPy can't read; callers turn it into their own
    one-line error (a failed source, a user's bad file, an unreadable image).
    """
    try:
        with open(path, "rb") as f:
            is_npz = f.read(4) == b"PK\x03\x04"
        if is_npz:
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    member = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                    if names is None or member in names:
                        with archive.open(info) as stream:
                            check_array_header(stream, info.file_size, info.filename)
        else:
            with open(path, "rb") as stream:
                check_array_header(stream, os.fstat(stream.fileno()).st_size, os.path.basename(path))
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            return {None: data}
        with data:
            return {name: data[name] for name in data.files if names is None or name in names}
    except NPZ_ERRORS as e:
        raise ValueError(str(e) or type(e).__name__) from None


def load_npz(path, stage_hint="dvc repro"):
    """Load all arrays of a pipeline .npz file, with one-line errors for missing or broken files."""
    if not os.path.exists(path):
        raise UserError(f"{path} not found: run `{stage_hint}` to create it")
    try:
        return read_arrays(path)
    except ValueError as e:
        raise UserError(f"{path} is not a readable .npz file ({e}): delete it and run `{stage_hint}`")


def write_json(path, data):
    """Strict JSON (no NaN or Infinity, which JSON parsers refuse), written atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, allow_nan=False)
            f.write("\n")
