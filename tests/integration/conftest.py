"""Real servers shared by the integration tests: one per configuration, started once per session.

Starting gunicorn and loading a model costs seconds, so a configuration that several tests can
use is started once and shared (tests that need a server of their own say why next to it):

- ``server``: the default service with small limits (body, pixels, images) that tests can reach;
- ``imagenet_server``: ``LAYERTAP_WEIGHTS=imagenet`` from a pre-seeded torch cache (labels on);
- ``sourced_server``: open_clip's CLIP and transformers' DINOv2, pretrained from a private Hugging
  Face cache (the libraries beside torchvision, end to end);
- ``two_workers``: two workers, as the CPU default runs (metrics across workers, a killed worker, idle
  cores lent);
- ``cuda_server``: the CUDA defaults (bfloat16, JPEGs decoded on the GPU), only where CUDA is.

The launcher is stress/server.py, shared with ``make bench`` and ``make stress``.
"""

from __future__ import annotations

import pytest
import torch

from stress.server import start_server
from tests.conftest import seeded_state_dict

SMALL_LIMITS = {
    # float32: tests compare answers across batch compositions at 1e-4; bfloat16 (auto on bf16 CPUs) would not
    "LAYERTAP_DTYPE": "float32",
    "LAYERTAP_MAX_BODY_BYTES": "1000000",
    "LAYERTAP_MAX_PIXELS": "4000000",
    "LAYERTAP_MAX_IMAGES_PER_REQUEST": "8",
}


def _serve(log_dir, env: dict[str, str]):
    server = start_server(log_dir, env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory, weights_file):
    yield from _serve(tmp_path_factory.mktemp("server"), {"LAYERTAP_WEIGHTS": str(weights_file), **SMALL_LIMITS})


@pytest.fixture(scope="session")
def imagenet_server(tmp_path_factory, state_dict):
    """ImageNet weights from a pre-seeded torch cache: the real loading path, and class labels to show.
    A second model (MobileNet v3, seeded) for what switching models changes."""
    home = tmp_path_factory.mktemp("torch-home")
    cache = home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(state_dict, cache / "resnet18-f37072fd.pth")  # torchvision's own file names
    torch.save(seeded_state_dict("mobilenet_v3_large"), cache / "mobilenet_v3_large-5c1a4163.pth")
    env = {
        "LAYERTAP_WEIGHTS": "imagenet",
        "LAYERTAP_ALLOW_DOWNLOAD": "false",
        "TORCH_HOME": str(home),
        "LAYERTAP_MODELS": "resnet18,mobilenet_v3_large",
    }
    yield from _serve(tmp_path_factory.mktemp("imagenet-server"), env)


@pytest.fixture(scope="session")
def sourced_server(tmp_path_factory, hub_cache):
    """An open_clip and a transformers model, pretrained from a private Hugging Face cache the tests filled
    (tests/checkpoints.py), downloads off: the real loading path of the libraries beside torchvision."""
    env = {
        "LAYERTAP_MODELS": "clip_vit_b32,dinov2_small",
        "LAYERTAP_WEIGHTS": "pretrained",
        "LAYERTAP_ALLOW_DOWNLOAD": "false",
        "LAYERTAP_HUB_CACHE": str(hub_cache),
        "LAYERTAP_DTYPE": SMALL_LIMITS["LAYERTAP_DTYPE"],  # its tests compare across batches and with Ray at 1e-4
    }
    yield from _serve(tmp_path_factory.mktemp("sourced-server"), env)


@pytest.fixture(scope="session")
def two_workers(tmp_path_factory, weights_file):
    """Two workers sized as the CPU default sizes them (half the cores each, lending them when idle)."""
    env = {"LAYERTAP_WEIGHTS": str(weights_file), "LAYERTAP_WORKERS": "2"}
    yield from _serve(tmp_path_factory.mktemp("two-workers"), env)


@pytest.fixture(scope="session")
def cuda_server(tmp_path_factory, weights_file):
    """The service as a GPU machine runs it by default: LAYERTAP_DEVICE=cuda, and nothing else set, so the dtype
    (bfloat16) and the JPEG decoder (nvjpeg, LAYERTAP_JPEG_DECODER=auto) are the defaults' choices."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    env = {"LAYERTAP_WEIGHTS": str(weights_file), "LAYERTAP_DEVICE": "cuda", "LAYERTAP_WORKERS": "1"}
    yield from _serve(tmp_path_factory.mktemp("cuda-server"), env)
