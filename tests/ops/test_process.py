"""Process tuning (service/ops/process.py): glibc accepts the malloc options, OpenMP defaults never override."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from service.ops.process import OPENMP_DEFAULTS, apply_openmp_defaults


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="needs glibc: mallopt is glibc's")
def test_glibc_accepts_the_documented_malloc_options():
    # In a child process: the options are process-wide and this one runs the rest of the tests.
    # glibc answers 0 to a value it refuses; docs/performance.md and process.py document the first choices.
    code = "from service.ops.process import tune_malloc; print(sorted(tune_malloc().items()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str([("M_ARENA_MAX", 2), ("M_MMAP_THRESHOLD", 256 << 20), ("M_TRIM_THRESHOLD", 32 << 20)])


def test_openmp_defaults_leave_a_users_value_alone(monkeypatch):
    name = next(iter(OPENMP_DEFAULTS))
    monkeypatch.setenv(name, "7")
    apply_openmp_defaults()

    assert os.environ[name] == "7"
    monkeypatch.delenv(name)
    apply_openmp_defaults()
    assert os.environ[name] == OPENMP_DEFAULTS[name]
