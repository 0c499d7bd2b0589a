"""How a stage runs (mnist_cnn/runner.py): which process its life is tied to."""
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import CODE_ENV
from mnist_cnn import runner

REPORT = "from mnist_cnn.runner import _watched_parent; print(_watched_parent()[0])"


def test_a_stage_is_tied_to_dvc_through_the_shell_dvc_runs_it_in():
    """dvc repro runs each cmd as `sh -c CMD`; dash waits for the command instead of becoming it."""
    env = {**os.environ, **CODE_ENV}
    direct = subprocess.run([sys.executable, "-c", REPORT], capture_output=True, text=True, env=env, check=True)
    assert int(direct.stdout) == os.getpid()  # started by this process: tied to it
    through_shell = subprocess.run(["/bin/sh", "-c", f'"{sys.executable}" -c "{REPORT}"; true'],
                                   capture_output=True, text=True, env=env, check=True)
    assert int(through_shell.stdout) == os.getpid()  # tied to the shell's parent, not to the shell


LOGGING_MAIN = """
import os, sys
from mnist_cnn.errors import UserError
from mnist_cnn.runner import run

def main(argv):
    # what TensorFlow's C++ code and LiteRT write to fd 2 themselves, between lines of our own
    os.write(2, b"E0000 00:00:1796033037.092479   23491 node_def_util.cc:682] NodeDef mentions attribute "
                b"use_unbounded_threadpool which is not in the op definition\\n")
    print("train: our own line", file=sys.stderr, flush=True)
    os.write(2, b"W0000 00:00:1796033037.115855   23491 dump_mlir_util.cc:269] disabling MLIR crash reproducer\\n"
                b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n")
    os.write(2, b"E1130 10:02:35.000001 7 ok.cc:1] a dated one\\n")
    if argv:
        raise UserError("the one line")
    os.write(2, b"our last words, unterminated")  # still there after the process ends

run(main)
"""


def test_a_run_prints_none_of_tensorflows_own_log_lines_on_stderr():
    env = {**os.environ, **CODE_ENV, "TF_CPP_MIN_LOG_LEVEL": "3"}
    quiet = subprocess.run([sys.executable, "-c", LOGGING_MAIN], capture_output=True, text=True, env=env)
    assert quiet.returncode == 0 and quiet.stderr == "train: our own line\nour last words, unterminated"
    failed = subprocess.run([sys.executable, "-c", LOGGING_MAIN, "fail"], capture_output=True, text=True, env=env)
    assert failed.returncode == 1 and failed.stderr == "train: our own line\nerror: the one line\n"
    # TF_CPP_MIN_LOG_LEVEL=0, TensorFlow's "show me everything": every line, in order
    verbose = subprocess.run([sys.executable, "-c", LOGGING_MAIN], capture_output=True, text=True,
                             env={**env, "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert [line[:12] for line in verbose.stderr.splitlines()] == [
        "E0000 00:00:", "train: our o", "W0000 00:00:", "INFO: Create", "E1130 10:02:", "our last wor"]


SLEEPER = """
import sys, time
from mnist_cnn.runner import run

def main(argv):
    time.sleep(float(argv[0]))
    print("finished", flush=True)

run(main, command=sys.argv[2] if len(sys.argv) > 2 else None)
"""


@pytest.mark.ci_prerequisite
def test_a_stage_started_by_pid_1_runs_to_its_end():
    """systemd, `docker run --init`, a container whose entrypoint is a shell: the parent is PID 1 from the start,
    which is not a parent that died (a stage read it as one, and quit at once with rc 130)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("a PID namespace needs root and unshare")
    # bash is PID 1 of the new namespace and stays the stage's parent (`; true` keeps it from exec'ing python)
    result = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "bash", "-c",
                             f'"{sys.executable}" -c "$0" 0.5; true', SLEEPER],
                            capture_output=True, text=True, env={**os.environ, **CODE_ENV}, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "finished\n", "")


@pytest.mark.stage
def test_a_stage_whose_parent_dies_stops_and_a_command_carries_on(tmp_path):
    """The parent (a shell standing in for `dvc repro`) is killed while its child runs: a stage stops within a
    second or so with its interrupted line; predict or serve, run by a user, are not tied to their parent."""
    import signal
    import time
    announcing = SLEEPER.replace("def main(argv):\n", "def main(argv):\n    print('running', flush=True)\n")
    logs, parents = {}, {}
    # the stage would sleep 60 s: only its parent's death ends it early; the command sleeps 3 s and finishes
    for name, seconds, command in (("stage", 60, ""), ("command", 3, "serve")):
        logs[name] = tmp_path / f"{name}.log"
        parents[name] = subprocess.Popen(
            ["bash", "-c", f'"{sys.executable}" -c "$0" {seconds} {command} > "{logs[name]}" 2>&1; true', announcing],
            env={**os.environ, **CODE_ENV}, start_new_session=True)

    def wait_for(name, text, timeout=20):
        deadline = time.time() + timeout
        while text not in (logs[name].read_text() if logs[name].exists() else ""):
            assert time.time() < deadline, (name, text, logs[name].read_text())
            time.sleep(0.05)
        return logs[name].read_text()

    for name, parent in parents.items():
        wait_for(name, "running\n")  # the child is running and tied to bash
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
    started = time.time()
    assert wait_for("stage", "interrupted").startswith("running\ninterrupted: this run wrote none of its outputs")
    assert time.time() - started < 10  # not the 60 s of its sleep
    assert wait_for("command", "finished\n") == "running\nfinished\n"


def test_a_command_interrupted_says_so_without_the_stages_advice():
    result = subprocess.run([sys.executable, "-c", SLEEPER.replace("time.sleep(float(argv[0]))",
                                                                   "raise KeyboardInterrupt"), "0", "predict"],
                            capture_output=True, text=True, env={**os.environ, **CODE_ENV})
    assert (result.returncode, result.stderr) == (130, "predict: interrupted\n")


@pytest.mark.stage
def test_quiet_tensorflow_keeps_what_keras_imports_for_nothing_out_and_importable_after():
    """scikit-learn, SciPy and matplotlib stay out of TensorFlow's import (a third of its time,
    bench/startup.py), and import as usual afterwards; one imported before is left as it was."""
    code = textwrap.dedent("""
        import sys
        import matplotlib
        from mnist_cnn.runner import quiet_tensorflow
        quiet_tensorflow()
        import keras
        print(sorted(name for name in ("sklearn", "scipy.stats", "matplotlib") if name in sys.modules))
        from sklearn.metrics import accuracy_score
        print(accuracy_score([0, 1], [0, 1]), sys.modules["matplotlib"] is matplotlib)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, **CODE_ENV})
    assert result.stdout.splitlines() == ["['matplotlib']", "1.0 True"], result.stderr


@pytest.fixture
def stage_handlers(monkeypatch):
    """The runner's SIGINT handler installed in this process, as run() installs it, with no signal received yet."""
    monkeypatch.setattr(runner, "RECEIVED", [])
    previous = signal.signal(signal.SIGINT, runner._interrupt)
    yield
    signal.signal(signal.SIGINT, previous)


def test_inside_deferred_interrupts_a_signal_waits_for_a_safe_point_and_a_second_one_stops_at_once(stage_handlers):
    """The first SIGINT is recorded and the code goes on until it asks (stop_if_interrupted, as training does after
    each step) or leaves the block; a second one raises where it lands."""
    steps = []
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):
        with runner.deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            for step in range(3):  # Python runs the handler within these lines: it returns
                steps.append(step)
            assert runner.RECEIVED == ["SIGINT"]
            runner.stop_if_interrupted()
            steps.append("not reached")
    assert steps == [0, 1, 2]

    runner.RECEIVED.clear()
    with pytest.raises(KeyboardInterrupt):
        with runner.deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("went on")
    assert steps[-1] == "went on"  # raised on the way out, not in the block

    runner.RECEIVED.clear()
    with runner.deferred_interrupts():
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
        runner.RECEIVED.clear()  # handled: leave the block quietly
    with pytest.raises(KeyboardInterrupt):  # outside the block: at once, as before
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            pass
