"""gunicorn configuration, derived from the same typed settings as the app.

Used as ``gunicorn -c python:service.gunicorn_conf``. The master process never imports torch:
it checks the weights in a short-lived subprocess (so a misconfiguration stops the service at
start with one message, and ImageNet weights are downloaded once rather than by every worker),
then forks workers that each build their own model in ``create_app()``.
"""

from __future__ import annotations

import os
import subprocess
import sys

from service.settings import Settings, apply_openmp_defaults

_settings = Settings()

# Set here, in the master, so that every worker inherits them before it imports torch.
apply_openmp_defaults()

wsgi_app = "service.app:create_app()"
bind = [f"[{_settings.host}]:{_settings.port}" if ":" in _settings.host else f"{_settings.host}:{_settings.port}"]
workers = _settings.workers
worker_class = "gthread"
threads = _settings.threads
# Each worker loads its own model after fork: never preload torch into the master.
preload_app = False
# One control socket per user would collide between several servers on one host (tests, replicas).
control_socket_disable = True
timeout = max(30, int(_settings.request_timeout_s) + 10)
graceful_timeout = 30
keepalive = 5
accesslog = "-"
errorlog = "-"
loglevel = _settings.log_level
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'


def post_fork(server, worker) -> None:  # noqa: ARG001 - gunicorn's hook signature
    """In a worker that will run on the CPU, keep torch from loading Triton (a GPU kernel compiler, ~80 MB)."""
    if _settings.device == "cpu" or (_settings.device == "auto" and not os.path.exists("/dev/nvidiactl")):
        sys.modules.setdefault("triton", None)  # `import triton` now fails, and torch carries on without it


def on_starting(server) -> None:
    """Check the weights (fetching imagenet ones) and the device before forking; stop with one message if that fails."""
    check = subprocess.run(
        [sys.executable, "-m", "service.weights", "check"], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        lines = (check.stderr or check.stdout).strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"the weights check failed with exit code {check.returncode}")
    server.log.info(check.stdout.strip())
