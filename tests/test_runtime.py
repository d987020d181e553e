"""Process tuning (service/runtime.py): glibc accepts the malloc options, OpenMP defaults never override."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from service.runtime import OPENMP_DEFAULTS, apply_openmp_defaults


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_accepts_every_malloc_option():
    # In a child process: the options are process-wide and this one runs the rest of the tests.
    # glibc answers 0 to an option it refuses, which would silently undo the tuning.
    code = "from service.runtime import tune_malloc; print(tune_malloc())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


def test_openmp_defaults_leave_a_users_value_alone(monkeypatch):
    name = next(iter(OPENMP_DEFAULTS))
    monkeypatch.setenv(name, "7")
    apply_openmp_defaults()

    assert os.environ[name] == "7"
    monkeypatch.delenv(name)
    apply_openmp_defaults()
    assert os.environ[name] == OPENMP_DEFAULTS[name]
