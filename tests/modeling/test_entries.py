"""The model repository: entries parse, and each one's preprocessing equals its weights' own transforms()."""

from __future__ import annotations

import pytest
import torchvision

from service.core.settings import DEFAULT_MODEL_REPOSITORY
from service.modeling.entries import load_entry

ENTRIES = sorted(p.stem for p in DEFAULT_MODEL_REPOSITORY.glob("*.toml"))
TORCHVISION = [name for name in ENTRIES if load_entry(DEFAULT_MODEL_REPOSITORY, name).source == "torchvision"]


def test_default_entry_is_resnet18():
    entry = load_entry(DEFAULT_MODEL_REPOSITORY, "resnet18")
    assert entry.architecture == "resnet18"
    assert str(torchvision.models.get_weight(entry.weights)) == "ResNet18_Weights.IMAGENET1K_V1"


@pytest.mark.parametrize("name", TORCHVISION)
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
    (tmp_path / "broken.toml").write_text('weights = "ResNet18_Weights.DEFAULT"\n')
    with pytest.raises(ValueError, match="lacks the field 'architecture'"):
        load_entry(tmp_path, "broken")


@pytest.mark.parametrize(
    "text, message",
    [
        ('source = "keras"\narchitecture = "x"\n', "source must be one of torchvision, timm, transformers, open_clip"),
        (
            'architecture = "x"\n[preprocessing]\nresize = 224\ncrop = 256\nmean = [0, 0, 0]\nstd = [1, 1, 1]\n',
            "crop \\(256\\) must be positive and cannot exceed resize \\(224\\)",
        ),
        (
            'architecture = "x"\n[preprocessing]\nresize = 224\ncrop = 224\nmean = [0, 0]\nstd = [1, 1, 1]\n',
            "mean and std need three values",
        ),
        (
            'architecture = "x"\n[preprocessing]\nresize = 224\ncrop = 224\nmean = [0, 0, 0]\nstd = [1, 1, 1]\n'
            'resize_mode = "pad"\n',
            "resize_mode must be one of shorter, squash",
        ),
        ('architecture = "resnet18"\ninput_size = 224\n', "only a timm entry can take one"),
        ('source = "timm"\narchitecture = "vit_small_patch14_dinov2"\ninput_size = 0\n', "positive number of pixels"),
    ],
)
def test_a_malformed_entry_says_what_is_wrong(tmp_path, text, message):
    (tmp_path / "broken.toml").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_entry(tmp_path, "broken")


def test_an_entry_without_preprocessing_takes_its_library_s_and_a_transformers_entry_its_own_weights(tmp_path):
    (tmp_path / "plain.toml").write_text('architecture = "resnet18"\nweights = "ResNet18_Weights.DEFAULT"\n')
    assert load_entry(tmp_path, "plain").preprocessing is None  # decided when the model is built
    (tmp_path / "hf.toml").write_text('source = "transformers"\narchitecture = "facebook/dinov2-small"\n')
    assert load_entry(tmp_path, "hf").weights == "facebook/dinov2-small"
