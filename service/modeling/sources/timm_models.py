"""timm's models: ``timm.create_model`` for the entry's model name and pretrained tag.

``architecture`` is a timm model name (``vit_small_patch14_reg4_dinov2``) and ``weights`` a
pretrained tag (``lvd142m``); together they name the pretrained configuration that decides the
network (its classes, its input size) in every weights mode, so a random or file-loaded model
has the same layers as the pretrained one; an entry's ``input_size`` then changes the input size
of a model that can (``set_input_size``). Layer names are module names under the model
``create_model`` returns (``blocks.11``, ``norm``).

The pass is timm's own definition of the embedding, ``forward_head(forward_features(x),
pre_logits=True)``, served as ``embedding``. Preprocessing is ``resolve_data_config``'s: the
input size, ``crop_pct`` (the resize is ``floor(size / crop_pct)``), interpolation, mean and std.
Token layers have ``num_prefix_tokens`` (class and register tokens) before their patches.
"""

from __future__ import annotations

import math
from pathlib import Path
from urllib.parse import urlparse

import timm
import timm.data
import torch
from torch import nn

from service.core.errors import StartupError, WeightsUnavailable
from service.images.recipe import Preprocessing
from service.modeling.entries import ModelEntry
from service.modeling.loading import close_names, load_file, seeded
from service.modeling.network import EMBEDDING, Network
from service.modeling.sources.hub import FILL, hub_access
from service.modeling.weights import Weights

CROP_MODES = {"center": "shorter", "squash": "squash"}


def build(entry: ModelEntry, weights: Weights) -> Network:
    name = model_name(entry)
    if weights.folder is not None:
        with hub_access(weights.hub, f"timm model folder {weights.folder}"):
            model = timm.create_model(f"local-dir:{weights.folder}", pretrained=True)
    elif weights.pretrained is not None:
        _check_torch_cache(name, weights)
        with hub_access(weights.hub, f"timm weights {name}"):
            model = timm.create_model(name, pretrained=True, cache_dir=weights.hub.cache_dir)
    else:
        model = seeded(weights, lambda: timm.create_model(name, pretrained=False))
        if weights.state_dict is not None:
            load_file(model, entry, weights)
    if entry.input_size is not None:
        resize_input(model, entry)
    return Network(
        model=model,
        preprocessing=preprocessing(model, entry.input_size),
        run=embed,
        output=EMBEDDING,
        prefix_tokens=int(getattr(model, "num_prefix_tokens", 0)),
        patch_size=_patch_size(model),
    )


def embed(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """timm's embedding: the head's input, pooled and normalized as the head would (``pre_logits=True``)."""
    return model.forward_head(model.forward_features(inputs), pre_logits=True)


def model_name(entry: ModelEntry) -> str:
    """``architecture.tag``, checked against timm's registry: StartupError naming close matches otherwise."""
    if entry.architecture not in timm.list_models():
        known = timm.list_models()
        raise StartupError(f"model entry {entry.name!r}: {close_names(entry.architecture, known, 'timm')}")
    if not entry.weights:
        return entry.architecture
    name = f"{entry.architecture}.{entry.weights}"
    if name not in timm.list_pretrained(f"{entry.architecture}.*"):
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{entry.architecture}.*")]
        raise StartupError(
            f"model entry {entry.name!r}: timm has no pretrained tag {entry.weights!r} for {entry.architecture}; "
            f"its tags are {', '.join(tags) or 'none'}"
        )
    return name


def resize_input(model: nn.Module, entry: ModelEntry) -> None:
    """Run ``model`` at the entry's ``input_size``: timm's ``set_input_size`` resamples the position
    embedding of the loaded weights, as timm does when it loads a checkpoint into a model made for
    another size. A StartupError when the model cannot change its size or the size is not whole patches."""
    size, patch = entry.input_size, _patch_size(model)
    if not hasattr(model, "set_input_size") or patch is None:
        raise StartupError(
            f"model entry {entry.name!r}: timm's {type(model).__name__} has no set_input_size; remove input_size"
        )
    if size % patch:
        raise StartupError(
            f"model entry {entry.name!r}: input_size {size} is not a whole number of {patch}-pixel patches; "
            f"try {size // patch * patch or patch}"
        )
    model.set_input_size(img_size=(size, size))


def preprocessing(model: nn.Module, input_size: int | None = None) -> Preprocessing:
    """timm's evaluation transform for the model's pretrained configuration, as a recipe; ``input_size``
    replaces the configuration's (its ``crop_pct`` and interpolation stay)."""
    overrides = {"input_size": (3, input_size, input_size)} if input_size else {}
    config = timm.data.resolve_data_config(overrides, model=model)
    _, height, width = config["input_size"]
    if height != width:
        raise StartupError(f"timm's input size {height}×{width} is not square; give the entry a [preprocessing]")
    crop_mode = config.get("crop_mode", "center")
    if crop_mode not in CROP_MODES:
        raise StartupError(f"timm's crop_mode {crop_mode!r} is not supported; give the entry a [preprocessing]")
    return Preprocessing(
        resize=math.floor(height / config["crop_pct"]),
        crop=height,
        interpolation=config["interpolation"],
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        resize_mode=CROP_MODES[crop_mode],
    )


def _patch_size(model: nn.Module) -> int | None:
    patch_embed = getattr(model, "patch_embed", None)
    size = getattr(patch_embed, "patch_size", None)
    return int(size[0] if isinstance(size, tuple | list) else size) if size is not None else None


def _check_torch_cache(name: str, weights: Weights) -> None:
    """Weights that timm fetches by URL (not from the hub) land in the torch cache: check it when offline."""
    config = timm.models.get_pretrained_cfg(name)
    url = getattr(config, "url", None)
    if weights.hub.allow_download or getattr(config, "hf_hub_id", None) or not url:
        return
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if not cached.is_file():
        raise WeightsUnavailable(
            f"timm weights {name} are not in the torch cache ({cached}) and LAYERTAP_ALLOW_DOWNLOAD is off; run {FILL}"
        )
