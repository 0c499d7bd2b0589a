"""Mutation testing (mutmut) of the modules whose logic is plain Python, one module at a time.

    python -m tools.mutation                     # every module of MODULES
    python -m tools.mutation params shards       # some of them (the names of MODULES)
    python -m tools.mutation --survivors shards  # again only the mutants the last run left alive (after new tests)
    python -m tools.mutation --fresh shards      # from scratch: every mutant again
    python -m tools.mutation --report            # rewrite the report from the last results, running nothing

Each module gets its own working folder mutants/<name>/ (git-ignored), where mutmut copies the code,
mutates only that module and runs only the fast tests that MODULES names for it, one mutant at a
time (--max-children 1). A rerun tests only the mutants of functions edited since (mutmut keeps a hash of each
function); --survivors tests the survivors again, --fresh everything. Results go to
bench/results/mutation.json and docs/mutation-report.md: mutants killed, survived, timed out, per
module. A survivor listed in tests/mutation-equivalents.txt (an equivalent mutant: it cannot change
behaviour) is counted apart; any other survivor makes the exit status 1.

It is not part of pytest: tests/test_mutation.py checks only that this runner is wired.
"""
import argparse
import filecmp
import importlib
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(REPO, "mutants")
RESULTS = os.path.join(REPO, "bench", "results", "mutation.json")
REPORT = os.path.join(REPO, "docs", "mutation-report.md")
EQUIVALENTS = os.path.join(REPO, "tests", "mutation-equivalents.txt")
TARGET = 0.90  # the least share of mutants killed in every module
# A folder where a test's subprocesses leave the names of the mutated functions they ran (stats run only)
HITS_ENV = "MNIST_CNN_MUTATION_HITS"

# Leave out the tests that train a model first (the trained_run fixture): a mutant's run would take a minute
WITHOUT_TRAINING = {"extra_args": ["--without-fixture", "trained_run"]}
# module name: (its file, the fast tests that exercise it[, mutmut settings of its own])
MODULES = {
    "prepare": ("mnist_cnn/prepare.py", ["tests/test_prepare.py", "tests/test_streaming.py",
                                         "tests/test_preprocess.py"]),
    "check_reproduction": ("tools/check_reproduction.py", ["tests/test_check_reproduction.py"]),
    "model_files": ("mnist_cnn/model_files.py", ["tests/test_files.py", "tests/test_evaluate.py"], WITHOUT_TRAINING),
    "streaming": ("mnist_cnn/streaming.py", ["tests/test_streaming.py"], WITHOUT_TRAINING),
    "evaluate": ("stages/evaluate.py", ["tests/test_evaluate.py", "tests/test_streaming.py", "tests/test_shards.py"],
                 WITHOUT_TRAINING),
    "image_folders": ("mnist_cnn/image_folders.py", ["tests/test_image_folders.py", "tests/test_download.py"]),
    "preprocess": ("stages/preprocess.py", ["tests/test_preprocess.py", "tests/test_shards.py",
                                            "tests/test_streaming.py"], WITHOUT_TRAINING),
    "predict": ("mnist_cnn/predict.py", ["tests/test_predict.py"], WITHOUT_TRAINING),
    # PARAMS_SCHEMA is built by calls at import time, before a mutant is switched on: built again after
    "params": ("mnist_cnn/params.py", ["tests/test_params.py"],
               {"extra_args": ["--rebuild", "mnist_cnn.params:PARAMS_SCHEMA"]}),
    "files": ("mnist_cnn/files.py", ["tests/test_files.py", "tests/test_shards.py", "tests/test_preprocess.py",
                                     "tests/test_download.py"]),
    "shards": ("mnist_cnn/shards.py", ["tests/test_shards.py", "tests/test_streaming.py", "tests/test_preprocess.py",
                                       "tests/test_prepare.py"], WITHOUT_TRAINING),
    "sources": ("mnist_cnn/sources.py", ["tests/test_sources.py", "tests/test_download.py"]),
    "runtimes": ("mnist_cnn/runtimes.py", ["tests/test_runtimes.py", "tests/test_predict.py", "tests/test_export.py"],
                 WITHOUT_TRAINING),
    "images": ("mnist_cnn/images.py", ["tests/test_images.py"]),
}
# What the tests read besides the code: copied into each module's mutants/ folder
ALSO_COPY = ["pytest.ini", "params.yaml", "dvc.yaml", "presets", "bench", "examples", "metrics", ".dvc", ".dvcignore",
             ".gitignore", "data/own", "requirements.txt", "constraints.txt", "sitecustomize.py"]
SOURCES = ["mnist_cnn", "stages", "tools"]


def mutmut_config(path, tests, settings=None):
    """The [tool.mutmut] table for one module: mutate path, run tests without xdist or slow ones (stage ones
    included). settings: mutmut settings of the module's own, and extra_args, more pytest arguments."""
    settings = dict(settings or {})
    extra_args = settings.pop("extra_args", [])
    return {**{"source_paths": SOURCES, "only_mutate": [path], "also_copy": ALSO_COPY,
            # the quick tests, and those marked stage (a few seconds in a new process), which pytest counts as slow
            "pytest_add_cli_args": ["-n", "0", "-m", "not slow or stage", "-p", "tools.mutation",
                                    "-p", "no:cacheprovider", *extra_args],
            "pytest_add_cli_args_test_selection": tests,
            # each mutant in a process forked from one that imported the tests but ran none: forked from a process
            # where TensorFlow had run, a mutant's process hangs on its thread pools' locks
            "process_isolation": "forkserver", "forkserver_warmup": "collect"}, **settings}


def toml(table):
    """A [tool.mutmut] TOML table of strings and lists of strings."""
    lines = ["[tool.mutmut]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def prepare_workdir(name):
    """mutants/<name>/: links to the repository's files and a pyproject.toml holding only mutmut's config."""
    path = MODULES[name][0]
    workdir = os.path.join(WORK, name)
    os.makedirs(os.path.join(workdir, "data"), exist_ok=True)
    for entry in SOURCES + ["tests"] + [p for p in ALSO_COPY if p != "sitecustomize.py"]:
        link = os.path.join(workdir, entry)
        if os.path.lexists(link):
            os.remove(link)
        if os.path.lexists(os.path.join(REPO, entry)):
            os.symlink(os.path.join(REPO, entry), link)
    shared = os.path.join(os.path.dirname(REPO), "shared")  # real MNIST for the tests that use it, as conftest finds it
    if os.path.isdir(shared) and not os.path.lexists(os.path.join(workdir, "shared")):
        os.symlink(shared, os.path.join(workdir, "shared"))
    forget_stale_copies(workdir, path)
    with open(os.path.join(workdir, "pyproject.toml"), "w") as f:
        f.write(toml(mutmut_config(*MODULES[name])))
    # Subprocesses of the tests (python -m stages.x with PYTHONPATH at the mutants) import this at startup
    with open(os.path.join(workdir, "sitecustomize.py"), "w") as f:
        f.write("import tools.mutation\n\ntools.mutation.record_hits_in_subprocess()\n")
    return workdir


def forget_stale_copies(workdir, mutated):
    """Delete mutmut's copies of the modules it does not mutate that differ from the repository's: mutmut copies
    a file only where its copy is missing, so an edited module would otherwise be tested in its old version."""
    for source in SOURCES:
        for folder, _, files in os.walk(os.path.join(workdir, "mutants", source)):
            for file in files:
                copy = os.path.join(folder, file)
                relative = os.path.relpath(copy, os.path.join(workdir, "mutants"))
                original = os.path.join(REPO, relative)
                if relative != mutated and file.endswith(".py") and (
                        not os.path.exists(original) or not filecmp.cmp(copy, original, shallow=False)):
                    os.remove(copy)


def record_hits_in_subprocess():
    """In mutmut's stats run, a subprocess writes the mutated functions it runs where the test's process reads them."""
    hits = os.environ.get(HITS_ENV)
    if os.environ.get("MUTANT_UNDER_TEST") != "stats" or not hits:
        return
    import mutmut.mutation.trampoline as trampoline

    seen = set()

    def record(name, caller=None):
        if name not in seen:
            seen.add(name)
            with open(os.path.join(hits, f"{os.getpid()}.txt"), "a") as f:
                f.write(name + "\n")

    trampoline.record_trampoline_hit = record


def pytest_addoption(parser):
    """--without-fixture NAME: leave out the tests that use the fixture NAME (a pytest plugin: -p tools.mutation)."""
    parser.addoption("--without-fixture", action="append", default=[], help="leave out the tests using this fixture")
    parser.addoption("--rebuild", action="append", default=[], help="MODULE:NAME, a dict built at import")


IMPORT_TIME_HITS = set()  # in mutmut's stats run: the mutated functions a --rebuild module calls as it is built


def pytest_configure(config):
    """--rebuild MODULE:NAME: with a mutant of MODULE on, run MODULE's code again and refill its dict NAME in place,
    so that what it built at import (PARAMS_SCHEMA's validators) is built by the mutant, wherever it is held. In the
    stats run, the functions that building calls are counted as run by every test: every test uses what they built."""
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    for target in config.getoption("--rebuild"):
        module_name, _, name = target.partition(":")
        if mutant == "stats" or mutant.startswith(module_name + "."):
            module = importlib.import_module(module_name)
            held = getattr(module, name)
            importlib.reload(module)
            rebuilt = getattr(module, name)
            held.clear()
            held.update(rebuilt)
            setattr(module, name, held)
    if mutant == "stats" and config.getoption("--rebuild"):
        from mutmut.state import state

        IMPORT_TIME_HITS.update(state()._stats)


def pytest_collection_modifyitems(config, items):
    """Deselect the tests that use a fixture named by --without-fixture."""
    unwanted = set(config.getoption("--without-fixture"))
    left_out = [item for item in items if unwanted & set(getattr(item, "fixturenames", ()))]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if item not in left_out]


@pytest.hookimpl(tryfirst=True)  # before mutmut's own hook, which files this test's hits
def pytest_runtest_teardown(item, nextitem):
    """A pytest hook (-p tools.mutation): the functions a test's subprocesses ran count as run by the test."""
    hits = os.environ.get(HITS_ENV)
    if os.environ.get("MUTANT_UNDER_TEST") != "stats" or not hits or not os.path.isdir(hits):
        return
    from mutmut.state import state

    state()._stats.update(IMPORT_TIME_HITS)

    for entry in os.listdir(hits):
        with open(os.path.join(hits, entry)) as f:
            state()._stats.update(f.read().split())
        os.remove(os.path.join(hits, entry))



def statuses(name):
    """mutant name -> status of one module's last run (mutmut's .meta file); {} before any run."""
    meta = os.path.join(WORK, name, "mutants", MODULES[name][0] + ".meta")
    if not os.path.exists(meta):
        return {}
    from mutmut.stats import status_by_exit_code

    with open(meta) as f:
        return {mutant: status_by_exit_code[code] for mutant, code in json.load(f)["exit_code_by_key"].items()}


def run_module(name, survivors_only=False):
    """Run mutmut on one module (survivors_only: only the mutants its last run did not kill); returns the seconds
    it took."""
    mutants = []  # none named: mutmut tests the mutants it has no result for (new ones, and those of edited functions)
    if survivors_only and statuses(name):
        mutants = sorted(m for m, status in statuses(name).items() if status not in ("killed", "timeout"))
        if not mutants:
            return 0.0
    workdir = prepare_workdir(name)
    hits = os.path.join(workdir, "hits")
    # every process the tests start finds the mutants and sitecustomize.py, forkserver pools too
    copies = os.path.join(workdir, "mutants")
    os.makedirs(hits, exist_ok=True)
    os.makedirs(copies, exist_ok=True)  # before Python starts: a folder missing then stays unsearched
    started = time.monotonic()
    print(f"{name}: mutmut on {MODULES[name][0]} with {' '.join(MODULES[name][1])} (log: mutants/{name}/mutmut.log)",
          flush=True)
    with open(os.path.join(workdir, "mutmut.log"), "w") as log:
        # mutmut counts a test's failure as a kill: it exits 0 even when mutants survive
        result = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", "1", *mutants],
                                cwd=workdir, env={**os.environ, HITS_ENV: hits, "PYTHONPATH": copies}, stdout=log,
                                stderr=subprocess.STDOUT)
    if result.returncode != 0:
        sys.exit(f"{name}: mutmut failed (exit {result.returncode}): see mutants/{name}/mutmut.log")
    return time.monotonic() - started


def equivalents():
    """tests/mutation-equivalents.txt: mutant name -> the reason it cannot change behaviour."""
    listed = {}
    with open(EQUIVALENTS) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                mutant, _, reason = line.strip().partition(" ")
                listed[mutant] = reason.strip()
    return listed


def module_results(name):
    """Counts per status of one module's last run, and the survivors tests/mutation-equivalents.txt does not
    explain; None before any run."""
    status = statuses(name)
    if not status:
        return None
    listed = equivalents()
    values = list(status.values())
    counts = {key: values.count(key) for key in ("killed", "survived", "timeout", "no tests", "not checked")}
    counts["other"] = len(values) - sum(counts.values())  # segfaults, suspicious ones: unexplained too
    counts["mutants"] = len(values)
    counts["equivalent"] = sum(status[m] == "survived" for m in listed if m in status)
    counts["score"] = round((counts["killed"] + counts["timeout"]) / len(values), 4)
    counts["unexplained"] = sorted(m for m, s in status.items() if s not in ("killed", "timeout") and m not in listed)
    prefix = MODULES[name][0][:-3].replace("/", ".") + "."
    counts["stale_equivalents"] = sorted(m for m in listed if m.startswith(prefix) and status.get(m) != "survived")
    return counts


def this_run():
    """When and where a module's run happened, for its row: the date, the cores, the CPU, and bfloat16 if it has it."""
    import datetime

    from mnist_cnn.machine import cpu_has_bf16, describe
    machine = describe()
    cpu = machine["cpu"].replace("(R)", "").replace("(TM)", "")
    bf16 = ", native bfloat16" if cpu_has_bf16() else ""
    return f"{datetime.date.today().isoformat()}, {machine['cores']}-core {cpu}{bf16}"


def write_report(seconds):
    """Merge this run's module results into bench/results/mutation.json and render docs/mutation-report.md."""
    previous = {}
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            previous = json.load(f)["modules"]
    modules = {}
    for name in MODULES:
        counts = module_results(name)
        if counts is None:
            if name in previous:
                modules[name] = previous[name]
            continue
        counts["seconds"] = round(seconds[name]) if name in seconds else previous.get(name, {}).get("seconds")
        counts["run"] = this_run() if name in seconds else previous.get(name, {}).get("run")
        if "before" in previous.get(name, {}):  # the first measure, kept for comparison
            counts["before"] = previous[name]["before"]
        modules[name] = counts
    from importlib.metadata import version

    with open(RESULTS + ".tmp", "w") as f:
        json.dump({"tool": f"mutmut {version('mutmut')}", "target": TARGET, "modules": modules}, f, indent=1)
        f.write("\n")
    os.replace(RESULTS + ".tmp", RESULTS)
    with open(REPORT + ".tmp", "w") as f:
        f.write(render(modules))
    os.replace(REPORT + ".tmp", REPORT)
    return modules


def render(modules):
    """The markdown report: one row per module."""
    lines = ["# Mutation report", "",
             "Written by `python -m tools.mutation` ([Development](development.md#mutation-testing)); "
             "mutmut, one mutant at a time. *score* is (killed + timed out) / mutants; "
             "*equivalent* survivors are listed with their reason in `tests/mutation-equivalents.txt`; *seconds* is "
             "the wall time of the module's last run (all its mutants, or with `--survivors` only those the run "
             "before left alive), often beside other jobs; *last run* says when and on what CPU (no date: before "
             "2026-12-02, on a 2-core CPU).", "",
             "| module | mutants | killed | timed out | survived | equivalent | no tests | score | seconds "
             "| last run |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, c in modules.items():
        lines.append(f"| {MODULES[name][0]} | {c['mutants']} | {c['killed']} | {c['timeout']} | {c['survived']} | "
                     f"{c['equivalent']} | {c['no tests']} | {c['score']:.1%} | {c['seconds'] or '-'} | "
                     f"{c.get('run') or '-'} |")
    missing = [MODULES[name][0] for name in MODULES if name not in modules]
    if missing:
        lines += ["", "Not run yet: " + ", ".join(f"`{path}`" for path in missing) + "."]
    before = {name: c["before"] for name, c in modules.items() if "before" in c}
    if before:
        lines += ["", "Before the tests that mutation testing led to (same tool and settings, the tests as they were):",
                  "", "| module | mutants | killed | timed out | survived | no tests | score | seconds |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {MODULES[name][0]} | {b['mutants']} | {b['killed']} | {b['timeout']} | {b['survived']} | "
                  f"{b['no tests']} | {b['score']:.1%} | {b['seconds'] or '-'} |" for name, b in before.items()]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", metavar="module",
                        help=f"modules to test (default: all): {', '.join(MODULES)}")
    parser.add_argument("--report", action="store_true", help="only rewrite the report from the last results")
    parser.add_argument("--fresh", action="store_true", help="forget earlier results of these modules first")
    parser.add_argument("--survivors", action="store_true",
                        help="run again only the mutants the last run did not kill (after adding tests)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.modules if name not in MODULES]
    if unknown:
        parser.error(f"unknown module {unknown[0]!r}; choose from {', '.join(MODULES)}")
    names = args.modules or list(MODULES)
    seconds = {}
    for name in [] if args.report else names:
        if args.fresh:
            shutil.rmtree(os.path.join(WORK, name), ignore_errors=True)
        seconds[name] = run_module(name, args.survivors)
        write_report(seconds)  # after each module: a long run stopped halfway keeps what it measured
    modules = write_report(seconds)
    failed = False
    for name in names:
        c = modules.get(name)
        if c is None:
            print(f"{name}: not run yet")
            continue
        print(f"{name}: {c['score']:.1%} of {c['mutants']} killed, {len(c['unexplained'])} unexplained")
        for mutant in c["unexplained"]:
            print(f"  {mutant}")
        for mutant in c["stale_equivalents"]:
            print(f"  listed as equivalent but not a survivor: {mutant}")
        failed |= c["score"] < TARGET or bool(c["unexplained"]) or bool(c["stale_equivalents"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
