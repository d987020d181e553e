"""The CI skip audit (tests/skip_audit.py) fails a ``CI=true`` run that skipped what it should have run.

Each case runs pytest on a made-up suite (plus a second file whose test passes), in a subprocess
with only the audit as a plugin, and reads its exit status: a skip with an unlisted reason,
wherever it is raised, and an xfail that passes turn a green run red under CI; a listed reason
does not; outside CI nothing fails.
"""

from __future__ import annotations

import pytest

from stress.server import ROOT

SUITES = {
    "collection": 'import pytest\npytest.importorskip("no_such_module_anywhere", reason="needs Ray")\n'
    "def test_never_runs():\n    assert False\n",
    "parametrized": "import pytest\n"
    '@pytest.mark.parametrize("n", [1, pytest.param(2, marks=pytest.mark.skip(reason="flaky today"))])\n'
    "def test_case(n):\n    assert n\n",
    "xpass": 'import pytest\n@pytest.mark.xfail(reason="bug 12")\ndef test_fixed():\n    assert True\n',
    "in a fixture": 'import pytest\n@pytest.fixture\ndef thing():\n    pytest.skip("not today")\n'
    "def test_uses(thing):\n    assert thing\n",
}
ALLOWED = 'import pytest\n@pytest.mark.skip(reason="needs CUDA")\ndef test_gpu():\n    assert False\n'


def run(pytester: pytest.Pytester, monkeypatch, source: str, ci: bool) -> pytest.RunResult:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    if ci:
        monkeypatch.setenv("CI", "true")
    else:
        monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(test_suite=source, test_other="def test_passes():\n    assert True\n")
    return pytester.runpytest_subprocess("-p", "tests.skip_audit", "-p", "no:cacheprovider")


@pytest.mark.parametrize("kind", SUITES)
def test_an_unlisted_skip_or_a_passing_xfail_fails_a_ci_run(pytester, monkeypatch, kind):
    result = run(pytester, monkeypatch, SUITES[kind], ci=True)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()
    result.stdout.fnmatch_lines(["*skips that fail the run under CI*"])


@pytest.mark.parametrize("kind", SUITES)
def test_outside_ci_it_only_warns(pytester, monkeypatch, kind):
    result = run(pytester, monkeypatch, SUITES[kind], ci=False)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.stdout.fnmatch_lines(["*skips that would fail the run under CI*"])


def test_a_listed_reason_passes_a_ci_run(pytester, monkeypatch):
    result = run(pytester, monkeypatch, ALLOWED, ci=True)
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    assert "skips that" not in result.stdout.str()
