"""HTTP/1.1 clients on raw asyncio streams, for the server's benchmarks and tests: requests built once as bytes
(the client spends little CPU), a /health monitor, and the hostile clients of docs/serving.md's "Hostile clients":
connections left idle, headers or a body dribbled a byte at a time, headers without end, slow images to decode.

Each hostile client is a coroutine that attacks over and over until `stop` is set: it connects again as soon as the
server closes its connection, so the attack never lets up, and counts what the server did in `tally`
(a collections.Counter): "connected", "refused" (no connection), and each answer's status ("408", "431", ...) or
"closed" (closed without one).
"""
import asyncio
import collections
import io
import itertools
import multiprocessing
import os
import resource
import time
import uuid

HOLD = 0.2  # seconds between two bytes of a dribbling client


def large_digit_png(side=4000):
    """A 7 drawn on side x side pixels (16 megapixels at 4000), 27 kB of PNG: about 0.4 s to decode and normalise
    on a 2-core AMD EPYC, and 200 MB while it is."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (side, side))
    ImageDraw.Draw(image).line([(side * 0.2, side * 0.2), (side * 0.8, side * 0.2), (side * 0.4, side * 0.9)],
                               fill=255, width=side // 15)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def multipart_request(port, path, field, images):
    """The bytes of one POST with images as multipart files, as a browser would send them."""
    boundary = uuid.uuid4().hex
    parts = []
    for i, data in enumerate(images):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{i}.png"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; "
            f"boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head + body


class ClosedUnanswered(ConnectionError):
    """The server closed the connection before any byte of its answer."""


async def exchange(reader, writer, request):
    """Send one request on a kept-alive connection; (status, seconds). ClosedUnanswered if the server closes it first
    (a reset while sending or before the status line is one too)."""
    start = time.perf_counter()
    try:
        writer.write(request)
        await writer.drain()
        status_line = await reader.readline()
    except (ConnectionResetError, BrokenPipeError) as e:
        raise ClosedUnanswered(str(e)) from e
    if not status_line:
        raise ClosedUnanswered("closed before the status line")
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(status_line.split()[1]), time.perf_counter() - start


async def monitor_health(port, stop, every=0.05, timeout=5.0):
    """GET /health on a new connection every `every` seconds until stop, as a load balancer's health check does:
    the seconds each took, or None for each that failed or took over `timeout`."""
    seconds = []
    request = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
    while not stop.is_set():
        start = time.perf_counter()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
            status, _ = await asyncio.wait_for(exchange(reader, writer, request), timeout - (time.perf_counter()
                                                                                             - start))
            writer.close()
            seconds.append(time.perf_counter() - start if status == 200 else None)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
            seconds.append(None)
        await asyncio.sleep(max(0.0, every - (time.perf_counter() - start)))
    return seconds


async def _attack(port, stop, tally, behave):
    """Connect, let `behave(reader, writer)` misbehave until the server answers or closes, count how; again."""
    while not stop.is_set():
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        except (OSError, asyncio.TimeoutError):
            tally["refused"] += 1
            await asyncio.sleep(HOLD)
            continue
        tally["connected"] += 1
        sending = asyncio.ensure_future(behave(reader, writer))
        answer = asyncio.ensure_future(reader.readline())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([answer, stopping], return_when=asyncio.FIRST_COMPLETED)
            if answer.done() and not answer.cancelled():
                line = answer.exception() is None and answer.result()
                tally[line.split()[1].decode() if line and len(line.split()) > 1 else "closed"] += 1
        finally:
            for task in (sending, answer, stopping):
                task.cancel()
            await asyncio.gather(sending, answer, stopping, return_exceptions=True)
            writer.close()


async def _send_slowly(writer, data):
    for byte in data:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(HOLD)


def idle_connections(port, stop, tally):
    """A connection that never sends a byte."""
    async def behave(reader, writer):
        await stop.wait()
    return _attack(port, stop, tally, behave)


def dribbled_headers(port, stop, tally):
    """Slowloris: a request's headers, a byte every HOLD seconds, without end."""
    async def behave(reader, writer):
        writer.write(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
        await _send_slowly(writer, b"X-Slow: " + b"a" * 1_000_000)
    return _attack(port, stop, tally, behave)


def dribbled_body(port, stop, tally):
    """A POST /predict whose headers come at once and whose 100 kB body comes a byte every HOLD seconds."""
    async def behave(reader, writer):
        writer.write(f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; "
                     f"boundary=b\r\nContent-Length: 100000\r\n\r\n".encode())
        await _send_slowly(writer, b"--b\r\n" + b"a" * 99_995)
    return _attack(port, stop, tally, behave)


def huge_headers(port, stop, tally, chunk=1 << 16):
    """A header that never ends, sent as fast as the server reads it."""
    async def behave(reader, writer):
        writer.write(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Huge: ".encode())
        filler = b"a" * chunk
        while True:
            writer.write(filler)
            await writer.drain()
    return _attack(port, stop, tally, behave)


def slow_decodes(port, stop, tally, *requests):
    """Valid requests whose images take long to decode and normalise (requests: their bytes), one after another,
    the next as soon as the last is answered."""
    sent = itertools.count()

    async def behave(reader, writer):
        writer.write(requests[next(sent) % len(requests)])
        await writer.drain()
        await stop.wait()
    return _attack(port, stop, tally, behave)


ATTACKS = {"idle connections": idle_connections, "headers dribbled": dribbled_headers,
           "bodies dribbled": dribbled_body, "huge headers": huge_headers, "slow decodes": slow_decodes}


def _attackers(port, plan, orders):
    """The attackers of plan, {name in ATTACKS: (clients, extra arguments)}, in a process of their own until told
    to stop through the pipe `orders`, which then carries back their tallies."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # thousands of connections
    # The lowest CPU priority: attackers stand in for clients on other machines, which do not take the cores the
    # server and the monitored clients need
    os.nice(19)

    async def attack():
        stop = asyncio.Event()
        tallies = {name: collections.Counter() for name in plan}
        attackers = [asyncio.ensure_future(ATTACKS[name](port, stop, tallies[name], *extra))
                     for name, (clients, extra) in plan.items() for _ in range(clients)]
        while not orders.poll():
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*attackers, return_exceptions=True)
        return tallies

    orders.send(asyncio.run(attack()))


async def well_behaved(port, requests, stop):
    """Requests one after another on a kept-alive connection (a new one when the server closes it), as a user's
    browser sends them, until stop: (the seconds each answered one took, how many failed). As a browser does, a
    request whose kept-alive connection the server closed before answering it (an idle connection closed as the
    request went out: its keep-alive time was up, or the server made room for a new client) is sent again on a
    new connection and not counted as failed; on a new connection, the same counts."""
    seconds, failed, i, connection = [], 0, 0, None
    while not stop.is_set():
        reused = connection is not None
        try:
            connection = connection or await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
            status, took = await asyncio.wait_for(exchange(*connection, requests[i % len(requests)]), 30)
        except ClosedUnanswered:
            connection = None
            failed += not reused
            continue
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError):
            failed += 1
            connection = None
            continue
        i += 1
        if status == 200:
            seconds.append(took)
        else:
            failed += 1
    return seconds, failed


async def under_attack(port, plan, seconds, requests=(), warm_up=1.0):
    """Run the attacks of plan, {name in ATTACKS: (clients, extra arguments)}, in a process of their own (so that
    their work does not delay this one's clients) while, for `seconds` from warm_up seconds after they began,
    monitor_health watches /health and a well_behaved client sends `requests` (if any): (the seconds each /health
    took or None, {name: tally}, the well-behaved client's (seconds, failed))."""
    context = multiprocessing.get_context("spawn")
    orders, theirs = context.Pipe()
    process = context.Process(target=_attackers, args=(port, plan, theirs), daemon=True)
    process.start()
    theirs.close()  # theirs alone now: a process that dies closes the pipe, and recv() raises
    try:
        await asyncio.sleep(warm_up)
        stop = asyncio.Event()
        monitor = asyncio.ensure_future(monitor_health(port, stop))
        user = asyncio.ensure_future(well_behaved(port, requests, stop) if requests else asyncio.sleep(0, ([], 0)))
        await asyncio.sleep(seconds)
        stop.set()
        health, answers = await monitor, await user
        orders.send("stop")
        tallies = await asyncio.get_running_loop().run_in_executor(None, orders.recv)
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
    return health, tallies, answers
