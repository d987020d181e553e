"""Start the real service (gunicorn with its config file) on a loopback port; used by tests, bench and stress."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from service.core.settings import SAMPLE_PHOTOS

ROOT = Path(__file__).resolve().parents[1]
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "python:service.gunicorn_conf"]


def photo_files() -> list[Path]:
    """The repository's sample photos (``models/photos/``, JPEG and PNG), in name order."""
    return sorted(p for p in SAMPLE_PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def sample_photos() -> list[bytes]:
    """The bytes of :func:`photo_files`."""
    return [p.read_bytes() for p in photo_files()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90, poll: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()[-5000:]}")
            try:
                if requests.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still booting
                pass
            time.sleep(poll)
        raise AssertionError(f"server not ready within {timeout} s:\n{self.log()[-5000:]}")

    def workers(self) -> list[int]:
        master = self.process.pid
        return [int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
                raise AssertionError(f"server ignored signal {sig} for {timeout} s:\n{self.log()[-5000:]}") from None
        return self.process.returncode


def start_server(log_dir: Path, env: dict[str, str], command: list[str] | None = None, cwd: Path = ROOT) -> Server:
    """Start the service on 127.0.0.1 and a free port, its output in ``log_dir``; call wait_ready() next.

    ``command`` defaults to this interpreter's gunicorn with the service's config, run in ``cwd``
    (the repository's root, as ``make run`` does).
    """
    port = free_port()
    full_env = {
        **os.environ,
        "LAYERTAP_HOST": "127.0.0.1",
        "LAYERTAP_PORT": str(port),
        "LAYERTAP_DEVICE": "cpu",
        **env,
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command or GUNICORN,
            cwd=cwd,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal or container would give it
        )
    return Server(process=process, url=f"http://127.0.0.1:{port}", log_path=log_path)


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no {field} for {pid}")
