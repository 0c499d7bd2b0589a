"""A pytest plugin (pytest.ini loads it): where .ci/run provides the prerequisites, a skipped ci_prerequisite fails.

.ci/run, running as root, installs what such a test needs (root for real mounts, Debian's Fashion-MNIST and
chromium) and says so with MNIST_CNN_CI_PREREQUISITES=1, so a skip there means the install went wrong, and a
line in the summary would hide it. Elsewhere (a laptop, GitHub's runners, .ci/run without root) nobody
installed them: the test skips with its reason.
"""
import os

import pytest

PROVIDED = "MNIST_CNN_CI_PREREQUISITES"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and item.get_closest_marker("ci_prerequisite") and os.environ.get(PROVIDED) == "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"skipped where .ci/run provides its prerequisite ({PROVIDED}=1): {reason}"
