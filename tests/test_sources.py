"""sources.fetch in process against a fake network and a fake clock: retries, waits, deadlines and each failure's
words, in milliseconds. tests/test_download.py runs the real thing against a local HTTP server."""
import dataclasses
import gzip
import http.client
import io
import socket
import struct
import urllib.error

import numpy as np
import pytest

from mnist_cnn import sources
from mnist_cnn.datasets import DATASETS, IDX_FILES, array_digest
from mnist_cnn.errors import UserError
from mnist_cnn.sources import DEADLINE_VARIABLE, SourceError, fetch


class Clock:
    """time as sources sees it: monotonic() and sleep(), which only moves the clock on."""

    def __init__(self, now=1000.0):
        self.now, self.sleeps = now, []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


class Response:
    """A response of body, sent chunk by chunk (each read1 taking `pace` seconds of the clock); headers as
    http.client parses them (case-insensitive); length: its Content-Length, None for none."""

    def __init__(self, clock, body, length="body", pace=0.0, chunk=1 << 16):
        self.clock, self.body, self.pace, self.chunk, self.at = clock, body, pace, chunk, 0
        self.headers = http.client.HTTPMessage()
        if length is not None:
            self.headers["Content-Length"] = str(len(body) if length == "body" else length)

    def read1(self, size):
        assert size == 1 << 16
        self.clock.now += self.pace
        piece = self.body[self.at:self.at + min(size, self.chunk)]
        self.at += len(piece)
        return piece

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def network(monkeypatch):
    """A fake clock and urlopen: set `answers` (a Response, or an exception to raise) one per call; each call's
    (url, timeout) is kept in `calls`."""
    clock = Clock()
    net = type("Network", (), {})()
    net.clock, net.answers, net.calls = clock, [], []

    def urlopen(url, timeout):
        net.calls.append((url, timeout))
        answer = net.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    monkeypatch.setattr(sources, "time", clock)
    monkeypatch.setattr(sources.urllib.request, "urlopen", urlopen)
    monkeypatch.delenv(DEADLINE_VARIABLE, raising=False)
    return net


def http_error(code, reason):
    return urllib.error.HTTPError("http://x/m.npz", code, reason, http.client.HTTPMessage(), None)


def test_a_file_is_written_as_it_arrives_with_each_read_timed_out_by_the_time_left(network, tmp_path):
    body = bytes(range(256)) * 1000  # 256,000 bytes: four reads of 64 KiB
    network.answers = [Response(network.clock, body, pace=1.0)]
    fetch("http://x/m.npz", tmp_path / "m", deadline=network.clock.now + 100)
    assert (tmp_path / "m").read_bytes() == body
    assert network.calls == [("http://x/m.npz", 30)]  # TIMEOUT_S: less than the 100 s left
    network.answers = [Response(network.clock, body, length=None)]
    fetch("http://x/m.npz", tmp_path / "n", timeout=30, deadline=network.clock.now + 12.5)
    assert (tmp_path / "n").read_bytes() == body and network.calls[-1][1] == 12.5  # the time left: less than 30
    assert network.clock.sleeps == []


def test_the_deadline_is_the_variables_seconds_from_now_without_one_given(network, tmp_path, monkeypatch):
    network.answers = [Response(network.clock, b"data")]
    fetch("http://x/m.npz", tmp_path / "m")
    assert network.calls[-1][1] == 30  # DEADLINE_S, 600 s: the timeout is TIMEOUT_S
    monkeypatch.setenv(DEADLINE_VARIABLE, "7.5")
    network.answers = [Response(network.clock, b"data")]
    fetch("http://x/m.npz", tmp_path / "m")
    assert network.calls[-1][1] == 7.5
    network.answers = [Response(network.clock, b"data" * 70_000, pace=5.0)]  # 5 s a read: 10 s for the second
    with pytest.raises(SourceError, match=r"^not done after 7.5 s in all \(set DATASET_SOURCE_DEADLINE to allow "
                                          r"more\)$"):
        fetch("http://x/m.npz", tmp_path / "m")


def test_server_errors_are_retried_after_1_then_2_seconds_and_named_after_the_last_try(network, tmp_path):
    network.answers = [http_error(503, "Service Unavailable"), http_error(500, "Internal Server Error"),
                       Response(network.clock, b"data")]
    fetch("http://x/m.npz", tmp_path / "m", deadline=network.clock.now + 100)
    assert (tmp_path / "m").read_bytes() == b"data" and network.clock.sleeps == [1.0, 2.0]
    network.clock.sleeps.clear()
    network.answers = [http_error(503, "Service Unavailable")] * 3
    with pytest.raises(SourceError) as error:
        fetch("http://x/m.npz", tmp_path / "m", deadline=network.clock.now + 100)
    assert str(error.value) == "HTTP 503 Service Unavailable, after 3 tries"
    assert network.clock.sleeps == [1.0, 2.0]  # none after the last
    network.clock.sleeps.clear()
    network.answers = [http_error(502, "Bad Gateway")] * 4
    with pytest.raises(SourceError, match=r"^HTTP 502 Bad Gateway, after 4 tries$"):
        fetch("http://x/m.npz", tmp_path / "m", retries=4, backoff=0.5, deadline=network.clock.now + 100)
    assert network.clock.sleeps == [0.5, 1.0, 2.0]


def test_a_wait_never_runs_past_the_deadline(network, tmp_path):
    network.answers = [http_error(503, "Service Unavailable")] * 3
    with pytest.raises(SourceError, match=r"^not done after 600 s in all"):  # the variable's default, DEADLINE_S
        fetch("http://x/m.npz", tmp_path / "m", deadline=network.clock.now + 1.5)
    assert network.clock.sleeps == [1.0, 0.5] and len(network.calls) == 2  # the third try: no time left
    network.clock.sleeps.clear()
    network.answers = [http_error(503, "Service Unavailable")] * 3
    with pytest.raises(SourceError, match="^not done after"):
        fetch("http://x/m.npz", tmp_path / "m", deadline=network.clock.now - 1)  # past already: no try
    assert network.clock.sleeps == [] and len(network.calls) == 2
    network.answers = [http_error(503, "Service Unavailable")] * 2
    with pytest.raises(SourceError, match="^not done after"):  # the wait ends on the deadline: none left, no try
        fetch("http://x/m.npz", tmp_path / "m", retries=2, deadline=network.clock.now + 0.5)
    assert network.clock.sleeps == [0.5] and network.calls[2:] == [("http://x/m.npz", 0.5)]
    network.answers = [Response(network.clock, b"data")]
    network.clock.sleeps.clear()
    fetch("http://x/m.npz", tmp_path / "m", deadline=network.clock.now + 0.25)  # under a second left is enough
    assert network.calls[-1][1] == 0.25
    network.answers = [Response(network.clock, b"x" * 70_000, pace=1.0)]  # the last byte comes on the deadline exactly
    fetch("http://x/m.npz", tmp_path / "m", deadline=network.clock.now + 2.0)
    assert (tmp_path / "m").read_bytes() == b"x" * 70_000


def test_a_client_error_is_not_retried(network, tmp_path):
    network.answers = [http_error(404, "Not Found")]
    with pytest.raises(SourceError, match=r"^HTTP 404 Not Found$"):
        fetch("http://x/m.npz", tmp_path / "m", deadline=network.clock.now + 100)
    network.answers = [http_error(499, "Client Closed Request")]
    with pytest.raises(SourceError, match=r"^HTTP 499 Client Closed Request$"):
        fetch("http://x/m.npz", tmp_path / "m", deadline=network.clock.now + 100)
    assert len(network.calls) == 2 and network.clock.sleeps == []


@pytest.mark.parametrize("failure, problem", [
    (TimeoutError(), "no data for 2.5 s (timed out)"),
    (socket.timeout("read"), "no data for 2.5 s (timed out)"),
    (urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")),
     "cannot connect ([Errno 111] Connection refused)"),
    (ConnectionResetError(104, "reset"), "connection broke off (ConnectionResetError)"),
    (http.client.BadStatusLine("x"), "connection broke off (BadStatusLine)"),
])
def test_each_network_failure_is_named_after_the_last_try(network, tmp_path, failure, problem):
    network.answers = [failure, failure]
    with pytest.raises(SourceError) as error:
        fetch("http://x/m.npz", tmp_path / "m", timeout=2.5, retries=2, backoff=0.25,
              deadline=network.clock.now + 100)
    assert str(error.value) == f"{problem}, after 2 tries"
    assert network.clock.sleeps == [0.25]


def test_a_file_shorter_than_its_content_length_is_a_broken_connection(network, tmp_path):
    network.answers = [Response(network.clock, b"data", length=10), Response(network.clock, b"data", length=4)]
    fetch("http://x/m.npz", tmp_path / "m", deadline=network.clock.now + 100)
    assert (tmp_path / "m").read_bytes() == b"data" and network.clock.sleeps == [1.0]
    network.answers = [Response(network.clock, b"data", length=3)]
    with pytest.raises(SourceError, match=r"^connection broke off \(IncompleteRead\), after 1 tries$"):
        fetch("http://x/m.npz", tmp_path / "m", retries=1, deadline=network.clock.now + 100)
    with pytest.raises(SourceError, match=r"^no attempt, after 0 tries$"):
        fetch("http://x/m.npz", tmp_path / "m", retries=0, deadline=network.clock.now + 100)


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_progress_bar_shows_on_a_terminal_named_after_the_file_in_bytes_and_is_wiped_after(network, tmp_path,
                                                                                             monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sources.sys, "stderr", terminal)
    network.answers = [Response(network.clock, b"x" * 150_000, chunk=50_000)]
    fetch("http://x/data/m.npz", tmp_path / "m", deadline=network.clock.now + 100)
    shown = terminal.getvalue()  # the bar as it starts (tqdm redraws at most every 0.1 s), then wiped: leave=False
    assert shown.startswith("\rm.npz:   0%|          | 0.00/150k [00:00<?, ?B/s]\r")
    assert shown.endswith("\r") and shown.strip("\r ") == shown.split("\r")[1]
    monkeypatch.setattr(sources.sys, "stderr", io.StringIO())  # not a terminal: no bar
    network.answers = [Response(network.clock, b"x" * 150_000, chunk=50_000)]
    fetch("http://x/data/m.npz", tmp_path / "m", deadline=network.clock.now + 100)
    assert sources.sys.stderr.getvalue() == ""


@pytest.mark.parametrize("value, seconds", [("", 600.0), ("  ", 600.0), ("2.5", 2.5), (" 30 ", 30.0), ("1e-3", 0.001)])
def test_the_deadline_variable_in_seconds_else_600(monkeypatch, value, seconds):
    monkeypatch.setenv(DEADLINE_VARIABLE, value)
    assert sources.source_deadline() == seconds


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon", "1e400"])
def test_a_deadline_that_is_not_a_positive_finite_number_is_one_line(monkeypatch, value):
    monkeypatch.setenv(DEADLINE_VARIABLE, value)
    with pytest.raises(UserError) as error:
        sources.source_deadline()
    assert str(error.value) == (f"DATASET_SOURCE_DEADLINE = {value!r} is not allowed; it must be a number of "
                                f"seconds > 0")


def test_candidates_are_each_roots_npz_then_idx_in_each_subfolder_then_the_official_urls():
    spec = dataclasses.replace(DATASETS["mnist"], subdirs=("mnist", "MNIST"),
                               urls=("https://a.org/mnist.npz", "https://b.org/idx/"))
    assert list(sources.candidates(spec, ["/data", "http://m:8000/p/"])) == [
        ("npz", "/data/mnist.npz"), ("idx", "/data/"), ("npz", "/data/mnist/mnist.npz"), ("idx", "/data/mnist"),
        ("npz", "/data/MNIST/mnist.npz"), ("idx", "/data/MNIST"),
        ("npz", "http://m:8000/p/mnist.npz"), ("idx", "http://m:8000/p"), ("npz", "http://m:8000/p/mnist/mnist.npz"),
        ("idx", "http://m:8000/p/mnist"), ("npz", "http://m:8000/p/MNIST/mnist.npz"), ("idx", "http://m:8000/p/MNIST"),
        ("npz", "https://a.org/mnist.npz"), ("idx", "https://b.org/idx/")]
    idx_only = dataclasses.replace(spec, npz_name="", subdirs=(), urls=())
    assert list(sources.candidates(idx_only, ["/data"])) == [("idx", "/data/")]
    assert [sources.is_url(u) for u in ("http://x", "https://x", "ftp://x", "/http://x", "HTTP://x")] == [
        True, True, False, False, False]


def test_the_keras_cache_is_under_keras_home_else_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "k"))
    assert sources.keras_cache_dir() == f"{tmp_path}/k/datasets"
    monkeypatch.setenv("KERAS_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert sources.keras_cache_dir() == f"{tmp_path}/home/.keras/datasets"


def idx(array, magic=b"\x00\x00\x08"):
    return magic + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def test_idx_files_decode_to_their_shape_and_anything_else_is_named():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(sources.parse_idx(idx(images), "x"), images)
    labels = np.array([7, 1, 255], np.uint8)
    np.testing.assert_array_equal(sources.parse_idx(idx(labels), "y"), labels)
    square = np.ones((2, 2), np.uint8)
    np.testing.assert_array_equal(sources.parse_idx(idx(square), "s"), square)
    empty = sources.parse_idx(idx(np.zeros(0, np.uint8)), "e")  # 8 bytes: the magic, one size of 0
    assert empty.shape == (0,) and empty.dtype == np.uint8
    four = np.zeros((1, 1, 1, 1), np.uint8)
    for data in (idx(images)[:7], idx(images, b"\x00\x00\x09"), idx(images, b"\x01\x00\x08"),
                 idx(images, b"\x00\x01\x08"), idx(four), b"\x00\x00\x08\x00" + b"\x00" * 8):
        with pytest.raises(SourceError, match=r"^x is not a uint8 IDX file$"):
            sources.parse_idx(data, "x")
    with pytest.raises(SourceError) as error:
        sources.parse_idx(idx(images) + b"\x00", "x")
    assert str(error.value) == "x is truncated or padded: 25 bytes for shape (2, 3, 4)"
    with pytest.raises(SourceError, match=r"^x is truncated or padded: 23 bytes for shape \(2, 3, 4\)$"):
        sources.parse_idx(idx(images)[:-1], "x")


def test_an_idx_file_that_decompresses_past_the_limit_is_refused_unread(tmp_path, monkeypatch):
    images = np.zeros((10, 10), np.uint8)
    with gzip.open(tmp_path / "x.gz", "wb") as f:
        f.write(idx(images))  # 4 + 8 + 100 bytes
    monkeypatch.setattr(sources, "MAX_IDX_BYTES", 112)
    np.testing.assert_array_equal(sources.read_idx({"x": str(tmp_path / "x.gz")})["x"], images)
    monkeypatch.setattr(sources, "MAX_IDX_BYTES", 111)
    with pytest.raises(SourceError, match=r"^x.gz decompresses to over 0 MB; not a dataset file$"):
        sources.read_idx({"x": str(tmp_path / "x.gz")})
    monkeypatch.setattr(sources, "MAX_IDX_BYTES", 3 << 20)
    (tmp_path / "y.gz").write_bytes(b"not gzip")
    with pytest.raises(SourceError, match=r"^y.gz is not a valid .gz file \(Not a gzipped file"):
        sources.read_idx({"y": str(tmp_path / "y.gz")})


def test_an_npz_source_needs_every_array_and_each_must_have_its_digest(tmp_path):
    arrays = {name: np.full((2, 2), i, np.uint8) for i, name in enumerate(("x_train", "y_train", "x_test", "y_test"))}
    np.savez(tmp_path / "m.npz", **arrays, extra=np.zeros(1))
    got = sources.read_npz(str(tmp_path / "m.npz"))
    assert sorted(got) == ["x_test", "x_train", "y_test", "y_train"]
    assert sorted(sources.read_npz(str(tmp_path / "m.npz"), optional=("extra", "absent"))) == [
        "extra", "x_test", "x_train", "y_test", "y_train"]
    np.savez(tmp_path / "part.npz", x_train=arrays["x_train"], y_test=arrays["y_test"])
    with pytest.raises(SourceError, match=r"^part.npz lacks the arrays y_train, x_test$"):
        sources.read_npz(str(tmp_path / "part.npz"))
    spec = dataclasses.replace(DATASETS["mnist"], digests={n: array_digest(a) for n, a in arrays.items()})
    assert sources.verify(got, spec) is got
    for name in ("x_train", "y_test"):
        for bad in (arrays[name].astype(np.int64), arrays[name] + 1):
            with pytest.raises(SourceError) as error:
                sources.verify({**arrays, name: bad}, spec)
            assert str(error.value) == f"{name} {bad.dtype}(2, 2) does not match the pinned mnist digest"


def test_an_idx_file_is_read_no_further_than_the_limit_and_one_byte(tmp_path, monkeypatch):
    """A gzip bomb is refused after MAX_IDX_BYTES + 1 bytes, never read whole."""
    with gzip.open(tmp_path / "x.gz", "wb") as f:
        f.write(idx(np.zeros((1100, 1000), np.uint8)))  # 1.05 MiB of zeros, a few kB compressed
    sizes, real = [], gzip.open

    class Recording:
        def __init__(self, path, mode="rb"):
            self.file = real(path, mode)

        def read(self, size=-1):
            sizes.append(size)
            return self.file.read(size)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(sources.gzip, "open", Recording)
    monkeypatch.setattr(sources, "MAX_IDX_BYTES", 1 << 20)
    with pytest.raises(SourceError, match=r"^x.gz decompresses to over 1 MB; not a dataset file$"):
        sources.read_idx({"x": str(tmp_path / "x.gz")})
    assert sizes == [(1 << 20) + 1]
    with real(tmp_path / "short.gz", "wb") as f:
        f.write(idx(np.zeros((10, 10), np.uint8))[:-1])
    with pytest.raises(SourceError, match=r"^short.gz is truncated or padded: 99 bytes for shape \(10, 10\)$"):
        sources.read_idx({"x": str(tmp_path / "short.gz")})


def test_no_valid_source_names_what_was_searched_and_what_failed(tmp_path):
    idx_only = dataclasses.replace(DATASETS["mnist"], npz_name="", subdirs=(), urls=())
    with pytest.raises(UserError) as error:
        sources.download(idx_only, [])
    assert str(error.value) == (
        "no valid source for mnist; searched folders and mirrors: none; failed: no candidate files found. Fix: put "
        "the four IDX .gz files in a folder and set DATASET_MIRRORS=/that/folder, or check your network connection")
    for root in ("a", "b"):
        (tmp_path / root).mkdir()
        (tmp_path / root / "mnist.npz").write_bytes(b"not an npz")
    npz = dataclasses.replace(DATASETS["mnist"], subdirs=(), urls=())
    with pytest.raises(UserError) as error:
        sources.download(npz, [str(tmp_path / "a"), str(tmp_path / "b")])
    message = str(error.value)
    assert message.startswith(f"no valid source for mnist; searched folders and mirrors: {tmp_path}/a, {tmp_path}/b; "
                              f"failed: {tmp_path}/a/mnist.npz (mnist.npz is not a valid .npz file (")
    assert f")); {tmp_path}/b/mnist.npz (mnist.npz is not a valid .npz file (" in message
    assert message.endswith(")). Fix: put mnist.npz in a folder and set DATASET_MIRRORS=/that/folder, or check your "
                            "network connection")
    assert sources.join("http://h/DATAX/", "f") == "http://h/DATAX/f"


def test_one_deadline_covers_all_of_a_sources_files_and_downloads_go_to_a_folder_of_their_own(network, tmp_path,
                                                                                              monkeypatch):
    """Four IDX files of 3 s each from a mirror: past a deadline of 10 s in all, though each alone is well within;
    nothing is left behind in the working folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DEADLINE_VARIABLE, "10")
    spec = dataclasses.replace(DATASETS["mnist"], npz_name="", subdirs=(), urls=())
    network.answers = [Response(network.clock, b"not gzip", pace=1.5) for _ in range(4)]
    with pytest.raises(UserError) as error:
        sources.download(spec, ["http://m/idx"])
    fourth = list(IDX_FILES.values())[3]
    assert f"http://m/idx/{fourth}: not done after 10 s in all" in str(error.value)
    assert len(network.calls) == 4 and list(tmp_path.iterdir()) == []
