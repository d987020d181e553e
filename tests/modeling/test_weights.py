"""Where weights come from: a local file, random, imagenet through the torch cache; and clear failures."""

from __future__ import annotations

import urllib.error

import pytest
import safetensors.torch
import torch
import torchvision

from service.core.errors import StartupError, WeightsUnavailable
from service.core.settings import DEFAULT_MODEL_REPOSITORY
from service.modeling.build import build_model
from service.modeling.entries import load_entry
from service.modeling.weights import entry_weights, imagenet_cache_path, resolve_weights


@pytest.fixture(scope="module")
def entry():
    return load_entry(DEFAULT_MODEL_REPOSITORY, "resnet18")


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty, private torch cache: nothing here may reach for the real one or the network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # TORCH_HOME decides unless someone called torch.hub.set_dir(), which no code of ours does.
    assert torch.hub.get_dir() == str(tmp_path / "torch" / "hub"), "torch.hub.set_dir() was called in this process"

    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch"


def same_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(model.state_dict()[k], v) for k, v in state_dict.items())


def test_local_file(entry, weights_file, state_dict):
    weights = resolve_weights(str(weights_file), entry)
    assert weights.label.startswith("file:resnet18-seeded.pt@sha256:")
    assert same_weights(build_model(entry, weights), state_dict)


def test_local_file_wrapped_in_a_checkpoint_dict(entry, tmp_path, state_dict):
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": state_dict, "epoch": 3}, path)
    assert same_weights(build_model(entry, resolve_weights(str(path), entry)), state_dict)


def test_random_is_seeded_and_reproducible(entry):
    first = build_model(entry, resolve_weights("random", entry, seed=5))
    again = build_model(entry, resolve_weights("random", entry, seed=5))
    other = build_model(entry, resolve_weights("random", entry, seed=6))
    assert resolve_weights("random", entry, seed=5).label == "random:seed=5"
    assert torch.equal(first.conv1.weight, again.conv1.weight)
    assert not torch.equal(first.conv1.weight, other.conv1.weight)


def test_imagenet_from_a_pre_seeded_torch_cache(entry, torch_home, state_dict):
    cached = imagenet_cache_path(entry)
    assert cached.parent == torch_home / "hub" / "checkpoints"
    assert cached.name == "resnet18-f37072fd.pth"  # torchvision's own file name for IMAGENET1K_V1
    cached.parent.mkdir(parents=True)
    torch.save(state_dict, cached)
    weights = resolve_weights("imagenet", entry, allow_download=False)
    assert weights.label == "imagenet:ResNet18_Weights.IMAGENET1K_V1"
    assert weights.categories is not None and len(weights.categories) == 1000
    assert same_weights(build_model(entry, weights), state_dict)


def test_imagenet_missing_without_download_names_the_alternatives(entry, torch_home):
    with pytest.raises(WeightsUnavailable) as caught:
        resolve_weights("imagenet", entry, allow_download=False)
    message = str(caught.value)
    assert "not in the torch cache" in message and "LAYERTAP_ALLOW_DOWNLOAD" in message
    assert "'random'" in message and "state-dict file" in message


def test_imagenet_download_failure_names_the_alternatives(entry, torch_home):
    with pytest.raises(WeightsUnavailable, match=r"cannot load ImageNet weights.*network disabled.*'random'"):
        resolve_weights("imagenet", entry, allow_download=True)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (None, "does not exist"),
        (b"not a pickle at all", "not a loadable state dict"),
        ([1, 2, 3], "does not hold a state dict"),
    ],
)
def test_bad_files_are_clear_errors(entry, tmp_path, content, pattern):
    path = tmp_path / "weights.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(WeightsUnavailable, match=pattern):
        resolve_weights(str(path), entry)


def test_weights_of_another_architecture_are_refused(entry, tmp_path):
    path = tmp_path / "mobilenet.pt"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), path)
    first_missing = r"122 missing keys \(conv1.weight; bn1.weight; bn1.bias and 119 more\)"
    with pytest.raises(WeightsUnavailable, match=f"do not fit resnet18: {first_missing}"):
        build_model(entry, resolve_weights(str(path), entry))


def test_a_checkpoint_that_does_not_fit_names_its_first_mismatched_keys(entry, tmp_path, state_dict):
    path = tmp_path / "edited.pt"
    edited = {k: v for k, v in state_dict.items() if k != "fc.bias"}
    edited["fc.weight"] = torch.zeros(10, 512)
    edited["head.weight"] = torch.zeros(1)
    torch.save(edited, path)
    with pytest.raises(WeightsUnavailable) as caught:
        build_model(entry, resolve_weights(str(path), entry))
    message = str(caught.value)
    assert "1 missing keys (fc.bias)" in message
    assert "1 unexpected keys (head.weight)" in message
    assert "1 misshapen keys (fc.weight (10, 512) where the model has (1000, 512))" in message


def test_safetensors_files_load_like_pickled_ones(entry, tmp_path, state_dict):
    path = tmp_path / "resnet18.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in state_dict.items()}, path)
    weights = resolve_weights(str(path), entry)
    assert weights.label.startswith("file:resnet18.safetensors@sha256:")
    assert same_weights(build_model(entry, weights), state_dict)
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(WeightsUnavailable, match="not a loadable state dict"):
        resolve_weights(str(path), entry)


def test_an_entrys_own_checkpoint_wins_over_layertap_weights(tmp_path, state_dict):
    """A path relative to the entry's folder; imagenet is then never looked for (no cache here)."""
    (tmp_path / "weights").mkdir()
    torch.save(state_dict, tmp_path / "weights" / "mine.pt")
    source = (DEFAULT_MODEL_REPOSITORY / "resnet18.toml").read_text()
    (tmp_path / "mine.toml").write_text(f'checkpoint = "weights/mine.pt"\n{source}')
    entry = load_entry(tmp_path, "mine")
    assert entry.checkpoint == tmp_path / "weights" / "mine.pt"
    weights = entry_weights("imagenet", entry, allow_download=False)
    assert weights.label.startswith("file:mine.pt@sha256:")
    assert same_weights(build_model(entry, weights), state_dict)
    assert entry_weights("random", load_entry(DEFAULT_MODEL_REPOSITORY, "resnet18")).label == "random:seed=0"


def test_cuda_on_a_machine_without_it_is_a_clear_start_up_error():
    from service.core.errors import StartupError
    from service.modeling.build import resolve_device

    assert resolve_device("auto", cuda_available=False) == torch.device("cpu")
    assert resolve_device("cpu", cuda_available=True) == torch.device("cpu")
    with pytest.raises(StartupError, match="CUDA is not available here; use auto or cpu"):
        resolve_device("cuda", cuda_available=False)
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_an_unknown_architecture_names_close_matches(tmp_path):
    source = (DEFAULT_MODEL_REPOSITORY / "resnet18.toml").read_text().replace('"resnet18"', '"resnet19"', 1)
    (tmp_path / "typo.toml").write_text(source)
    entry = load_entry(tmp_path, "typo")
    with pytest.raises(StartupError, match=r"torchvision has no model .resnet19.; did you mean resnet18, "):
        build_model(entry, resolve_weights("random", entry))
