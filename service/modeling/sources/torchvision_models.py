"""torchvision's classification models, built the way torchvision builds them for their weights.

torchvision's own weights go to the builder itself, which changes the network for some of them
(GoogLeNet's and Inception v3's ``transform_input``, the ViT SWAG weights' ``image_size``, the
auxiliary heads it builds to load and then drops): the result is exactly
``torchvision.models.get_model(architecture, weights=member)``. A file's state dict is loaded
into ``builder(weights=None)``, the architecture's default configuration. The pass is the
model's own forward; its embedding is a module's output (the entry's ``default_layer``).
Without ``[preprocessing]`` in the entry, the weights member's ``transforms()`` decide it.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from service.core.errors import StartupError, WeightsUnavailable
from service.images.recipe import Preprocessing
from service.modeling.entries import ModelEntry
from service.modeling.loading import close_names, load_file, seeded
from service.modeling.network import Network
from service.modeling.weights import Weights


def build(entry: ModelEntry, weights: Weights) -> Network:
    try:
        builder = torchvision.models.get_model_builder(entry.architecture)
    except ValueError:
        raise StartupError(f"model entry {entry.name!r}: {unknown_architecture(entry.architecture)}") from None
    if weights.folder is not None or weights.pretrained is not None:
        raise WeightsUnavailable(
            f"weights {weights.label}: a torchvision entry takes a state-dict file, its weights enum member or random"
        )
    if weights.member is not None:
        model = seeded(weights, lambda: _pretrained(builder, weights))
    else:
        model = seeded(weights, lambda: builder(weights=None))
    if weights.state_dict is not None:
        load_file(model, entry, weights)
    has_class_token = isinstance(getattr(model, "class_token", None), torch.Tensor)  # ViT: [CLS] before the patches
    return Network(
        model=model,
        preprocessing=entry.preprocessing or member_preprocessing(entry),
        prefix_tokens=1 if has_class_token else 0,
        patch_size=getattr(model, "patch_size", None) if has_class_token else None,
    )


def unknown_architecture(name: str) -> str:
    """What to say of an architecture torchvision has no builder for: the close names it does have."""
    return close_names(name, torchvision.models.list_models(module=torchvision.models), "torchvision")


def member_preprocessing(entry: ModelEntry) -> Preprocessing:
    """The entry's weights member's own ``transforms()``: resize, crop, interpolation, mean and std."""
    try:
        transforms = torchvision.models.get_weight(entry.weights).transforms()
    except (ValueError, KeyError) as exc:
        raise StartupError(
            f"model entry {entry.name!r} has no [preprocessing] and names no torchvision weights to take it from "
            f"({exc}); add a [preprocessing] table"
        ) from None
    return Preprocessing(
        resize=_side(transforms.resize_size),
        crop=_side(transforms.crop_size),
        interpolation=transforms.interpolation.value,
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
    )


def _side(size) -> int:
    return int(size[0] if isinstance(size, list | tuple) else size)


def _pretrained(builder, weights: Weights) -> nn.Module:
    """The builder's own network for torchvision's weights, read from the torch cache."""
    try:
        return builder(weights=weights.member, progress=False)
    except Exception as exc:  # noqa: BLE001 - unpickling, shape and file errors all mean these weights are unusable
        raise WeightsUnavailable(
            f"weights {weights.label} do not load from the torch cache ({torch.hub.get_dir()}/checkpoints): "
            f"{str(exc).splitlines()[0]}; `python -m service weights download` fetches them again"
        ) from None
