"""The model repository: entries parse, and each one's preprocessing equals its weights' own transforms()."""

from __future__ import annotations

import pytest
import torchvision

from service.core.settings import DEFAULT_MODEL_REPOSITORY
from service.modeling.entries import load_entry

ENTRIES = sorted(p.stem for p in DEFAULT_MODEL_REPOSITORY.glob("*.toml"))


def test_default_entry_is_resnet18():
    entry = load_entry(DEFAULT_MODEL_REPOSITORY, "resnet18")
    assert entry.architecture == "resnet18"
    assert str(torchvision.models.get_weight(entry.weights)) == "ResNet18_Weights.IMAGENET1K_V1"


@pytest.mark.parametrize("name", ENTRIES)
def test_entry_matches_its_weights_transforms(name):
    entry = load_entry(DEFAULT_MODEL_REPOSITORY, name)
    transforms = torchvision.models.get_weight(entry.weights).transforms()
    assert [entry.preprocessing.resize] == list(transforms.resize_size)
    assert [entry.preprocessing.crop] == list(transforms.crop_size)
    assert list(entry.preprocessing.mean) == list(transforms.mean)
    assert list(entry.preprocessing.std) == list(transforms.std)
    assert entry.preprocessing.interpolation == transforms.interpolation.value
    torchvision.models.get_model_builder(entry.architecture)


def test_unknown_entry_lists_the_available_ones(tmp_path):
    with pytest.raises(ValueError, match=r"available: .*resnet18"):
        load_entry(DEFAULT_MODEL_REPOSITORY, "vgg99")


def test_incomplete_entry_names_the_missing_field(tmp_path):
    (tmp_path / "broken.toml").write_text('architecture = "resnet18"\n')
    with pytest.raises(ValueError, match="lacks the field 'preprocessing'"):
        load_entry(tmp_path, "broken")
