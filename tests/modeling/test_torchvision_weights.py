"""``LAYERTAP_WEIGHTS=imagenet`` serves torchvision's own network for every weights member, offline.

torchvision's builders change the network for some weights: GoogLeNet and Inception v3 switch on
``transform_input`` and load auxiliary heads they then drop; the ViT SWAG weights set
``image_size``. So the served network must be ``torchvision.models.get_model(arch, weights=member)``,
not ``builder(weights=None)`` with the checkpoint loaded into it.

No test may reach the network, and the real checkpoints are 37 GB in all. So a torch cache private
to each test holds, under torchvision's own file name, a checkpoint of the architecture the builder
itself loads that member into. The test records it from the builder, by having ``load_state_dict`` note
the module's own keys and shapes instead of loading. Every member is built on the meta device, or on
the CPU from a checkpoint of broadcast zeros where the family cannot be built there (RegNet). Its
structure must match torchvision's. A few members that change the network are also checked by value,
with random tensors, on a real input.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import get_model_weights, list_models

from service.core.settings import DEFAULT_MODEL_REPOSITORY, Settings
from service.images.recipe import Preprocessing
from service.modeling.build import build_model
from service.modeling.entries import ModelEntry, load_entry
from service.modeling.weights import entry_weights, imagenet_cache_path, resolve_weights
from service.runners.runner import ModelRunner

# Loading the CPU checkpoint into a meta-device network copies nothing, as intended here; torch says so per tensor.
pytestmark = pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter:UserWarning")

MEMBERS = [
    pytest.param(arch, member, id=str(member))
    for arch in list_models(module=torchvision.models)
    for member in get_model_weights(arch)
]
# Members whose builder changes the network, and a plain one, checked by value as well.
BY_VALUE = ("GoogLeNet_Weights.IMAGENET1K_V1", "Inception_V3_Weights.IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1")
ANY_PREPROCESSING = Preprocessing(resize=256, crop=224, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty, private torch cache; a download attempt fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert torch.hub.get_dir() == str(tmp_path / "torch" / "hub"), "torch.hub.set_dir() was called in this process"

    def no_network(url, *args, **kwargs):
        raise AssertionError(f"a test tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch"


def entry_for(arch: str, member) -> ModelEntry:
    return ModelEntry(name=arch, architecture=arch, weights=str(member), preprocessing=ANY_PREPROCESSING)


def cache_file(member) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(member.url).path).name


@contextmanager
def recorded_loads(monkeypatch):
    """While active, ``load_state_dict`` records the state dict the module expects (with its per-module version
    metadata, which MNASNet reads), instead of loading one."""
    recorded: list[dict[str, torch.Tensor]] = []
    with monkeypatch.context() as patch:
        patch.setattr(nn.Module, "load_state_dict", lambda module, *_, **__: recorded.append(module.state_dict()))
        yield recorded


def make_checkpoint(arch: str, member, monkeypatch, device: str, values: bool) -> nn.Module:
    """Write, under torchvision's file name, a checkpoint of the network the builder loads ``member`` into:
    random values (``values``), or broadcast zeros of the right shapes and dtypes (a few bytes a tensor).
    Returns that network as the builder left it: its structure is torchvision's, its values are not loaded."""
    path = cache_file(member)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({}, path)  # the builder's own loading must find its file, and not download it
    with recorded_loads(monkeypatch) as recorded, torch.device(device):
        built = torchvision.models.get_model(arch, weights=member).eval()
    (checkpoint,) = recorded
    if not values:
        for name, tensor in checkpoint.items():
            checkpoint[name] = torch.zeros((), dtype=tensor.dtype).expand(tensor.shape)
    torch.save(checkpoint, path)
    return built


def structure(model: nn.Module) -> dict:
    """What the builder's arguments change: the module tree, every tensor's name, shape and dtype, the flags."""
    return {
        "modules": [(name, type(module).__name__) for name, module in model.named_modules()],
        "tensors": [(name, tuple(t.shape), t.dtype) for name, t in model.state_dict().items()],
        "flags": {
            name: getattr(model, name, None) for name in ("transform_input", "aux_logits", "image_size", "patch_size")
        },
    }


def buildable_on_meta(arch: str) -> bool:
    try:
        with torch.device("meta"):
            torchvision.models.get_model(arch)
    except (NotImplementedError, RuntimeError):
        return False  # RegNet computes its widths with tensors in its constructor
    return True


@pytest.mark.parametrize(("arch", "member"), MEMBERS)
def test_every_weights_member_builds_torchvisions_own_network(arch, member, torch_home, monkeypatch):
    device = "meta" if buildable_on_meta(arch) else "cpu"
    # Two builds, not three: RegNet_Y_128GF builds on the CPU only, 13 s each here.
    expected = make_checkpoint(arch, member, monkeypatch, device, values=False)
    entry = entry_for(arch, member)
    assert imagenet_cache_path(entry) == cache_file(member)
    weights = resolve_weights("imagenet", entry, allow_download=False)
    assert weights.label == f"imagenet:{member}"
    with torch.device(device):
        served = build_model(entry, weights)
    assert structure(served) == structure(expected)
    assert not served.training


@pytest.mark.parametrize("name", BY_VALUE)
def test_networks_the_builder_changes_compute_what_torchvision_computes(name, torch_home, monkeypatch):
    member = torchvision.models.get_weight(name)
    arch = next(a for a in list_models(module=torchvision.models) if member in get_model_weights(a))
    torch.manual_seed(0)
    make_checkpoint(arch, member, monkeypatch, "cpu", values=True)
    served = build_model(entry_for(arch, member), resolve_weights("imagenet", entry_for(arch, member)))
    expected = torchvision.models.get_model(arch, weights=member).eval()
    if arch in ("googlenet", "inception_v3"):
        # What builder(weights=None) got wrong: the ImageNet weights expect their inputs re-normalized.
        assert served.transform_input and not torchvision.models.get_model(arch).transform_input
    if arch == "googlenet":
        assert served.aux1 is None and served.aux2 is None  # loaded with the weights, then dropped
    size = member.transforms().crop_size[0]
    image = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(served(image), expected(image), rtol=0, atol=0)


def test_the_vit_swag_weights_serve_at_their_own_size(torch_home, monkeypatch):
    """``image_size=384``: builder(weights=None) could not even load these weights (its position embedding is
    for 224); the builder's network for them serves them."""
    member = torchvision.models.ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1
    make_checkpoint("vit_b_16", member, monkeypatch, "meta", values=False)
    with torch.device("meta"):
        served = build_model(entry_for("vit_b_16", member), resolve_weights("imagenet", entry_for("vit_b_16", member)))
    assert served.image_size == 384 and torchvision.models.vit_b_16().image_size == 224


def test_a_runner_serves_the_vit_swag_weights_at_their_size(torch_home, monkeypatch):
    """The runner's layer list (traced on the meta device) follows the network the weights built, not the
    builder's default: every encoder layer has 577 tokens at 384×384, and start-up does not fail."""
    member = torchvision.models.ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1
    make_checkpoint("vit_b_16", member, monkeypatch, "meta", values=False)
    shipped = load_entry(DEFAULT_MODEL_REPOSITORY, "vit_b_16")
    swag = replace(shipped, name="vit_b_16_swag", weights=str(member), preprocessing=replace(
        shipped.preprocessing, resize=384, crop=384, interpolation="bicubic"
    ))  # fmt: skip
    settings = Settings(weights="imagenet", allow_download=False, device="cpu")
    runner = ModelRunner(settings, swag, entry_weights(settings.weights, swag, allow_download=False))
    shapes = {call.name: call.shape for call in runner.layers}
    assert shapes["encoder"] == (1, 577, 768) and shapes["heads"] == (1, 1000)
    assert {call.name: call.shape for call in runner.shapes(2, 384, 384)}["encoder"] == (2, 577, 768)
