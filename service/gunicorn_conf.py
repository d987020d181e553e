"""gunicorn configuration, derived from the same typed settings as the app.

Used as ``gunicorn -c python:service.gunicorn_conf``. The master process never imports torch:
it checks the weights in a short-lived subprocess (so a misconfiguration stops the service at
start with one message, and ImageNet weights are downloaded once rather than by every worker),
then forks workers that each build their own model in ``create_app()``.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from gunicorn.workers.base import Worker

from service.core.hardware import cuda_expected
from service.core.settings import Settings
from service.frontends.http.upload_gate import defer_continue
from service.frontends.http.worker import GRACEFUL_TIMEOUT_S
from service.ops import cores
from service.ops.logs import gunicorn_logconfig
from service.ops.process import apply_openmp_defaults, tune_malloc

# Not imported from service.ops.metrics: prometheus_client must not be imported in the master before
# this variable is set, or forked workers would inherit its single-process mode.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

_settings = Settings()

# Set here, in the master, so that every worker inherits them before it imports torch.
apply_openmp_defaults()
# Each worker writes its metrics under this folder; /metrics sums them (service/ops/metrics.py). A folder
# the service made is its own, emptied at start and removed at exit; one the operator named is only used.
_OWN_METRICS_DIR = MULTIPROCESS_ENV not in os.environ
if _OWN_METRICS_DIR:
    os.environ[MULTIPROCESS_ENV] = tempfile.mkdtemp(prefix="layertap-metrics-")

wsgi_app = "service.app:create_app()"
bind = [f"[{_settings.host}]:{_settings.port}" if ":" in _settings.host else f"{_settings.host}:{_settings.port}"]
workers = _settings.workers
# gthread, with request heads gathered off the thread pool and deadlines on body reads (the module says why).
worker_class = "service.frontends.http.worker.GuardedThreadWorker"
threads = _settings.threads
# Each worker loads its own model after fork: never preload torch into the master.
preload_app = False
# One control socket per user would collide between several servers on one host (tests, replicas).
control_socket_disable = True
timeout = max(30, int(_settings.request_timeout_s) + 10)
graceful_timeout = GRACEFUL_TIMEOUT_S
keepalive = 5
# Long enough for any real layer list, so that a bad one gets our JSON error, not gunicorn's text.
limit_request_line = 8190
# The app writes one access line per request itself (service/app.py), with its request id.
accesslog = None
errorlog = "-"
loglevel = _settings.log_level
logconfig_dict = gunicorn_logconfig(_settings.log_level, _settings.log_format)


def on_starting(server) -> None:
    """Check the weights (fetching imagenet ones) and the device before forking; stop with one message if that fails."""
    metrics_dir = os.environ[MULTIPROCESS_ENV]
    if _OWN_METRICS_DIR:  # created empty above; an operator's folder is theirs to clear between runs
        os.makedirs(metrics_dir, exist_ok=True)
    else:
        _remove_metric_files(metrics_dir)  # counts from an earlier run must not leak into this one
    check = subprocess.run(
        [sys.executable, "-m", "service", "weights", "check"], capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        lines = (check.stderr or check.stdout).strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"the weights check failed with exit code {check.returncode}")
    server.log.info(check.stdout.strip())


def on_exit(server) -> None:  # noqa: ARG001 - gunicorn's hook signature
    """Remove the metrics folder the service made (never one the operator named)."""
    if _OWN_METRICS_DIR:
        shutil.rmtree(os.environ[MULTIPROCESS_ENV], ignore_errors=True)


def _remove_metric_files(folder: str) -> None:
    """prometheus_client's own files in ``folder`` (``*.db``), and nothing else."""
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.endswith(".db"):
                os.remove(os.path.join(folder, name))


# One page the master maps and every worker it forks shares: which workers have work in hand (service/ops/cores.py).
_worker_page: cores.WorkerPage | None = None


def pre_fork(server, worker) -> None:  # noqa: ARG001 - gunicorn's hook signature
    """A slot in the shared page for the worker about to be forked (the page is mapped once, in the master)."""
    global _worker_page
    if _worker_page is None:
        _worker_page = cores.WorkerPage()
    worker.core_slot = _worker_page.assign()


def post_fork(server, worker) -> None:  # noqa: ARG001 - gunicorn's hook signature
    """Per-worker memory tuning, before the worker imports torch; this worker's slot in the shared page."""
    cores.join(_worker_page, worker.core_slot)
    applied = tune_malloc()  # see service/ops/process.py
    worker.log.debug("malloc options applied: %s", applied or "none (not glibc)")
    # On the CPU, keep torch from loading Triton, a GPU kernel compiler (~80 MB).
    if not cuda_expected(_settings.device):
        sys.modules.setdefault("triton", None)  # `import triton` now fails, and torch carries on without it


def pre_request(worker, req) -> None:  # noqa: ARG001 - gunicorn's hook signature
    """Leave ``Expect: 100-continue`` to the app, so that a refusal comes before the upload
    (service/frontends/http/upload_gate.py)."""
    defer_continue(req)


def post_worker_init(worker) -> None:
    """Accept connections only once the model is warm; on SIGTERM, turn readiness to 503 before stopping;
    on Ctrl-C, quit once.

    Waiting here keeps a worker that is still loading (at start, or replacing one that died) off
    the shared socket, so its siblings answer instead of it returning 503s. A model that fails to
    load stops the worker as a boot failure, which stops gunicorn with the reason in the log.
    """
    plane = worker.wsgi.extensions["layertap.dataplane"]
    while not plane.wait_ready(1.0):
        if plane.state == "failed":
            worker.log.error("model failed to load: %s", plane.failure)
            sys.exit(3)  # gunicorn's WORKER_BOOT_ERROR: the master halts instead of respawning forever
        worker.notify()  # still alive: loading a large model may outlast gunicorn's worker timeout
    stop_gracefully = worker.handle_exit

    def on_sigterm(signum, frame):
        plane.drain()
        stop_gracefully(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    # Quick shutdown (Ctrl-C, SIGQUIT) as gunicorn's base worker does it, without gthread's addition:
    # shutting its thread pool down from the handler takes the pool's lock, which the interrupted
    # main thread may hold (it submits every request under it) or an earlier run of the handler does
    # (Ctrl-C reaches the worker twice: from the terminal, then as SIGQUIT from the master). Either way
    # the handler never returns (CPython issue 121649) and the worker hangs until the master kills it,
    # graceful_timeout later. The pool's idle threads are joined at exit all the same.
    quit_once = first_call_only(functools.partial(Worker.handle_quit, worker))
    signal.signal(signal.SIGINT, quit_once)
    signal.signal(signal.SIGQUIT, quit_once)


def first_call_only(handler):
    """``handler`` for the first signal; later ones (the process is already quitting) are ignored."""
    called = False

    def once(signum, frame):
        nonlocal called
        if not called:
            called = True
            handler(signum, frame)

    return once


def child_exit(server, worker) -> None:  # noqa: ARG001 - gunicorn's hook signature
    """A worker's live gauges (queue depth) and its byte in the shared page must not outlive it."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
    if _worker_page is not None:
        _worker_page.free(getattr(worker, "core_slot", None))
