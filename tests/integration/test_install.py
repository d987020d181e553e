"""Both distributions install on their own: the client without torch, the server without the source tree.

Each test makes a fresh virtual environment and installs from a copy of the repository's files,
then runs from another folder, so nothing of the checkout can be imported by accident and
nothing is written into it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import requests
from layertap_client import LayertapClient

from stress.server import start_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NOT_SOURCES = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
# The environment of the pytest process, less anything that could point back into the checkout.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def run(*command, cwd: Path) -> str:
    result = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=CLEAN_ENV, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout.strip()


def fresh_venv(path: Path) -> Path:
    """A new virtual environment (pip only); returns its python."""
    run(sys.executable, "-m", "venv", path, cwd=path.parent)
    return path / "bin" / "python"


def pip_install(python: Path, *args) -> None:
    run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args, cwd=python.parent)


def test_client_installs_without_torch_and_embeds_a_folder(server, photos, tmp_path):
    source = shutil.copytree(ROOT / "client", tmp_path / "client-source", ignore=NOT_SOURCES)
    python = fresh_venv(tmp_path / "venv")
    pip_install(python, source)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = "import importlib.util as u; print([u.find_spec(m) is None for m in ('torch', 'torchvision', 'service')])"
    assert run(python, "-c", probe, cwd=elsewhere) == "[True, True, True]", "the client must not pull in the server"

    folder = tmp_path / "pictures"
    folder.mkdir()
    for name, data in photos.items():
        (folder / name).write_bytes(data)
    out = tmp_path / "features.npz"
    layertap = python.with_name("layertap")
    run(
        layertap, "embed", folder, "--url", server.url, "--out", out, "--layers", "avgpool,fc", "--quiet", cwd=elsewhere
    )
    with np.load(out) as data:
        assert data["paths"].tolist() == sorted(photos)
        assert data["avgpool"].shape == (4, 512) and data["fc"].shape == (4, 1000)
        direct = LayertapClient(server.url).features([photos[name] for name in sorted(photos)], ["avgpool"], pool="avg")
        np.testing.assert_allclose(data["avgpool"], direct["avgpool"], rtol=1e-5, atol=1e-6)


def test_server_installs_without_the_source_tree(tmp_path, weights_file, photos):
    """`pip install .` (not editable), then the server finds its model repository, debug page and int8 photos."""
    source = tmp_path / "server-source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("service", "models"):
        shutil.copytree(ROOT / folder, source / folder, ignore=NOT_SOURCES)
    python = fresh_venv(tmp_path / "venv")
    # torch and the other dependencies come from the project's .venv (a second copy would be 5.5 GB):
    # a .pth file puts its site-packages on the new venv's path, behind the venv's own.
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path))
    (site / "zz-layertap-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    pip_install(python, "--no-deps", source)
    shutil.rmtree(source)  # nothing left to fall back on

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert run(python, "-c", "import service; print(service.__file__)", cwd=elsewhere).startswith(str(site))
    server = start_server(
        tmp_path / "logs",
        {
            "LAYERTAP_WEIGHTS": str(weights_file),
            "LAYERTAP_PRECISION": "int8",  # calibrates on the photos shipped in the wheel
            "LAYERTAP_INT8_CACHE_DIR": str(tmp_path / "int8-cache"),
        },
        command=[str(python), "-m", "gunicorn", "-c", "python:service.gunicorn_conf"],
        cwd=elsewhere,
    )
    try:
        server.wait_ready(180)
        info = requests.get(f"{server.url}/info", timeout=5).json()
        assert info["model"] == "resnet18" and info["precision"] == "int8"
        page = requests.get(f"{server.url}/", timeout=5)
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert requests.get(f"{server.url}/ui/app.js", timeout=5).status_code == 200
        response = requests.post(
            f"{server.url}/features", data=photos["rocket.jpg"], headers={"Content-Type": "image/jpeg"}, timeout=30
        )
        assert response.status_code == 200, response.text
    finally:
        server.stop()
    # Calibrated once, before fork, by the master's weights check (the same data plane a worker builds, on the
    # 4 sample photos shipped in the wheel); the worker then loads the cached int8 model.
    (cached,) = (tmp_path / "int8-cache").glob("resnet18-int8-*.pt")
    assert f"int8 model loaded from {cached}" in server.log()
