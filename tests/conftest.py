"""Shared fixtures: a seeded ResNet18 state-dict file, settings, apps, clients and images.

Nothing here needs the network: weights are made from ``resnet18(weights=None)`` with a fixed
seed (batch-norm statistics randomized too, so normalization is not an identity).
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from service.app import create_app
from service.core.settings import DEFAULT_MODEL_REPOSITORY, SAMPLE_PHOTOS, Settings
from service.modeling.entries import load_entry

PHOTOS = ("grace_hopper.jpg", "rocket.jpg", "chelsea.png", "coffee.png")

# The suite's servers run one worker each (the CPU default is two) unless a test asks for more, as the
# two_workers fixture does: several servers share this machine's cores at once, and most tests reason about
# one worker's queue. The sizing rules themselves are tested in tests/core/test_hardware.py.
os.environ.setdefault("LAYERTAP_WORKERS", "1")


# The CI skip audit (tests/skip_audit.py); pytester runs it on made-up suites (tests/test_skip_audit.py).
pytest_plugins = ["tests.skip_audit", "pytester"]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Importing service/gunicorn_conf.py in this process would switch every in-process app's /metrics to
    multiprocess mode in a folder no worker writes (empty answers, far from the import that caused it)."""
    if "service.gunicorn_conf" in sys.modules:
        raise pytest.UsageError(
            "a test module imports service.gunicorn_conf, which sets PROMETHEUS_MULTIPROC_DIR "
            "for the whole suite: import what it needs from where gunicorn_conf gets it"
        )


def seeded_state_dict(architecture: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded random weights for any torchvision architecture, with non-trivial batch-norm statistics
    (so normalization is not an identity) and no all-zero tensor (some heads start at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.get_model(architecture, weights=None)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                module.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
        for parameter in model.parameters():
            if not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return model.state_dict()


def make_state_dict(seed: int = 1234) -> dict[str, torch.Tensor]:
    """The ResNet18 weights most tests use."""
    return seeded_state_dict("resnet18", seed)


@pytest.fixture(scope="session")
def state_dict() -> dict[str, torch.Tensor]:
    return make_state_dict()


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory, state_dict) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet18-seeded.pt"
    torch.save(state_dict, path)
    return path


@pytest.fixture(scope="session")
def reference_model(state_dict) -> torch.nn.Module:
    """The same weights in a plain torchvision model: the independent side of golden tests."""
    model = torchvision.models.resnet18(weights=None)
    model.load_state_dict(state_dict)
    return model.eval()


@pytest.fixture(scope="session")
def settings(weights_file) -> Settings:
    # Bit-exact preprocessing and float32, so that golden tests can compare with torchvision's own
    # transforms and model; tests/images/test_fast_preprocessing.py covers the default preprocessing, `fast`,
    # and tests/core/test_hardware.py the default dtype, `auto` (bfloat16 on CPUs with bf16 arithmetic).
    return Settings(
        weights=str(weights_file), device="cpu", dtype="float32", max_batch_delay_ms=5, preprocessing="exact"
    )


@pytest.fixture(scope="session")
def app(settings):
    app = create_app(settings)
    plane = app.extensions["layertap.dataplane"]
    assert plane.wait_ready(60), plane.failure
    yield app
    plane.close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def plane(app):
    """The app's data plane: extract, shapes and describe without HTTP."""
    return app.extensions["layertap.dataplane"]


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory) -> Path:
    """A private Hugging Face hub cache holding the pretrained files of every shipped timm, transformers and
    open_clip entry, made by the tests (tests/checkpoints.py): serve them with LAYERTAP_HUB_CACHE."""
    from tests.checkpoints import SOURCED, fill_cache

    cache = tmp_path_factory.mktemp("hf-hub")
    work = tmp_path_factory.mktemp("hf-work")
    for name in SOURCED:
        fill_cache(cache, load_entry(DEFAULT_MODEL_REPOSITORY, name), work)
    return cache


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    """The repository's sample photos (models/photos/), by file name."""
    return {name: (SAMPLE_PHOTOS / name).read_bytes() for name in PHOTOS}


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def gradient_image(width: int = 320, height: int = 240, mode: str = "RGB") -> Image.Image:
    """A smooth, asymmetric test pattern (so flips and rotations change it)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + 2 * y) % 256], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB").convert(mode)
