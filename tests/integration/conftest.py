"""Start the real service (gunicorn with its config file) on a loopback port, and stop it with SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "python:service.gunicorn_conf"]


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

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or still booting
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready within {timeout} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
                raise AssertionError(f"server ignored signal {sig} for {timeout} s:\n{self.log()}") from None
        return self.process.returncode


def start_server(tmp_path: Path, env: dict[str, str], command: list[str] | None = None) -> Server:
    port = free_port()
    full_env = {
        **os.environ,
        "LAYERTAP_HOST": "127.0.0.1",
        "LAYERTAP_PORT": str(port),
        "LAYERTAP_DEVICE": "cpu",
        **env,
    }
    log_path = tmp_path / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command or GUNICORN,
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal or container would give it
        )
    return Server(process=process, url=f"http://127.0.0.1:{port}", log_path=log_path)


@pytest.fixture(scope="module")
def server(tmp_path_factory, weights_file):
    tmp_path = tmp_path_factory.mktemp("server")
    server = start_server(
        tmp_path,
        {
            "LAYERTAP_WEIGHTS": str(weights_file),
            "LAYERTAP_MAX_BODY_BYTES": "1000000",
            "LAYERTAP_MAX_PIXELS": "4000000",
            "LAYERTAP_MAX_IMAGES_PER_REQUEST": "8",
        },
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
