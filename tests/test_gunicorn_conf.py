"""The gunicorn configuration's own logic (service/gunicorn_conf.py), in a child process: importing it sets
process-wide state (the metrics folder, OpenMP defaults) that the rest of the tests must not inherit."""

from __future__ import annotations

import subprocess
import sys


def test_a_quit_signal_nested_in_the_first_ones_handling_is_ignored(tmp_path):
    """Ctrl-C reaches a worker from the terminal and again from the master; the second, arriving while the
    first is handled, must not run gunicorn's quit handler a second time (it would deadlock)."""
    code = """
from service.gunicorn_conf import first_call_only
calls = []
def quit(signum, frame):
    calls.append(signum)
    once(3, None)  # SIGQUIT from the master, while SIGINT is being handled
once = first_call_only(quit)
once(2, None)
once(3, None)
print(calls)
"""
    env = {"PATH": "/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "[2]"


def test_the_metrics_folder_the_service_made_is_removed_at_exit_and_an_operators_is_kept(tmp_path):
    code = """
import os
from service import gunicorn_conf
folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
made = os.path.isdir(folder)
gunicorn_conf.on_exit(None)
print(made, os.path.isdir(folder))
"""
    env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "True False" and not list(tmp_path.glob("layertap-metrics-*"))
    operators = tmp_path / "metrics"
    operators.mkdir()
    (operators / "notes.txt").write_text("mine")
    env["PROMETHEUS_MULTIPROC_DIR"] = str(operators)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "True True" and (operators / "notes.txt").read_text() == "mine"
