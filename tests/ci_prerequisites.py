"""A pytest plugin (pytest.ini loads it): under CI (CI=true), a skipped test marked ci_prerequisite fails.

.ci/run installs what such a test needs (root for real mounts, Debian's Fashion-MNIST), so a skip
there means the install went wrong, and a line in the summary would hide it.
"""
import os

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and item.get_closest_marker("ci_prerequisite") and os.environ.get("CI") == "true":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where .ci/run provides its prerequisite: {reason}"
