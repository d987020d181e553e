"""The CI skip audit: under ``CI=true`` a run that skipped what it should have run fails.

A test that cannot run must not pass for one that did. Skips are allowed only where something
is truly absent from the machine, and their reasons must start with one of :data:`ALLOWED_SKIPS`.
Any other skip fails the run under CI, wherever it was raised:

- while running a test (``pytest.skip``, a ``skipif`` mark, a parametrized case's mark);
- while collecting a module (a module-level ``pytest.skip`` or ``pytest.importorskip``, which
  would otherwise make a whole file vanish in silence);
- and an ``xfail`` that passes (the bug it marked is gone, or the test no longer tests it).

Outside CI the same list is printed as a warning section. A plugin of its own (registered by
tests/conftest.py) so that tests/test_skip_audit.py can run it on small made-up suites.

Ray is not on the list: it is a dev dependency (pyproject.toml), installed wherever the suite
must run, so a Ray test that cannot import Ray fails rather than skips.
"""

from __future__ import annotations

import os

import pytest

ALLOWED_SKIPS = (
    "needs Chromium",
    "needs the ImageNet checkpoint",
    "needs CUDA",
    "needs no CUDA",
    "needs AVX2",
    "needs glibc",
    "needs a container engine",
    "needs free disk",  # for the container image: tests/container/harness.py, NEEDED_FREE_GIB_CUDA_TORCH
)


def _reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


class SkipAudit:
    """Lists the skips whose reason is not in ALLOWED_SKIPS, and xfails that passed; under CI they turn a
    green run red."""

    def __init__(self):
        self.unexpected: list[str] = []

    def _check(self, report) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = _reason(report)
            if not reason.startswith(ALLOWED_SKIPS):
                self.unexpected.append(f"{report.nodeid or report.fspath}: skipped: {reason}")
        elif report.passed and hasattr(report, "wasxfail") and report.when == "call":
            self.unexpected.append(f"{report.nodeid}: passed, but is marked xfail ({report.wasxfail})")

    def pytest_runtest_logreport(self, report) -> None:
        self._check(report)

    def pytest_collectreport(self, report) -> None:
        self._check(report)

    def pytest_sessionfinish(self, session, exitstatus) -> None:
        green = (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)  # a whole suite skipped at collection
        if self.unexpected and os.environ.get("CI") and exitstatus in green:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.unexpected:
            verdict = "fail the run under CI" if os.environ.get("CI") else "would fail the run under CI"
            terminalreporter.section(f"skips that {verdict}", red=True)
            for line in self.unexpected:
                terminalreporter.write_line(line)


def pytest_configure(config) -> None:
    config.pluginmanager.register(SkipAudit(), "layertap-skip-audit")
