"""open_clip's models: ``open_clip.create_model`` for the entry's model name and pretrained tag.

``architecture`` is an open_clip model name (``ViT-B-32``) and ``weights`` a pretrained tag
(``laion2b_s34b_b79k``); the tag also decides the preprocessing (mean, std, interpolation, resize
mode), in every weights mode. Both towers are kept, as ``create_model`` returns them: layer names
are ``visual.transformer.resblocks.11``, ``visual.ln_post``; only the image tower runs.

The pass is ``encode_image``, served as ``embedding``. Preprocessing is open_clip's ``preprocess``:
resize (the shorter side, or ``squash``), center crop, normalize.
"""

from __future__ import annotations

import open_clip
import torch
from torch import nn

from service.core.errors import StartupError
from service.images.recipe import Preprocessing
from service.modeling.entries import ModelEntry
from service.modeling.loading import close_names, load_file, seeded
from service.modeling.network import EMBEDDING, Network
from service.modeling.sources.hub import hub_access
from service.modeling.weights import Weights

RESIZE_MODES = {"shortest": "shorter", "squash": "squash"}


def build(entry: ModelEntry, weights: Weights) -> Network:
    if weights.folder is not None:
        with hub_access(weights.hub, f"open_clip model folder {weights.folder}"):
            model = open_clip.create_model(f"local-dir:{weights.folder}", load_weights=True)
    else:
        _check_names(entry)
        if weights.pretrained is not None:
            with hub_access(weights.hub, f"open_clip weights {entry.architecture} {entry.weights}"):
                model = open_clip.create_model(
                    entry.architecture, pretrained=entry.weights, cache_dir=weights.hub.cache_dir
                )
        else:
            tag = _pretrained_config(entry)
            overrides = {k: tag[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag}
            model = seeded(
                weights, lambda: open_clip.create_model(entry.architecture, force_preprocess_cfg=overrides or None)
            )
            if weights.state_dict is not None:
                load_file(model, entry, weights)
    visual = model.visual
    return Network(
        model=model,
        preprocessing=preprocessing(visual.preprocess_cfg),
        run=embed,
        output=EMBEDDING,
        prefix_tokens=1 if isinstance(getattr(visual, "class_embedding", None), torch.Tensor) else 0,
        patch_size=_side(getattr(visual, "patch_size", None)),
    )


def embed(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """open_clip's image embedding, unnormalized (``encode_image(x, normalize=False)``)."""
    return model.encode_image(inputs)


def preprocessing(config: dict) -> Preprocessing:
    """open_clip's evaluation ``preprocess`` for this configuration, as a recipe."""
    size = _side(config["size"])
    mode = config.get("resize_mode", "shortest")
    if mode not in RESIZE_MODES:
        raise StartupError(f"open_clip's resize_mode {mode!r} is not supported; give the entry a [preprocessing]")
    return Preprocessing(
        resize=size,
        crop=size,
        interpolation=config.get("interpolation", "bicubic"),
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        resize_mode=RESIZE_MODES[mode],
    )


def _check_names(entry: ModelEntry) -> None:
    known = open_clip.list_models()
    if entry.architecture not in known:
        raise StartupError(f"model entry {entry.name!r}: {close_names(entry.architecture, known, 'open_clip')}")
    tags = open_clip.list_pretrained_tags_by_model(entry.architecture)
    if entry.weights and entry.weights not in tags:
        raise StartupError(
            f"model entry {entry.name!r}: open_clip has no pretrained tag {entry.weights!r} for {entry.architecture}; "
            f"its tags are {', '.join(tags) or 'none'}"
        )


def _pretrained_config(entry: ModelEntry) -> dict:
    return open_clip.get_pretrained_cfg(entry.architecture, entry.weights) if entry.weights else {}


def _side(size) -> int | None:
    if size is None:
        return None
    return int(size[0] if isinstance(size, tuple | list) else size)
