"""A bounded load test of the served model (python -m mnist_cnn.serve) on 127.0.0.1, over real HTTP.

    python -m bench.serve_load [--seconds 20] [--clients 16] [--batch 32] [--workers 2]   # needs dvc repro's models/

Starts the server on a free port with the project's default model, then, with --clients keep-alive
connections from one asyncio client process (requests built once, so the client spends little CPU):

1. warm-up: 500 single-image requests; the server's RSS is read from /proc;
2. single images, closed loop: every client sends its next request as soon as its answer arrives, for
   --seconds and until 10,000 requests are done: requests/s, p50 and p99 latency, errors; RSS after;
3. single images at a fixed offered rate of 300 requests/s (open loop, spread over the clients): p50
   and p99 latency at the load the targets name;
4. batches of --batch images per request, closed loop, for --seconds: images/s, latencies, errors.

The images are the first test images (data/processed/test/) as PNG files. Writes
bench/results/serve_load.json and prints a markdown table.
"""
import argparse
import asyncio
import io
import json
import os
import statistics
import time
import urllib.request

import numpy as np
from PIL import Image

from mnist_cnn.files import write_json
from mnist_cnn.machine import describe
from mnist_cnn.prepare import read_split
from tools.http_clients import exchange, multipart_request
from tools.project import REPO, served_model

RESULTS = os.path.join(REPO, "bench", "results", "serve_load.json")
RSS_REQUESTS = 10_000
OFFERED_RATE = 300


async def closed_loop(port, requests, clients, seconds, at_least=0):
    """Each client sends request after request for `seconds` (and until at_least are done in all)."""
    latencies, errors, done = [], 0, 0
    deadline = time.perf_counter() + seconds

    async def client(number):
        nonlocal errors, done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = number
        while time.perf_counter() < deadline or done < at_least:
            status, seconds_taken = await exchange(reader, writer, requests[i % len(requests)])
            i += clients
            done += 1
            latencies.append(seconds_taken)
            errors += status != 200
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    return latencies, errors, time.perf_counter() - start


async def open_loop(port, requests, clients, seconds, rate):
    """Requests started at a fixed rate, whatever the answers' pace, spread over the clients."""
    latencies, errors = [], 0
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(clients)]
    locks = [asyncio.Lock() for _ in range(clients)]

    async def one(i, scheduled):
        nonlocal errors
        async with locks[i % clients]:  # one request at a time per connection
            status, _ = await exchange(*connections[i % clients], requests[i % len(requests)])
        latencies.append(time.perf_counter() - scheduled)  # from when it was due: queueing counts
        errors += status != 200

    start, tasks = time.perf_counter(), []
    for i in range(int(seconds * rate)):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    for _, writer in connections:
        writer.close()
    return latencies, errors, time.perf_counter() - start


def summary(latencies, errors, elapsed, images_per_request=1):
    ms = sorted(1000 * t for t in latencies)
    return {"requests": len(ms), "requests_per_s": len(ms) / elapsed, "images_per_s": len(ms) * images_per_request
            / elapsed, "p50_ms": statistics.median(ms), "p99_ms": ms[int(0.99 * (len(ms) - 1))], "errors": errors}


def rss_mb(pid):
    """Resident memory of a process and its children (uvicorn's workers), MB."""
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return rss + sum(rss_mb(int(child)) for child in f.read().split())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="the server's --workers (default: %(default)s)")
    args = parser.parse_args()

    x_test, _, _ = read_split(os.path.join(REPO, "data", "processed", "test"))
    images = []
    for pixels in np.round(x_test[:256, ..., 0] * 255).astype(np.uint8):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    with served_model(REPO, "--workers", str(args.workers)) as (server, url):
        health = json.load(urllib.request.urlopen(f"{url}/health"))
        port = int(url.rsplit(":", 1)[1])
        singles = [multipart_request(port, "/predict", "file", [data]) for data in images]
        batches = [multipart_request(port, "/predict/batch", "files", images[i:i + args.batch])
                   for i in range(0, len(images) - args.batch + 1, args.batch)]
        asyncio.run(closed_loop(port, singles, args.clients, 0, at_least=500))
        rss_before = rss_mb(server.pid)
        single = summary(*asyncio.run(closed_loop(port, singles, args.clients, args.seconds, RSS_REQUESTS)))
        rss_after = rss_mb(server.pid)
        offered = summary(*asyncio.run(open_loop(port, singles, args.clients, args.seconds, OFFERED_RATE)))
        batch = summary(*asyncio.run(closed_loop(port, batches, args.clients, args.seconds)), args.batch)

    results = {"machine": describe(), "model": health["model"], "format": health["format"], "workers": args.workers,
               "clients": args.clients, "seconds": args.seconds, "batch": args.batch,
               "single_closed_loop": single, f"single_at_{OFFERED_RATE}_per_s": offered, "batch_closed_loop": batch,
               "server_rss_mb": {"after_warm_up": rss_before, f"after_{single['requests']}_more_requests": rss_after}}
    write_json(RESULTS, results)
    machine = results["machine"]
    print(f"{machine['cpu']}, {machine['cores']} cores; server and client on this machine; {health['model']} "
          f"({health['format']}), {args.workers} server workers; {args.clients} keep-alive clients\n")
    print("| load | requests | requests/s | images/s | p50 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, row in ((f"single image, closed loop, {args.seconds:g} s", single),
                      (f"single image, {OFFERED_RATE} requests/s offered", offered),
                      (f"batches of {args.batch}, closed loop, {args.seconds:g} s", batch)):
        print(f"| {name} | {row['requests']:,} | {row['requests_per_s']:,.0f} | {row['images_per_s']:,.0f} | "
              f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['errors']} |")
    print(f"\nserver RSS: {rss_before:.0f} MB after the warm-up, {rss_after:.0f} MB after {single['requests']:,} "
          f"more requests ({rss_after - rss_before:+.0f} MB)")


if __name__ == "__main__":
    main()
