"""How a stage runs (mnist_cnn/runner.py): which process its life is tied to."""
import os
import subprocess
import sys

from conftest import CODE_ENV

REPORT = "from mnist_cnn.runner import _watched_parent; print(_watched_parent()[0])"


def test_a_stage_is_tied_to_dvc_through_the_shell_dvc_runs_it_in():
    """dvc repro runs each cmd as `sh -c CMD`; dash waits for the command instead of becoming it."""
    env = {**os.environ, **CODE_ENV}
    direct = subprocess.run([sys.executable, "-c", REPORT], capture_output=True, text=True, env=env, check=True)
    assert int(direct.stdout) == os.getpid()  # started by this process: tied to it
    through_shell = subprocess.run(["/bin/sh", "-c", f'"{sys.executable}" -c "{REPORT}"; true'],
                                   capture_output=True, text=True, env=env, check=True)
    assert int(through_shell.stdout) == os.getpid()  # tied to the shell's parent, not to the shell
