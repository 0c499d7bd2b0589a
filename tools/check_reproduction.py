"""Compare a fresh run's test metrics with the committed ones, within the measured tolerance.

    python -m tools.check_reproduction                   # metrics/evaluate.json against HEAD's
    python -m tools.check_reproduction --baseline main --accuracy-tolerance 0.005

Exits 0 when test accuracy and loss are within tolerance of the baseline, 1 when not, 2 when a file
is missing. The default tolerances are measured: docs/reproducing.md.
"""
import argparse
import json
import subprocess
import sys

ACCURACY_TOLERANCE = 0.003  # 0.3 points of test accuracy
LOSS_TOLERANCE = 0.008  # absolute test loss


def committed_metrics(rev, path):
    """The metrics file as committed at rev."""
    result = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
    if result.returncode != 0:
        raise LookupError(f"error: no {path} at git revision {rev!r} ({result.stderr.strip().splitlines()[-1]})")
    return json.loads(result.stdout)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", nargs="?", default="metrics/evaluate.json", help="the fresh run's metrics")
    parser.add_argument("--baseline", default="HEAD", help="git revision holding the reference metrics")
    parser.add_argument("--accuracy-tolerance", type=float, default=ACCURACY_TOLERANCE)
    parser.add_argument("--loss-tolerance", type=float, default=LOSS_TOLERANCE)
    args = parser.parse_args(argv)

    try:
        with open(args.metrics) as f:
            fresh = json.load(f)
    except FileNotFoundError:
        print(f"error: {args.metrics} not found: run `dvc repro` first", file=sys.stderr)
        return 2
    try:
        reference = committed_metrics(args.baseline, args.metrics)
    except LookupError as e:
        print(e, file=sys.stderr)
        return 2

    failed = False
    print(f"{'metric':<10}{'baseline':>10}{'this run':>10}{'change':>10}{'allowed':>10}")
    for key, tolerance in (("accuracy", args.accuracy_tolerance), ("loss", args.loss_tolerance)):
        change = fresh[key] - reference[key]
        ok = abs(change) <= tolerance
        failed |= not ok
        print(f"{key:<10}{reference[key]:>10.4f}{fresh[key]:>10.4f}{change:>+10.4f}{tolerance:>10.4f}"
              f"  {'ok' if ok else 'OUT OF TOLERANCE'}")
    if failed:
        print(f"error: {args.metrics} differs from {args.baseline} by more than the tolerance", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
