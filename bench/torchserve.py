"""TorchServe 0.12, run beside layertap in the same benchmark, on the same weights and photos.

``ensure_venv()`` makes TorchServe its own venv under ``bench-results/torchserve-venv`` (TorchServe
and its model archiver; torch, torchvision, numpy and orjson come from the project's ``.venv``
through a ``.pth`` file, so both servers run the same builds). ``TorchServe`` archives
bench/torchserve_handler.py with a ResNet18 state dict and serves it with server-side batching
(16, 5 ms); its workers get the same cores per worker as layertap's. TorchServe needs Java 11 or
later (``apt-get install openjdk-17-jre-headless`` on Debian).

    python -m bench.torchserve   # start it, check one answer, print its throughput at 16 clients
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import requests

from service.core.hardware import available_cores

ROOT = Path(__file__).resolve().parents[1]
VERSION = "0.12.0"
HANDLER = Path(__file__).with_name("torchserve_handler.py")
BATCH_SIZE, MAX_BATCH_DELAY_MS = 16, 5


def ensure_venv(folder: Path) -> Path:
    """A venv with TorchServe, reusing this interpreter's torch; returns its ``bin`` folder."""
    bin_dir = folder / "bin"
    if not (bin_dir / "torchserve").exists():
        if shutil.which("java") is None:
            raise RuntimeError("TorchServe needs Java 11 or later: apt-get install openjdk-17-jre-headless")
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        pip = [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, f"torchserve=={VERSION}", f"torch-model-archiver=={VERSION}"], check=True)
        site = subprocess.run(
            [str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        Path(site, "layertap-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return bin_dir


class TorchServe:
    """One TorchServe with one model (``avgpool``), ``workers`` workers of ``threads`` torch threads each."""

    version = VERSION

    def __init__(self, folder: Path, workers: int = 1, threads: int | None = None, dtype: str = "float32"):
        self.folder = folder
        self.bin = ensure_venv(folder.parent / "torchserve-venv")
        self.workers = workers
        self.threads = threads or max(1, available_cores() // workers)
        self.dtype = dtype
        self.port = _free_port()
        self.base_url, self.path = f"http://127.0.0.1:{self.port}", "/predictions/avgpool"
        self._process: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> None:
        store = self.folder / "model-store"
        shutil.rmtree(store, ignore_errors=True)
        store.mkdir(parents=True)
        save_seeded_weights(self.folder / "weights.pt")
        subprocess.run(
            [str(self.bin / "torch-model-archiver"), "--model-name", "avgpool", "--version", "1.0",
             "--handler", str(HANDLER), "--serialized-file", str(self.folder / "weights.pt"),
             "--export-path", str(store), "--force"],
            check=True,
        )  # fmt: skip
        config = self.folder / "config.properties"
        config.write_text(
            "\n".join(
                [
                    f"inference_address=http://127.0.0.1:{self.port}",
                    f"management_address=http://127.0.0.1:{_free_port()}",
                    f"metrics_address=http://127.0.0.1:{_free_port()}",
                    "disable_token_authorization=true",
                    "enable_model_api=false",
                    "install_py_dep_per_model=false",
                    f"default_workers_per_model={self.workers}",
                    "job_queue_size=1000",
                    'models={"avgpool": {"1.0": {"marName": "avgpool.mar", '
                    f'"minWorkers": {self.workers}, "maxWorkers": {self.workers}, "batchSize": {BATCH_SIZE}, '
                    f'"maxBatchDelay": {MAX_BATCH_DELAY_MS}, "responseTimeout": 120}}}}}}',
                    "load_models=avgpool.mar",
                ]
            )
            + "\n"
        )
        tmp = self.folder / "tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        env = {
            **os.environ,
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "TS_TORCH_THREADS": str(self.threads),
            "TS_DTYPE": self.dtype,
            "OMP_NUM_THREADS": str(self.threads),
            "LOG_LOCATION": str(self.folder / "logs"),
            "TMPDIR": str(tmp),  # TorchServe keeps its pid file there: one per instance, none left behind
            "METRICS_LOCATION": str(self.folder / "logs"),
        }
        log = (self.folder / "torchserve.log").open("wb")
        self._process = subprocess.Popen(
            [str(self.bin / "torchserve"), "--start", "--foreground", "--ncs", "--model-store", str(store),
             "--ts-config", str(config), "--disable-token-auth"],
            cwd=self.folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"TorchServe exited; see {self.folder / 'torchserve.log'}")
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/ping", timeout=2).json().get("status") == "Healthy":
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"TorchServe not healthy within {timeout:g} s; see {self.folder / 'torchserve.log'}")

    def embed(self, image: bytes) -> list[float]:
        response = requests.post(
            self.base_url + self.path, data=image, headers={"Content-Type": "application/octet-stream"}, timeout=60
        )
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        """Stop the launcher and its Java server (the whole process group), and wait until all are gone."""
        if self._process is None:
            return
        group = self._process.pid
        for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                self._process.poll()
                try:
                    os.killpg(group, 0)  # anyone left in the group?
                except ProcessLookupError:
                    return
                time.sleep(0.2)


def save_seeded_weights(path: Path) -> None:
    """ResNet18's state dict with the weights layertap serves under ``LAYERTAP_WEIGHTS=random`` (seed 0)."""
    import torch

    from service.core.settings import DEFAULT_MODEL_REPOSITORY
    from service.modeling.build import build_model
    from service.modeling.entries import load_entry
    from service.modeling.weights import resolve_weights

    entry = load_entry(DEFAULT_MODEL_REPOSITORY, "resnet18")
    torch.save(build_model(entry, resolve_weights("random", entry)).state_dict(), path)


def _free_port() -> int:
    from stress.server import free_port

    return free_port()


def main() -> None:
    import numpy as np

    from stress.load import drive, raw_posts
    from stress.server import sample_photos

    folder = ROOT / "bench-results" / "torchserve"
    folder.mkdir(parents=True, exist_ok=True)
    server = TorchServe(folder)
    server.start()
    try:
        photos = sample_photos()
        print("one embedding:", np.asarray(server.embed(photos[0])).shape)
        latencies, errors = drive(server.base_url, raw_posts(server.path, photos), 16, 10)
        print(f"16 clients: {len(latencies) / 10:.1f} img/s, errors {errors}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
