"""Print what the container test measured (build time, image size, stop time) at the end of the run."""

from __future__ import annotations

import json

from tests.container.harness import REPORTS


def pytest_terminal_summary(terminalreporter) -> None:
    if REPORTS:
        terminalreporter.section("container test")
        for report in REPORTS:
            terminalreporter.write_line(json.dumps(report))
