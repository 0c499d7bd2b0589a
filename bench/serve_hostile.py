"""The served model (python -m mnist_cnn.serve) under hostile clients, on 127.0.0.1 over real HTTP: does /health
answer within a second, and a well-behaved client still get its predictions, while attackers do their worst?

    python -m bench.serve_hostile [--seconds 10] [--workers 2] [--model models/model.onnx]   # needs dvc repro's
                                                                                           # models/ and test data

Starts the server on a free port with its default limits, then runs one phase after another on it, each
--seconds long after a second's warm-up, the attackers of tools/http_clients.py reconnecting whenever the
server closes them:

    no attack; 1,500 idle connections; 1,000 clients dribbling headers (slowloris); 200 dribbling bodies;
    8 sending headers without end; 4 sending images of 16 megapixels, by 8 and alone; all of them at once.

In each, a monitor opens a new connection for GET /health every 50 ms (the seconds each took, failures), and
one client sends single test images to /predict one after another on a kept-alive connection. The server's
memory (all its processes) is read from /proc after each phase. Writes bench/results/serve_hostile.json and
prints a markdown table.
"""
import argparse
import asyncio
import io
import json
import os
import time
import urllib.request

import numpy as np
from PIL import Image

from bench.serve_load import rss_mb
from mnist_cnn.files import write_json
from mnist_cnn.machine import describe
from mnist_cnn.prepare import read_split
from tools.http_clients import large_digit_png, multipart_request, under_attack
from tools.project import REPO, served_model

RESULTS = os.path.join(REPO, "bench", "results", "serve_hostile.json")


def mnist_pngs(count=64):
    """The first test images as PNG files."""
    x_test, _, _ = read_split(os.path.join(REPO, "data", "processed", "test"))
    pngs = []
    for pixels in np.round(x_test[:count, ..., 0] * 255).astype(np.uint8):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs


def ms(values, q):
    """The q quantile of values (seconds) in milliseconds; None for none."""
    return 1000 * sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else None


def shown(value):
    return "–" if value is None else f"{value:.1f}"


def row(name, health, tallies, answers, rss):
    answered = [s for s in health if s is not None]
    predict, errors = answers
    got = {name: dict(tally) for name, tally in tallies.items()}
    return {"phase": name, "health_checks": len(health), "health_failed": len(health) - len(answered),
            "health_p50_ms": ms(answered, 0.5), "health_p99_ms": ms(answered, 0.99),
            "health_max_ms": 1000 * max(answered) if answered else None,
            "predictions": len(predict), "predict_errors": errors, "predict_p50_ms": ms(predict, 0.5),
            "predict_p99_ms": ms(predict, 0.99), "attackers_got": got, "server_rss_mb": rss}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10, help="each phase, after its warm-up (default: 10)")
    parser.add_argument("--workers", type=int, default=2, help="the server's --workers (default: %(default)s)")
    parser.add_argument("--model", help="the server's --model (default: its own default)")
    args = parser.parse_args()

    large = large_digit_png()
    options = ["--workers", str(args.workers)] + (["--model", args.model] if args.model else [])
    with served_model(REPO, *options) as (server, url):
        health = json.load(urllib.request.urlopen(f"{url}/health"))
        port = int(url.rsplit(":", 1)[1])
        singles = [multipart_request(port, "/predict", "file", [png]) for png in mnist_pngs()]
        slow = (multipart_request(port, "/predict/batch", "files", [large] * 8),
                multipart_request(port, "/predict", "file", [large]))
        attacks = {"idle connections": (1500, ()), "headers dribbled": (1000, ()), "bodies dribbled": (200, ()),
                   "huge headers": (8, ()), "slow decodes": (4, slow)}
        phases = [("no attack", {})] + [(name, {name: attack}) for name, attack in attacks.items()]
        phases.append(("all at once", attacks))
        rss_start = rss_mb(server.pid)
        rows = []
        for name, plan in phases:
            started = time.perf_counter()
            result = asyncio.run(under_attack(port, plan, args.seconds, singles))
            rows.append(row(name, *result, rss_mb(server.pid)))
            print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)

    results = {"machine": describe(), "model": health["model"], "format": health["format"], "workers": args.workers,
               "seconds": args.seconds, "server_rss_mb_at_start": rss_start, "phases": rows}
    write_json(RESULTS, results)
    machine = results["machine"]
    print(f"\n{machine['cpu']}, {machine['cores']} cores; server and clients on this machine; {health['model']} "
          f"({health['format']}), {args.workers} server workers, default limits; {args.seconds:g} s per phase; "
          f"server RSS {rss_start:.0f} MB at the start\n")
    print("| attack | /health checks | failed | p50 ms | p99 ms | max ms | /predict answered | errors | p50 ms | "
          "p99 ms | attackers got | server RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        tallies = list(r["attackers_got"].values())
        got = ", ".join(f"{key} {count:,}" for key, count in sorted(tallies[0].items())) if len(tallies) == 1 else (
            "" if not tallies else "as above")
        print(f"| {r['phase']} | {r['health_checks']:,} | {r['health_failed']} | {shown(r['health_p50_ms'])} | "
              f"{shown(r['health_p99_ms'])} | {shown(r['health_max_ms'])} | {r['predictions']:,} | "
              f"{r['predict_errors']} | {shown(r['predict_p50_ms'])} | {shown(r['predict_p99_ms'])} | {got} | "
              f"{r['server_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
